"""One distribution connection as a sans-IO state machine: handshake, framing, ticks, headers.

Bytes go in with ``receive_data()``, events come out of ``next_event()``, and bytes to write come
from ``data_to_send()`` (handshake steps) or ``send()``/``tick()`` (once connected). The caller
owns the socket, the clock and the decisions the handshake leaves to the node (which status to
answer a name with, what to say when asked whether an old connection is ``alive``).

Handshake (version 6, OTP 23+), from either side, with the statuses ``ok``, ``ok_simultaneous``,
``nok``, ``not_allowed``, ``alive`` and ``named:``: an acceptor names a peer that asks with
``NAME_ME`` (``erl -name undefined@host``, ``erl_call -R``); beambridge itself never asks. After
it, 4-byte framed packets: ticks (empty), and messages with a distribution header (atom cache
references, fragments) or in the pass-through form peers without the header use. Bytes after a
message's terms are ignored, as BEAM ignores them.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import itertools
import logging
import secrets
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

from .._errors import DecodeError, EncodeError
from ..term import Atom, Limits, Mapping, Pid, Reference, binary_to_term, encode_body, term_to_binary
from ..term._api import _decode_body, _decode_dist, _decode_dist_batch, _encode_dist
from ._control import (
    NO_PAYLOAD,
    PAYLOAD_TAGS,
    ControlMessage,
    decode_control,
    has_payload,
    spawn_request_unchecked,
)
from ._errors import BadCookie, HandshakeFailed, LocalProtocolError, RemoteProtocolError
from ._flags import DEFAULT_FLAGS, Flag, missing_mandatory

__all__ = [
    "DIST_LIMITS",
    "NEED_DATA",
    "Connected",
    "Connection",
    "ConnectionClosed",
    "NameReceived",
    "Role",
    "State",
    "StatusReceived",
    "Tick",
    "digest",
    "dynamic_name",
]

log = logging.getLogger("beambridge.protocol")

#: Atoms in control tuples stay atoms (no true/false/undefined mapping).
_CONTROL_MAPPING = Mapping(bool_atoms=False, none_atom=None)
_TICK = b"\x00\x00\x00\x00"
_unpack_u32 = struct.Struct(">I").unpack_from
_ATOM_CACHE_SIZE = 2048
_REFS_MEMO_SIZE = 1024
#: What one distribution message may make the decoder build (``Connection``'s default): 10M
#: terms and about 512 MiB of Python objects. A 100 MB binary or a list of a million integers
#: passes; a 15 KB message that inflates to a list of 16M ``[]`` (a gigabyte of lists, seconds
#: of CPU) is refused as soon as its header is read.
DIST_LIMITS = Limits(max_terms=10_000_000, max_memory=512 << 20)
#: The longest handshake message: a challenge with a 255-character node name in UTF-8 is about
#: 1,040 bytes. Anything longer comes from a peer that is not a node (refused before buffering).
MAX_HANDSHAKE_MESSAGE = 2048
_MAX_NAME_CHARS = 255


class Role(enum.Enum):
    INITIATOR = "initiator"
    ACCEPTOR = "acceptor"


class State(enum.Enum):
    IDLE = "idle"                            # initiator before start()
    AWAIT_NAME = "await_name"                # acceptor
    AWAIT_STATUS_DECISION = "await_status_decision"  # acceptor: node must call accept_name()
    AWAIT_ALIVE_REPLY = "await_alive_reply"  # acceptor sent 'alive'
    AWAIT_COMPLEMENT = "await_complement"    # acceptor, peer used the old 'n' name message
    AWAIT_REPLY = "await_reply"              # acceptor sent its challenge
    AWAIT_STATUS = "await_status"            # initiator sent its name
    AWAIT_ALIVE_DECISION = "await_alive_decision"  # initiator: node must call answer_alive()
    AWAIT_CHALLENGE = "await_challenge"      # initiator
    AWAIT_ACK = "await_ack"                  # initiator sent its challenge reply
    CONNECTED = "connected"
    CLOSED = "closed"
    ERROR = "error"


_CONNECTED = State.CONNECTED
#: how the codec's ``encode_dist`` refuses a packet whose length does not fit its 4 bytes
_TOO_BIG = "a distribution packet holds at most"


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: ``next_event()`` returns this when it needs more bytes.
NEED_DATA: Any = _NeedData()


@dataclass(frozen=True, slots=True)
class NameReceived:
    """Acceptor: a peer named itself; answer with ``accept_name(status)``.

    ``dynamic``: the peer set ``NAME_ME`` and ``name`` is only its host; answer ``named`` (or
    refuse it).
    """

    name: str
    flags: int
    creation: int
    dynamic: bool = False


@dataclass(frozen=True, slots=True)
class StatusReceived:
    """Initiator: the peer's status. For ``alive``, answer with ``answer_alive()``."""

    status: str


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake succeeded; ``flags`` are the peer's."""

    name: str
    flags: int
    creation: int


@dataclass(frozen=True, slots=True)
class Tick:
    """An empty keep-alive packet."""


_TICK_EVENT = Tick()


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection."""


def digest(challenge: int, cookie: bytes) -> bytes:
    """The handshake answer: MD5 of the cookie followed by the challenge in decimal."""
    return hashlib.md5(cookie + str(challenge).encode("ascii")).digest()


def _node_name(raw: bytes) -> str:
    """A peer's node name from the handshake: UTF-8, at most an atom's 255 characters."""
    text = raw.decode("utf-8")
    if len(text) > _MAX_NAME_CHARS:
        raise RemoteProtocolError(f"node name of {len(text)} characters (an atom has at most 255)")
    return text


@dataclass(slots=True)
class _Partial:
    refs: list[Atom]
    next_id: int
    chunks: list[bytes]
    size: int


_STATUSES_ACCEPTOR = ("ok", "ok_simultaneous", "nok", "not_allowed", "alive", "named")
_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def dynamic_name(host: str) -> tuple[str, int]:
    """A fresh name and creation for a peer that asked for one, made as ``net_kernel`` makes
    them: a random number below 2**64 in base 36 at the peer's own host, and a random creation
    (never 0-3, which mean "no creation" in older pids)."""
    number = secrets.randbelow(1 << 64) + 1
    digits = ""
    while number:
        number, digit = divmod(number, 36)
        digits = _BASE36[digit] + digits
    creation = secrets.randbits(32)
    if creation < 4:
        creation += 4
    return f"{digits}@{host}", creation


class Connection:
    """The protocol state of one connection; see the module docstring.

    ``limits`` bound what decoding one message may build (``DIST_LIMITS`` by default: bytes
    do not bound the work, a compressed term or a list of ``[]`` can ask for a gigabyte); a
    message past them is a ``RemoteProtocolError``.
    ``max_frame_size`` bounds one packet and ``max_message_size`` a reassembled fragmented
    message (both refused before the bytes are buffered). Unfinished fragmented messages are
    bounded together, since a peer can start many and finish none: ``max_fragmented_bytes`` in
    total and ``max_fragmented_messages`` at once; past either, ``RemoteProtocolError`` (and their
    memory is released, as it is whenever the connection fails). ``fragment_size`` is the largest
    body sent in one packet to a peer that accepts fragments.
    """

    def __init__(self, role: Role, *, this_node: str, cookie: str | bytes, creation: int,
                 flags: int = DEFAULT_FLAGS, peer_node: str | None = None,
                 mapping: Mapping | None = None, limits: Limits | None = None,
                 max_frame_size: int = 1 << 30, max_message_size: int = 1 << 30,
                 max_fragmented_bytes: int = 256 << 20, max_fragmented_messages: int = 256,
                 fragment_size: int = 1 << 20, handshake_header: int = 2) -> None:
        if "@" not in this_node:
            raise LocalProtocolError(f"node names look like name@host, not {this_node!r}")
        if role is Role.INITIATOR and (peer_node is None or "@" not in peer_node):
            raise LocalProtocolError("an initiator needs the peer's full node name")
        self.role = role
        self.this_node = this_node
        self._cookie = cookie.encode("utf-8") if isinstance(cookie, str) else bytes(cookie)
        self.creation = creation
        self.flags = int(flags)
        self.peer_node = peer_node
        self.peer_flags = 0
        self.peer_creation = 0
        self.mapping = mapping or Mapping.EXACT
        self.limits = limits or DIST_LIMITS
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self.max_fragmented_bytes = max_fragmented_bytes
        self.max_fragmented_messages = max_fragmented_messages
        self.fragment_size = max(fragment_size, 64)
        if handshake_header not in (2, 4):
            raise LocalProtocolError("handshake_header is 2 (TCP) or 4 (TLS, as inet_tls_dist)")
        #: the handshake's length prefix: 2 bytes over TCP; inet_tls_dist frames it with 4
        self.handshake_header = handshake_header
        self._state = State.IDLE if role is Role.INITIATOR else State.AWAIT_NAME
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self._out: list[bytes] = []
        self._events: deque[Any] = deque()
        self._our_challenge = 0
        self._peer_v5 = False
        self._atom_cache: list[Atom | None] = [None] * _ATOM_CACHE_SIZE
        self._refs_memo: dict[bytes, list[Atom]] = {}
        self._partials: dict[int, _Partial] = {}
        self._partial_bytes = 0  # bytes held in _partials
        self._sequences = itertools.count(1)  # next() is atomic: send() may run on any thread
        self._use_header = False
        self._use_fragments = False

    # ---------------------------------------------------------------- state and output

    @property
    def state(self) -> State:
        return self._state

    def data_to_send(self) -> bytes:
        """Bytes the handshake produced since the last call (write them out in order)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _check_state(self, *allowed: State) -> None:
        if self._state not in allowed:
            raise LocalProtocolError(f"not possible in state {self._state.value}")

    def _fail(self) -> None:
        self._state = State.ERROR
        self._release()

    def _release(self) -> None:
        """Drop what a dead connection holds (unfinished messages, unread input)."""
        self._partials.clear()
        self._partial_bytes = 0
        self._buf = b""
        self._pos = 0

    def _hs_send(self, payload: bytes) -> None:
        self._out.append(len(payload).to_bytes(self.handshake_header, "big") + payload)

    # ---------------------------------------------------------------- handshake, our side

    def start(self) -> bytes:
        """Initiator: the name message that opens the handshake."""
        self._check_state(State.IDLE)
        name = self.this_node.encode("utf-8")
        self._hs_send(b"N" + struct.pack(">QIH", self.flags, self.creation, len(name)) + name)
        self._state = State.AWAIT_STATUS
        return self.data_to_send()

    def accept_name(self, status: str, *, name: str | None = None,
                    creation: int | None = None) -> bytes:
        """Acceptor: answer the peer's name with a status.

        ``ok``/``ok_simultaneous`` go on to the challenge; ``nok``/``not_allowed`` end the
        handshake; ``alive`` asks the peer whether to replace the connection we still have.
        ``named`` (the only way on for a peer that asked for a dynamic name) gives it ``name``
        (``Something@`` its own host) and ``creation``; both default to ``dynamic_name()``'s.
        """
        self._check_state(State.AWAIT_STATUS_DECISION)
        if status not in _STATUSES_ACCEPTOR:
            raise LocalProtocolError(f"status must be one of {_STATUSES_ACCEPTOR}, not {status!r}")
        dynamic = bool(self.peer_flags & Flag.NAME_ME)
        if status not in ("nok", "not_allowed") and dynamic != (status == "named"):
            raise LocalProtocolError("a peer that asks for a name is answered 'named' or refused"
                                     if dynamic else "'named' answers only a peer that asked for a name")
        if status == "named":
            host = str(self.peer_node)
            if name is None or creation is None:
                fresh_name, fresh_creation = dynamic_name(host)
                name = fresh_name if name is None else name
                creation = fresh_creation if creation is None else creation
            alive, at, its_host = name.partition("@")
            if not alive or not at or its_host != host or len(name) > _MAX_NAME_CHARS:
                raise LocalProtocolError(f"a dynamic name is name@{host}, not {name!r}")
            if not 0 <= creation < (1 << 32):
                raise LocalProtocolError(f"creation must be a 32-bit unsigned int, not {creation!r}")
            raw = name.encode("utf-8")
            self._hs_send(b"snamed:" + struct.pack(">H", len(raw)) + raw + struct.pack(">I", creation))
            self.peer_node, self.peer_creation = name, creation
            # as dist_util does for a dynamic peer: NAME_ME instead of PUBLISHED in our flags
            self.flags = (self.flags | int(Flag.NAME_ME)) & ~int(Flag.PUBLISHED)
            self._after_status()
            return self.data_to_send()
        self._hs_send(b"s" + status.encode("ascii"))
        if status in ("nok", "not_allowed"):
            self._state = State.CLOSED
        elif status == "alive":
            self._state = State.AWAIT_ALIVE_REPLY
        else:
            self._after_status()
        return self.data_to_send()

    def answer_alive(self, keep: bool) -> bytes:
        """Initiator: after ``alive``, ``True`` replaces the old connection, ``False`` gives up."""
        self._check_state(State.AWAIT_ALIVE_DECISION)
        self._hs_send(b"strue" if keep else b"sfalse")
        self._state = State.AWAIT_CHALLENGE if keep else State.CLOSED
        return self.data_to_send()

    def _after_status(self) -> None:
        if self._peer_v5:
            self._state = State.AWAIT_COMPLEMENT
        self._send_challenge()
        if not self._peer_v5:
            self._state = State.AWAIT_REPLY

    def _send_challenge(self) -> None:
        self._our_challenge = secrets.randbits(32)
        name = self.this_node.encode("utf-8")
        self._hs_send(b"N" + struct.pack(">QIIH", self.flags, self._our_challenge, self.creation,
                                         len(name)) + name)

    # ---------------------------------------------------------------- input

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the socket; ``b""`` means the peer closed its side."""
        if self._state is State.ERROR:
            raise LocalProtocolError("the connection is in its ERROR state")
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("data after end of input")
        buf = self._buf
        if self._pos == len(buf) and type(data) is bytes:
            # nothing left over (the usual case: reads end on packet ends): keep the bytes as they
            # are and slice packets out of them, no copy into a buffer first
            self._buf = data
            self._pos = 0
        elif type(buf) is bytearray:
            buf += data
        else:
            self._buf = bytearray(buf[self._pos:]) + data
            self._pos = 0

    def _take_frame(self, header: int) -> bytes | None:
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < header:
            return None
        size = int.from_bytes(buf[pos:pos + header], "big")
        connected = self._state is State.CONNECTED
        limit = self.max_frame_size if connected else MAX_HANDSHAKE_MESSAGE
        if size > limit:
            if not connected and bytes(buf[pos:pos + 2]) in (b"\x16\x03", b"\x15\x03"):
                # a TLS record (handshake or alert) read as a length: the peer runs TLS
                raise RemoteProtocolError("the peer speaks TLS (-proto_dist inet_tls): this side "
                                          "needs the cluster's TLS settings (tls=...)")
            what = "max_frame_size" if connected else "the handshake message limit"
            raise RemoteProtocolError(f"packet of {size} bytes exceeds {what} {limit}")
        end = pos + header + size
        if avail < header + size:
            return None
        frame = bytes(buf[pos + header:end])
        if end == len(buf):
            self._buf = b""
            self._pos = 0
        elif type(buf) is bytearray and end > (1 << 16) and end * 2 > len(buf):
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return frame

    def next_event(self) -> Any:
        """The next event, or ``NEED_DATA``. Raises ``RemoteProtocolError``/``HandshakeFailed``
        (and enters the ERROR state) when the peer breaks the protocol or refuses us."""
        state = self._state
        if state is State.CONNECTED and not self._events:
            if self._pos == len(self._buf) and not self._eof:
                return NEED_DATA  # all read (``take_messages`` usually leaves it so)
            return self._next_connected()
        if state is State.ERROR:
            raise LocalProtocolError("the connection is in its ERROR state")
        try:
            while not self._events:
                if self._state in (State.AWAIT_STATUS_DECISION, State.AWAIT_ALIVE_DECISION, State.IDLE):
                    return NEED_DATA
                if self._state is State.CLOSED:
                    return ConnectionClosed()
                connected = self._state is State.CONNECTED
                frame = self._take_frame(4 if connected else self.handshake_header)
                if frame is None:
                    if not self._eof:
                        return NEED_DATA
                    return self._on_eof()
                if connected:
                    event = self._on_packet(frame)
                    if event is not None:
                        self._events.append(event)
                else:
                    self._on_handshake(frame)
            return self._events.popleft()
        except (RemoteProtocolError, HandshakeFailed):
            self._fail()
            raise
        except DecodeError as error:
            self._fail()
            raise RemoteProtocolError(f"malformed term from peer: {error}") from error
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as error:
            self._fail()
            raise RemoteProtocolError(f"malformed packet from peer: {error}") from error

    def _next_connected(self) -> Any:
        """``next_event`` once connected: one packet, one event (the hot path)."""
        try:
            while True:
                buf, pos = self._buf, self._pos
                # the usual packet (a normal header, atoms already cached) in one codec call
                got = _decode_dist(buf, pos, self.max_frame_size, self._refs_memo, _CONTROL_MAPPING,
                                   self.mapping, self.limits, NO_PAYLOAD, PAYLOAD_TAGS)
                if got is None:  # not all there yet
                    if not self._eof:
                        return NEED_DATA
                    return self._on_eof()
                if got is not False:
                    control, payload, end, used = got
                    if used != end:
                        self._trailing(end - used)
                    event: Any = decode_control(control, payload)
                else:  # anything else: read here
                    avail = len(buf) - pos
                    size = _unpack_u32(buf, pos)[0]
                    if size > self.max_frame_size:
                        raise RemoteProtocolError(
                            f"packet of {size} bytes exceeds max_frame_size {self.max_frame_size}")
                    if avail < 4 + size:
                        if not self._eof:
                            return NEED_DATA
                        return self._on_eof()
                    end = pos + 4 + size
                    if size == 0:
                        event = _TICK_EVENT
                    else:
                        frame = buf[pos + 4:end]
                        if type(frame) is not bytes:
                            frame = bytes(frame)
                        event = self._on_packet(frame)
                if end == len(buf):
                    self._buf = b""
                    self._pos = 0
                elif type(buf) is bytearray and end > (1 << 16) and end * 2 > len(buf):
                    del buf[:end]
                    self._pos = 0
                else:
                    self._pos = end
                if event is not None:
                    return event
        except RemoteProtocolError:
            self._fail()
            raise
        except DecodeError as error:
            self._fail()
            raise RemoteProtocolError(f"malformed term from peer: {error}") from error
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as error:
            self._fail()
            raise RemoteProtocolError(f"malformed packet from peer: {error}") from error

    def take_messages(self, out: list[tuple[Any, Any]], limit: int = 256) -> int:
        """The hot path of a node reading pipelined traffic: append to ``out`` the decoded
        ``(control, payload)`` of each whole packet of the usual form at the head of the input
        (a normal header, its atoms already cached), at most ``limit``, in one codec call;
        return how many. It stops at the first packet that is not whole or that ``next_event()``
        must read (a tick, new atoms, fragments, the end of input: call it then). The caller
        turns each into its event with ``event_of`` or reads the control tuple itself. When it
        raises, ``out`` is as it was and nothing was taken."""
        if self._state is not _CONNECTED or self._events:
            return 0
        buf, pos, before = self._buf, self._pos, len(out)
        try:
            end, trailing = _decode_dist_batch(buf, pos, self.max_frame_size, self._refs_memo,
                                               _CONTROL_MAPPING, self.mapping, self.limits,
                                               NO_PAYLOAD, PAYLOAD_TAGS, out, limit)
        except BaseException as error:
            del out[before:]  # nothing taken: the input is where it was
            if isinstance(error, DecodeError):
                self._fail()
                raise RemoteProtocolError(f"malformed term from peer: {error}") from error
            if isinstance(error, (struct.error, IndexError, UnicodeDecodeError, ValueError)):
                self._fail()
                raise RemoteProtocolError(f"malformed packet from peer: {error}") from error
            raise
        if end == pos:
            return 0
        if trailing:
            log.debug("%d messages from %s had bytes after their terms (ignored)", trailing,
                      self.peer_node)
        if end == len(buf):
            self._buf = b""
            self._pos = 0
        elif type(buf) is bytearray and end > (1 << 16) and end * 2 > len(buf):
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return len(out) - before

    def event_of(self, control: Any, payload: Any) -> ControlMessage:
        """The event for a ``(control, payload)`` from ``take_messages``; a malformed control
        message is a ``RemoteProtocolError`` and puts the connection in its ERROR state, as
        when ``next_event()`` reads it."""
        try:
            return decode_control(control, payload)
        except RemoteProtocolError:
            self._fail()
            raise

    def _on_eof(self) -> Any:
        leftover = len(self._buf) - self._pos
        if self._state is State.CONNECTED:
            self._state = State.CLOSED
            if leftover:
                log.debug("peer %s closed with %d bytes of a partial packet", self.peer_node, leftover)
            self._release()
            return ConnectionClosed()
        hint = " (the cookies probably differ)" if self._state is State.AWAIT_ACK else ""
        state = self._state.value
        self._fail()
        raise HandshakeFailed("closed", f"peer closed the connection during the handshake ({state}){hint}",
                              state=state)

    # ---------------------------------------------------------------- handshake, peer's side

    def _on_handshake(self, msg: bytes) -> None:
        if not msg:
            raise RemoteProtocolError("empty handshake message")
        tag = msg[:1]
        state = self._state
        if state is State.AWAIT_NAME:
            self._on_name(tag, msg)
        elif state is State.AWAIT_STATUS and tag == b"s":
            self._on_status(msg[1:])
        elif state is State.AWAIT_ALIVE_REPLY and tag == b"s":
            answer = msg[1:]
            if answer == b"true":
                self._after_status()
            elif answer == b"false":
                self._state = State.CLOSED
                raise HandshakeFailed("alive", "the peer kept its old connection")
            else:
                raise RemoteProtocolError(f"bad answer to 'alive': {answer!r}")
        elif state is State.AWAIT_COMPLEMENT and tag == b"c":
            flags_high, creation = struct.unpack(">II", msg[1:9])
            self.peer_flags |= flags_high << 32
            self.peer_creation = creation
            self._state = State.AWAIT_REPLY
        elif state is State.AWAIT_CHALLENGE and tag == b"N":
            self._on_challenge(msg)
        elif state is State.AWAIT_REPLY and tag == b"r":
            self._on_reply(msg)
        elif state is State.AWAIT_ACK and tag == b"a":
            if len(msg) != 17:
                raise RemoteProtocolError("challenge ack must carry a 16-byte digest")
            if not hmac.compare_digest(msg[1:], digest(self._our_challenge, self._cookie)):
                raise BadCookie(f"{self.peer_node} answered our challenge with a different cookie")
            self._connected()
        else:
            raise RemoteProtocolError(f"unexpected handshake message {tag!r} in state {state.value}")

    def _on_name(self, tag: bytes, msg: bytes) -> None:
        if tag == b"N":
            flags, creation, nlen = struct.unpack(">QIH", msg[1:15])
            name = msg[15:15 + nlen]
            if len(name) != nlen:
                raise RemoteProtocolError("truncated name in handshake")
        elif tag == b"n":
            _version, flags = struct.unpack(">HI", msg[1:7])
            name, creation = msg[7:], 0
            self._peer_v5 = True
        else:
            raise RemoteProtocolError(f"expected a name message, got {tag!r}")
        text = _node_name(name)
        dynamic = bool(flags & Flag.NAME_ME)
        # dist_util's is_name_ok: Name@Host, both non-empty; a peer asking for a name sends its
        # host alone
        parts = text.split("@")
        if not all(parts) or len(parts) != (1 if dynamic else 2):
            raise HandshakeFailed(
                "not_allowed", f"{text!r} is not a host name (the peer asked for a dynamic name)"
                if dynamic else f"{text!r} is not a node name (name@host)")
        missing = missing_mandatory(flags)
        if missing:
            raise HandshakeFailed("not_allowed", f"{text} lacks mandatory flags {missing!r}")
        self.peer_node, self.peer_flags, self.peer_creation = text, flags, creation
        self._state = State.AWAIT_STATUS_DECISION
        self._events.append(NameReceived(text, flags, creation, dynamic))

    def _on_status(self, status_bytes: bytes) -> None:
        if status_bytes.startswith(b"named:"):
            raise RemoteProtocolError("peer assigned us a dynamic name we did not ask for")
        status = status_bytes.decode("ascii", "replace")
        if status in ("ok", "ok_simultaneous"):
            self._state = State.AWAIT_CHALLENGE
        elif status == "alive":
            self._state = State.AWAIT_ALIVE_DECISION
        elif status in ("nok", "not_allowed"):
            self._state = State.CLOSED
            raise HandshakeFailed(status, f"{self.peer_node} answered {status}")
        else:
            raise RemoteProtocolError(f"unknown handshake status {status!r}")
        self._events.append(StatusReceived(status))

    def _on_challenge(self, msg: bytes) -> None:
        flags, challenge, creation, nlen = struct.unpack(">QIIH", msg[1:19])
        name = _node_name(msg[19:19 + nlen])
        if len(msg) < 19 + nlen:
            raise RemoteProtocolError("truncated challenge")
        if name != self.peer_node:
            raise RemoteProtocolError(f"connected to {self.peer_node} but {name} answered")
        missing = missing_mandatory(flags)
        if missing:
            raise HandshakeFailed("not_allowed", f"{name} lacks mandatory flags {missing!r}")
        self.peer_flags, self.peer_creation = flags, creation
        self._our_challenge = secrets.randbits(32)
        self._hs_send(b"r" + struct.pack(">I", self._our_challenge) + digest(challenge, self._cookie))
        self._state = State.AWAIT_ACK

    def _on_reply(self, msg: bytes) -> None:
        if len(msg) != 21:
            raise RemoteProtocolError("challenge reply must be 21 bytes")
        (challenge,) = struct.unpack(">I", msg[1:5])
        if not hmac.compare_digest(msg[5:], digest(self._our_challenge, self._cookie)):
            raise BadCookie(f"{self.peer_node} answered our challenge with a different cookie")
        self._hs_send(b"a" + digest(challenge, self._cookie))
        self._connected()

    def _connected(self) -> None:
        self._state = State.CONNECTED
        common = self.flags & self.peer_flags
        self._use_header = bool(common & Flag.DIST_HDR_ATOM_CACHE)
        self._use_fragments = self._use_header and bool(common & Flag.FRAGMENTS)
        assert self.peer_node is not None
        self._events.append(Connected(self.peer_node, self.peer_flags, self.peer_creation))

    # ---------------------------------------------------------------- connected: input

    def _on_packet(self, frame: bytes) -> Any:
        """The event a packet carries; None while a fragmented message is still incomplete."""
        if not frame:
            return _TICK_EVENT
        kind = frame[0]
        if kind == 112:  # pass-through: two whole terms, each with its version byte
            control, end = binary_to_term(memoryview(frame)[1:], mapping=_CONTROL_MAPPING,
                                          limits=self.limits, used=True)
            end += 1
            payload = NO_PAYLOAD
            if has_payload(control):
                payload, used = binary_to_term(memoryview(frame)[end:], mapping=self.mapping,
                                               limits=self.limits, used=True)
                end += used
            if end != len(frame):
                self._trailing(len(frame) - end)
            return decode_control(control, payload)
        if kind != 131 or len(frame) < 2:
            raise RemoteProtocolError(f"packet starts with {frame[:2]!r}, not a distribution header")
        sub = frame[1]
        if sub == 68:  # 'D'
            refs, offset = self._atom_refs(frame, 2)
            return self._decode_message(frame, offset, refs)
        elif sub == 69:  # 'E' first fragment
            sequence, fragment = struct.unpack_from(">QQ", frame, 2)
            refs, offset = self._atom_refs(frame, 18)
            if fragment == 1:
                return self._decode_message(frame, offset, refs)
            if sequence in self._partials:
                raise RemoteProtocolError(f"fragment sequence {sequence} started twice")
            if len(self._partials) >= self.max_fragmented_messages:
                raise RemoteProtocolError(
                    f"more than max_fragmented_messages={self.max_fragmented_messages} "
                    "fragmented messages in flight")
            chunk = frame[offset:]
            self._hold(len(chunk), len(chunk))
            self._partials[sequence] = _Partial(refs, fragment - 1, [chunk], len(chunk))
        elif sub == 70:  # 'F' following fragment
            sequence, fragment = struct.unpack_from(">QQ", frame, 2)
            partial = self._partials.get(sequence)
            if partial is None or fragment != partial.next_id:
                raise RemoteProtocolError(f"unexpected fragment {fragment} of sequence {sequence}")
            chunk = frame[18:]
            self._hold(len(chunk), partial.size + len(chunk))
            partial.size += len(chunk)
            partial.chunks.append(chunk)
            partial.next_id -= 1
            if fragment == 1:
                del self._partials[sequence]
                self._partial_bytes -= partial.size
                data = b"".join(partial.chunks)
                partial.chunks.clear()
                return self._decode_message(data, 0, partial.refs)
        else:
            raise RemoteProtocolError(f"unknown distribution header kind {sub}")
        return None

    def _hold(self, more: int, message_size: int) -> None:
        """Refuse a fragment that would take one message or all unfinished ones past their
        bounds (checked before the chunk is kept)."""
        if message_size > self.max_message_size:
            raise RemoteProtocolError(
                f"fragmented message exceeds max_message_size {self.max_message_size}")
        if self._partial_bytes + more > self.max_fragmented_bytes:
            raise RemoteProtocolError(
                f"unfinished fragmented messages would hold {self._partial_bytes + more} bytes, "
                f"over max_fragmented_bytes={self.max_fragmented_bytes}")
        self._partial_bytes += more

    def _atom_refs(self, frame: bytes, offset: int) -> tuple[list[Atom], int]:
        count = frame[offset]
        if count == 0:
            return [], offset + 1
        flag_len = count // 2 + 1
        # A header that only refers to cached atoms repeats byte for byte between messages of the
        # same shape: remembered until the cache changes (a header that stores atoms clears it).
        key_end = offset + 1 + flag_len + count
        key = frame[offset:key_end]
        known = self._refs_memo.get(key)
        if known is not None:
            return known, key_end
        start = offset
        offset += 1
        flags = frame[offset:offset + flag_len]
        if len(flags) != flag_len:
            raise RemoteProtocolError("truncated atom cache flags")
        offset += flag_len

        long_atoms = (flags[count >> 1] >> 4 if count & 1 else flags[count >> 1]) & 1
        refs: list[Atom] = []
        cache = self._atom_cache
        stored = False
        for i in range(count):
            flag = (flags[i >> 1] >> 4) if i & 1 else (flags[i >> 1] & 0x0F)
            index = ((flag & 7) << 8) | frame[offset]
            offset += 1
            if flag & 8:
                if long_atoms:
                    (length,) = struct.unpack_from(">H", frame, offset)
                    offset += 2
                else:
                    length = frame[offset]
                    offset += 1
                text = frame[offset:offset + length]
                if len(text) != length:
                    raise RemoteProtocolError("truncated atom in the atom cache header")
                offset += length
                atom = Atom(text.decode("utf-8"))
                cache[index] = atom
                stored = True
            else:
                cached = cache[index]
                if cached is None:
                    raise RemoteProtocolError(f"reference to empty atom cache slot {index}")
                atom = cached
            refs.append(atom)
        memo = self._refs_memo
        if stored:
            memo.clear()
        elif offset == key_end and len(key) == key_end - start:
            if len(memo) >= _REFS_MEMO_SIZE:
                memo.clear()
            memo[key] = refs
        return refs, offset

    def _decode_message(self, data: bytes, offset: int, refs: list[Atom]) -> ControlMessage:
        # every message of the connection passes here: the codec's own function, called directly
        limits = self.limits
        control, end = _decode_body(data, offset, _CONTROL_MAPPING, limits, refs)
        payload = NO_PAYLOAD
        if type(control) is tuple and control and control[0] in PAYLOAD_TAGS:  # has_payload
            payload, end = _decode_body(data, end, self.mapping, limits, refs)
        if end != len(data):
            self._trailing(len(data) - end)
        return decode_control(control, payload)

    def _trailing(self, count: int) -> None:
        """Bytes after a message's last term are ignored, as BEAM ignores them (erl_call sends
        some: its argument parser writes ``[a|b]`` without the list header, leaving its last
        atom outside the message); refusing them would drop the whole connection."""
        log.debug("%d bytes after a message from %s ignored", count, self.peer_node)

    # ---------------------------------------------------------------- connected: output

    def send(self, message: ControlMessage, *, mapping: Mapping | None = None) -> bytes:
        """The bytes that carry ``message`` (several packets when it is fragmented).

        An ``EncodeError`` (a value with no Erlang form) leaves the connection untouched.
        """
        if self._state is not _CONNECTED:
            self._check_state(_CONNECTED)
        control, payload = message.to_wire(self.peer_flags)
        chosen = mapping or self.mapping
        if not self._use_header:
            parts = [b"p", term_to_binary(control, mapping=_CONTROL_MAPPING)]
            if payload is not NO_PAYLOAD:
                parts.append(term_to_binary(payload, mapping=chosen))
            size = sum(map(len, parts))
            return b"".join([struct.pack(">I", size), *parts])
        # the codec builds the whole packet in one buffer (``_decode_message`` calls it directly too)
        try:
            if payload is NO_PAYLOAD:
                packet: bytes = _encode_dist(control, _CONTROL_MAPPING)
            else:
                packet = _encode_dist(control, _CONTROL_MAPPING, payload, chosen)
        except EncodeError as error:
            if not (self._use_fragments and error.reason.startswith(_TOO_BIG)):
                raise
            # 4 GiB or more: too big for one packet's length, not for fragments
            body = encode_body(control, mapping=_CONTROL_MAPPING)
            if payload is not NO_PAYLOAD:
                body += encode_body(payload, mapping=chosen)
            return self._fragmented(body)
        if self._use_fragments and len(packet) - 7 > self.fragment_size:
            return self._fragmented(memoryview(packet)[7:])
        return packet

    def spawn_request(self, req_id: Reference, from_pid: Pid, group_leader: Pid, module: Atom,
                      function: Atom, args: list[Any], options: list[Any]) -> bytes:
        """``send(SpawnRequest(...))`` from fields of the right types, without the message
        object: a node's rpc path sends one per call, and this is one codec call. Unlike
        ``SpawnRequest`` it checks no field's type: a caller that passes, say, an int for the
        module sends a request the peer refuses (Erlang drops the connection), so it is for
        code that builds the fields itself."""
        if self._state is _CONNECTED and self._use_header:
            try:
                packet: bytes | None = _encode_dist(
                    (29, req_id, from_pid, group_leader, (module, function, len(args)), options),
                    _CONTROL_MAPPING, args, self.mapping)
            except EncodeError:
                packet = None  # ``send`` says why, or fragments it
            if packet is not None and not (self._use_fragments and len(packet) - 7 > self.fragment_size):
                return packet
        return self.send(spawn_request_unchecked(req_id, from_pid, group_leader, module, function,
                                                 args, options))

    def _fragmented(self, body: bytes | memoryview) -> bytes:
        sequence = next(self._sequences)
        step = self.fragment_size
        count = (len(body) + step - 1) // step
        out: list[bytes | memoryview] = []
        view = memoryview(body)
        for i in range(count):
            chunk = view[i * step:(i + 1) * step]
            fragment_id = count - i
            if i == 0:
                head = b"\x83E" + struct.pack(">QQ", sequence, fragment_id) + b"\x00"
            else:
                head = b"\x83F" + struct.pack(">QQ", sequence, fragment_id)
            out.append(struct.pack(">I", len(head) + len(chunk)) + head)
            out.append(chunk)
        return b"".join(out)

    def tick(self) -> bytes:
        """A keep-alive packet (send one when nothing else was sent for a tick interval)."""
        self._check_state(State.CONNECTED)
        return _TICK
