"""``Node``: an asyncio Erlang node over the sans-IO protocol in ``beambridge.protocol``.

One event loop owns all state (no locks); ``BlockingNode`` runs this same class on a background
loop thread. Connections open on demand (EPMD lookup, handshake) and are kept up with ticks;
everything that waits has a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import inspect
import itertools
import logging
import os
import secrets
import select
import socket
import ssl
import struct
import threading
import time
import traceback
import types
from collections.abc import Awaitable, Callable, Iterable
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import EncodeError, Timeout, UsageError
from .._errors import RemoteError as RemoteError_
from ..protocol import (
    NEED_DATA,
    AliasSend,
    ControlMessage,
    DemonitorP,
    Exit,
    Exit2,
    Flag,
    GroupLeader,
    HandshakeFailed,
    Link,
    LocalProtocolError,
    MonitorP,
    MonitorPExit,
    NameReceived,
    NodeLink,
    RegSend,
    RemoteProtocolError,
    Role,
    Send,
    SendSender,
    SpawnReply,
    SpawnRequest,
    StatusReceived,
    Tick,
    Unlink,
    UnlinkId,
    UnlinkIdAck,
    dynamic_name,
    epmd,
)
from ..protocol import Connected as _Connected
from ..protocol import Connection as _Protocol
from ..protocol import ConnectionClosed as _Closed
from ..protocol._control import spawn_request_unchecked
from ..protocol._flags import DEFAULT_FLAGS
from ..term import Atom, ImproperList, Limits, Mapping, Pid, Reference, encode_body
from ..term._types import trusted_reference
from . import _epmd_client
from ._errors import (
    EpmdUnavailable,
    ErlangError,
    ErlangExit,
    ErlangThrow,
    MailboxClosed,
    NoConnection,
)
from ._mailbox import DOWN, KILL, NODEDOWN, NORMAL, PROCESS, Mailbox, Slot, check_name
from ._tls import TlsConfig, TlsHandshakeFailed, load_tls

__all__ = ["Node", "default_cookie", "full_node_name"]

log = logging.getLogger("beambridge.node")
io_log = logging.getLogger("beambridge.node.io")

_A = Atom
OK = _A("ok")
ERROR = _A("error")
RETURN = _A("return")
THROW = _A("throw")
EXIT_A = _A("exit")
UNDEF = _A("undef")
NOPROC = _A("noproc")
NOCONNECTION = _A("noconnection")
ERPC = _A("erpc")
EXECUTE_CALL = _A("execute_call")
EXECUTE_CAST = _A("execute_cast")
MONITOR = _A("monitor")
LINK = _A("link")
REX = _A("rex")
NET_KERNEL = _A("net_kernel")
GEN_CALL = _A("$gen_call")
GEN_CAST = _A("$gen_cast")
CALL = _A("call")
BADRPC = _A("badrpc")
EXIT_TAG = _A("EXIT")
SPAWN_REPLY = _A("spawn_reply")
EMPTY = _A("")

_WRITE_HIGH_WATER = 4 << 20
#: how long a blocking caller that reads its connection itself may stay away before the loop
#: takes reading back (others' messages wait at most about this long meanwhile)
_OWNER_IDLE = 0.002
_SPAWN = int(Flag.SPAWN)  # plain int: an IntFlag operation builds an enum member each time
#: how long an owner waiting for a reply polls the socket before it sleeps in poll(): a reply
#: usually comes within tens of microseconds, and a sleep costs a wake-up (BEAM's schedulers
#: busy-wait before sleeping for the same reason)
_SPIN = 25e-6
_COALESCE_LIMIT = 64 << 10
_ACCEPT_BATCH = 64  # connections accepted per readiness event (then others' events run)
_ACCEPT_RETRY = 1.0  # seconds without accepting after accept() failed (as asyncio does)
_LISTEN_BACKLOG = 128
_HANDSHAKE_READ = 16 << 10  # stream buffer while handshaking: handshake messages are small
_LINGER_RESET = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT left for a refusal
#: Frames from these files are beambridge's or the thread pool's, not the user's: left out of stacks.
_INTERNAL_PATHS = (str(Path(__file__).resolve().parent), str(Path(asyncio.__file__).resolve().parent),
                   str(Path(contextlib.__file__).resolve().parent / "concurrent"))


#: how the "no cookie" message tells a Python caller to give one; the command line says its flag
PASS_COOKIE_HINT = "pass cookie=..."


def default_cookie() -> str:
    """``$ERLANG_COOKIE``, else ``~/.erlang.cookie``, as Erlang itself looks."""
    cookie = os.environ.get("ERLANG_COOKIE")
    if cookie:
        return cookie
    path = Path.home() / ".erlang.cookie"
    try:
        return path.read_text().strip()
    except OSError:
        raise UsageError(
            f"no cookie: {PASS_COOKIE_HINT}, set $ERLANG_COOKIE, or create ~/.erlang.cookie"
        ) from None


def full_node_name(name: str) -> str:
    """``name`` as ``name@host`` (a short name gets this machine's short host name)."""
    if not isinstance(name, str) or not name or name.startswith("@") or name.endswith("@"):
        raise UsageError(f"a node name is 'name' or 'name@host', not {name!r}")
    if "@" in name:
        return name
    return f"{name}@{socket.gethostname().split('.')[0]}"


class _Peer:
    """One live connection. After the handshake its transport feeds ``_PeerProtocol`` directly
    (no stream reader task: one loop iteration less per message that arrives)."""

    __slots__ = (
        "active",
        "alive",
        "creation",
        "flags",
        "flush_scheduled",
        "last_recv",
        "last_sent",
        "leads",
        "loop",
        "name",
        "olock",
        "owner",
        "paused",
        "pending",
        "posted",
        "posted_n",
        "processed",
        "proto",
        "reader",
        "rlock",
        "sock",
        "tasks",
        "tq",
        "transport",
        "waiting",
        "wlock",
        "writer",
    )

    def __init__(self, name: Atom, proto: _Protocol, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, flags: int, creation: int) -> None:
        self.name = name
        self.proto = proto
        self.reader = reader
        self.writer = writer  # kept: a collected StreamWriter closes its transport
        self.transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        self.flags = flags
        self.creation = creation
        self.last_sent = self.last_recv = time.monotonic()
        self.tasks: list[asyncio.Task[Any]] = []
        self.alive = True
        self.pending: list[bytes] = []
        self.flush_scheduled = False
        self.loop = asyncio.get_running_loop()
        self.paused: asyncio.Future[None] | None = None
        #: orders the loop's writes with other threads' direct ones (``write_from_thread``)
        self.wlock = threading.Lock()
        #: other threads' writes waiting for the write lock's holder (``write_from_thread``)
        self.tq: collections.deque[bytes] = collections.deque()
        # the plain socket under a selector transport (None elsewhere, e.g. uvloop: no fast path)
        sock = getattr(self.transport, "_sock", None)
        self.sock: socket.socket | None = sock if isinstance(sock, socket.socket) else None
        # Reading: the loop, or one blocking caller (the "owner") while the transport's reading is
        # paused for it; ``rlock`` serializes feeding ``proto``, ``olock`` guards owner/active.
        self.rlock = threading.Lock()
        self.olock = threading.Lock()
        self.owner: int | None = None
        self.active = False
        self.leads = 0  # times the owner started reading (the loop's watchdog sees it idle)
        #: blocking callers waiting for a reply here, by thread: the owner hands reading to one
        self.waiting: dict[int, Slot] = {}
        #: events the owner handed to the loop, and how many of them the loop has applied
        self.posted = itertools.count(1)
        self.posted_n = 0
        self.processed = 0

    def send(self, message: ControlMessage, mapping: Mapping | None = None) -> None:
        if not self.alive:
            raise NoConnection(self.name, "connection closed")
        self.write(self.proto.send(message, mapping=mapping))

    def write(self, data: bytes) -> None:
        """Write at once when nothing else went out in this loop iteration; later writes of the
        same iteration are queued and leave in one system call at its end (system calls, not
        Python, are the cost of many small messages; latency is the cost of one). Loop only."""
        self.last_sent = time.monotonic()
        self.wlock.acquire()
        try:
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.loop.call_soon(self.flush)
                if not self.pending:
                    self.transport.write(data)
                    return
                self.pending.append(data)
                return
            if len(data) >= _COALESCE_LIMIT:
                self._flush_locked()
                self.transport.write(data)
                return
            self.pending.append(data)
        finally:
            self._unlock()

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.pending:
            self.wlock.acquire()
            try:
                self._flush_locked()
            finally:
                self._unlock()

    def _unlock(self) -> None:
        """Release the write lock, then send what other threads queued while it was held (they
        did not wait for it: see ``write_from_thread``)."""
        self.wlock.release()
        if self.sock is not None:
            self._drain(self.sock)

    def _drain(self, sock: socket.socket) -> None:
        """Send the threads' queue unless another holder of the write lock is there to do it."""
        queue, lock = self.tq, self.wlock
        while queue:
            if not lock.acquire(blocking=False):
                return  # the holder sends it when it lets go (``_unlock``)
            try:
                self._send_queued(sock)
            finally:
                lock.release()

    def _flush_locked(self) -> None:
        pending = self.pending
        if pending and self.alive:
            data = b"".join(pending) if len(pending) > 1 else pending[0]
            pending.clear()
            self.transport.write(data)

    def write_from_thread(self, data: bytes) -> bool:
        """Another thread's write, straight to the socket (no hop to the loop thread); False when
        this transport has no plain socket and the loop must write it.

        Flat combining: the data is queued, and whoever holds the write lock sends everything
        queued (one system call for several threads' messages). A thread that finds the lock
        taken returns at once instead of sleeping on it: the holder looks at the queue again
        after it lets go, so nothing is left behind.
        """
        sock = self.sock
        if sock is None:
            return False
        self.tq.append(data)
        self._drain(sock)
        return True

    def _send_queued(self, sock: socket.socket) -> None:
        """Send what threads queued (write lock held). What the socket does not take at once, and
        anything behind the loop's own queue, goes to the loop's queue, which flushes in order."""
        queue = self.tq
        batch = [queue.popleft() for _ in range(len(queue))]
        if not batch or not self.alive:
            return  # a dead connection: its callers are told by the loop (or see it dead)
        data = b"".join(batch) if len(batch) > 1 else batch[0]
        if self.pending or self.transport.get_write_buffer_size():
            self.pending.append(data)
            self.loop.call_soon_threadsafe(self.flush)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # the loop sees the broken connection and reports it
        self.last_sent = time.monotonic()
        if sent < len(data):
            self.pending.append(data[sent:])
            self.loop.call_soon_threadsafe(self.flush)

    def send_quiet(self, message: ControlMessage) -> None:
        """Send a signal; a dead connection or an unencodable term is logged, not raised."""
        try:
            self.send(message)
        except (NoConnection, EncodeError) as error:
            log.debug("signal %r to %s not sent: %s", type(message).__name__, self.name, error)

    async def drain(self) -> None:
        """Wait while the transport holds more than its high-water mark of unsent bytes."""
        if not self.alive:
            return
        if self.pending and self.transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
            self.flush()
        waiter = self.paused
        if waiter is not None:
            await asyncio.shield(waiter)

    def pause_writing(self) -> None:
        if self.paused is None:
            self.paused = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self.paused = self.paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _PeerProtocol(asyncio.Protocol):
    """The transport's protocol once a connection is up: bytes go straight to the node."""

    def __init__(self, node: Node, peer: _Peer) -> None:
        self._node = node
        self._peer = peer

    def data_received(self, data: bytes) -> None:
        self._node._on_peer_data(self._peer, data)

    def eof_received(self) -> bool:
        self._node._on_peer_data(self._peer, b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._peer.resume_writing()
        self._node._peer_down(self._peer, str(exc) if exc else "connection closed")

    def pause_writing(self) -> None:
        self._peer.pause_writing()

    def resume_writing(self) -> None:
        self._peer.resume_writing()


@dataclass(eq=False, slots=True)
class _Call:
    """An rpc in flight: the reply routes to ``done`` by request id."""

    node: Atom
    tag: Reference
    done: Callable[[bool, Any], None]
    label: tuple[Atom, Atom, int]  # module, function, arity: formatted only for a timeout
    spawned: Pid | None = None
    timer: asyncio.TimerHandle | None = None
    threaded: bool = False  # a blocking caller's: its reply may be applied off the loop thread


class _PythonError:
    """A Python exception turned into Erlang's ``error`` reason and stack."""

    @staticmethod
    def reason(error: BaseException) -> Any:
        return (Atom("python"), Atom(type(error).__name__[:255]), str(error).encode("utf-8", "replace"))

    @staticmethod
    def stack(error: BaseException) -> list[Any]:
        frames = [f for f in traceback.extract_tb(error.__traceback__)
                  if not f.filename.startswith(_INTERNAL_PATHS)]
        stack = []
        for frame in reversed(frames[-20:]):
            location = [(Atom("file"), [ord(c) for c in frame.filename[-200:]]),
                        (Atom("line"), frame.lineno or 0)]
            module = Path(frame.filename).stem or "python"
            stack.append((Atom(module[:255]), Atom(frame.name[:255]), 0, location))
        return stack


class _Undefined(Exception):
    pass


class Node:
    """A Python process as an Erlang node (asyncio). Use ``async with Node(...) as node``.

    ``name`` is ``'name'`` (this host's short name is added) or ``'name@host'``; ``cookie``
    defaults to ``$ERLANG_COOKIE`` then ``~/.erlang.cookie``. ``hidden`` nodes (the default) do
    not join the peer's global view, like ``erl -hidden``. ``epmd_port`` defaults to
    ``$ERL_EPMD_PORT`` or 4369; ``start_epmd`` starts a loopback EPMD when none answers.
    ``mapping`` chooses how terms map to Python (see ``beambridge.term.Mapping``).

    The listening port is open to anyone who can reach it, so what an unauthenticated or
    hostile peer can make the node hold is bounded: at most ``max_handshakes`` handshakes in
    progress (``max_handshakes_per_address`` from one address; a connection over either is
    closed as soon as it is accepted), each within ``handshake_timeout`` seconds for the whole
    handshake, both directions (Erlang's ``net_setuptime``, 7 s). Once connected, a peer's
    unfinished fragmented messages hold at most ``max_fragmented_bytes`` and number at most
    ``max_fragmented_messages``, and one message decodes within ``limits`` (default
    ``beambridge.protocol.DIST_LIMITS``: 10M terms, ~512 MiB of objects, so that a small
    compressed message cannot make the node build a gigabyte); past a bound only that
    connection is closed, with a logged reason, and everyone else is served on.
    """

    def __init__(self, name: str, cookie: str | None = None, *, hidden: bool = True,
                 epmd_host: str = "127.0.0.1", epmd_port: int | None = None,
                 net_ticktime: float = 60.0, mapping: Mapping | None = None,
                 listen_host: str = "127.0.0.1", connect_timeout: float = 10.0,
                 start_epmd: bool = False, handshake_timeout: float = 7.0,
                 max_handshakes: int = 64, max_handshakes_per_address: int = 8,
                 max_fragmented_bytes: int = 256 << 20, max_fragmented_messages: int = 256,
                 limits: Limits | None = None,
                 tls: str | os.PathLike[str] | TlsConfig | None = None,
                 listen_ports: tuple[int, int] | None = None) -> None:
        self.name = full_node_name(name)
        self.node_atom = Atom(self.name)
        self.alive_name, self.host = self.name.split("@", 1)
        self._cookie = cookie if cookie is not None else default_cookie()
        self.hidden = hidden
        self.epmd_host = epmd_host
        self.epmd_port = epmd_port if epmd_port is not None else int(
            os.environ.get("ERL_EPMD_PORT", epmd.DEFAULT_PORT))
        if net_ticktime <= 0:
            raise UsageError("net_ticktime must be positive")
        self.net_ticktime = float(net_ticktime)
        self.mapping = mapping or Mapping.EXACT
        self.listen_host = listen_host
        self.tls = load_tls(tls)
        if self.tls is not None and self.tls.server is None:
            raise UsageError(f"{self.tls.describe()} has no server options: a node needs them "
                             "to accept connections")
        if listen_ports is not None:
            low, high = listen_ports
            if not (type(low) is int and type(high) is int and 0 < low <= high <= 65535):
                raise UsageError(f"listen_ports is (low, high) within 1..65535, not {listen_ports!r}")
        self.listen_ports = listen_ports
        self.connect_timeout = connect_timeout
        self.start_epmd = start_epmd
        if handshake_timeout <= 0:
            raise UsageError("handshake_timeout must be positive")
        self.handshake_timeout = float(handshake_timeout)
        for option, value in (("max_handshakes", max_handshakes),
                              ("max_handshakes_per_address", max_handshakes_per_address),
                              ("max_fragmented_bytes", max_fragmented_bytes),
                              ("max_fragmented_messages", max_fragmented_messages)):
            if type(value) is not int or value < 1:
                raise UsageError(f"{option} must be a positive int, not {value!r}")
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_address = max_handshakes_per_address
        if limits is not None and not isinstance(limits, Limits):
            raise UsageError(f"limits must be a beambridge.term.Limits, not {limits!r}")
        self._proto_options: dict[str, Any] = {
            "limits": limits,
            "max_fragmented_bytes": max_fragmented_bytes,
            "max_fragmented_messages": max_fragmented_messages,
            # inet_tls_dist frames the handshake with 4-byte lengths (TCP's is 2)
            "handshake_header": 4 if self.tls is not None else 2,
        }
        self.creation = 0
        self.port = 0
        self._flags = int(DEFAULT_FLAGS) | (0 if hidden else int(Flag.PUBLISHED))
        self._started = False
        self._closed = False
        self._listener: socket.socket | None = None
        #: incoming handshakes in progress: their sockets, and how many per peer address
        self._handshaking: set[socket.socket] = set()
        self._handshaking_from: collections.Counter[str] = collections.Counter()
        self._refusals = _Throttle(log, 10.0)
        self._epmd_writer: asyncio.StreamWriter | None = None
        self._peers: dict[Atom, _Peer] = {}
        self._pending: dict[Atom, asyncio.Future[_Peer]] = {}
        self._connecting: dict[Atom, asyncio.Task[None]] = {}
        self._procs: dict[int, Mailbox] = {}
        self._names: dict[Atom, Mailbox] = {}
        self._aliases: dict[Reference, Mailbox] = {}
        self._spawned: dict[int, asyncio.Task[Any]] = {}
        self._exposed: dict[Atom, dict[Atom, tuple[Callable[..., Any], bool]]] = {}
        self._nodes_watchers: set[Mailbox] = set()
        self._pid_ids = itertools.count(1)
        self._ref_ids = itertools.count(1)
        self._unlink_ids = itertools.count(1)
        self._ref_salt = (secrets.randbits(32), secrets.randbits(32))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._anon: Mailbox | None = None
        self._group_leader: Mailbox | None = None
        self._caller_pid: Pid | None = None
        self._calls: dict[Reference, _Call] = {}
        self._node_atoms: dict[Any, Atom] = {}
        self._name_atoms: dict[Any, Atom] = {}
        #: gets what Erlang sends to a name nobody registered here (else it is dropped), as the
        #: old uWSGI plugin did: replies to ``{any_name, Node}`` reach one Python inbox.
        self.unrouted: Mailbox | None = None

    # ================================================================ life cycle

    async def start(self) -> Node:
        """Listen, register with EPMD, and start the built-in services (rex, net_kernel)."""
        if self._started:
            raise UsageError("node already started")
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._listener = _listen(self.listen_host, self.listen_ports)
        self.port = self._listener.getsockname()[1]
        self._loop.add_reader(self._listener.fileno(), self._accept_ready)
        try:
            try:
                self._epmd_writer, self.creation = await _epmd_client.register(
                    self.epmd_host, self.epmd_port, self.alive_name, self.port,
                    hidden=self.hidden, timeout=self.connect_timeout)
            except EpmdUnavailable:
                if not self.start_epmd:
                    raise
                _epmd_client.start_daemon(self.epmd_port)
                self._epmd_writer, self.creation = await self._register_retrying()
        except BaseException:
            self._stop_listening()
            self._closed = True
            raise
        self._anon = _Sink(self, self._next_pid())
        self._procs[self._anon.pid.id] = self._anon
        self._group_leader = _GroupLeader(self, self._next_pid())
        caller = _Sink(self, self._next_pid())  # the From of every rpc; replies are routed by id
        self._procs[caller.pid.id] = caller
        self._caller_pid = caller.pid
        self._procs[self._group_leader.pid.id] = self._group_leader
        for service in (_Rex(self, self._next_pid(), REX), _NetKernel(self, self._next_pid(), NET_KERNEL)):
            self._procs[service.pid.id] = service
            self._names[service.name] = service  # type: ignore[index]
        log.info("node %s up on port %d (creation %d)", self.name, self.port, self.creation)
        return self

    async def _register_retrying(self) -> tuple[asyncio.StreamWriter, int]:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                return await _epmd_client.register(self.epmd_host, self.epmd_port, self.alive_name,
                                                   self.port, hidden=self.hidden, timeout=2.0)
            except EpmdUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Unregister from EPMD, close every connection, and wake every waiter with an error."""
        if self._closed:
            return
        self._closed = True
        if self._epmd_writer is not None:
            self._epmd_writer.close()
        self._stop_listening()
        cancelled = list(self._connecting.values())
        for task in cancelled:
            task.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NoConnection("*", "node closed"))
        for peer in list(self._peers.values()):
            self._peer_down(peer, "node closed")
        for req in list(self._calls):
            self._finish_call(req, False, NoConnection(self.name, "node closed"))
        for mailbox in list(self._procs.values()):
            mailbox.close(_A("shutdown"))
        for task in list(self._spawned.values()) + list(self._tasks):
            task.cancel()
            cancelled.append(task)
        # Let them unwind now, on this loop: a BlockingNode stops its loop right after, and a
        # task destroyed pending (a connection attempt to an unreachable host) is an error.
        current = asyncio.current_task()
        unwinding = [t for t in cancelled if t is not current and not t.done()]
        if unwinding:
            await asyncio.wait(unwinding, timeout=1.0)
        log.info("node %s closed", self.name)

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(listener.fileno())
        listener.close()

    async def __aenter__(self) -> Node:
        if not self._started:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_running(self) -> None:
        if not self._started:
            raise UsageError("node not started: use `async with Node(...)` or `await node.start()`")
        if self._closed:
            raise NoConnection(self.name, "this node is closed")

    def _spawn_task(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ================================================================ identities

    def _next_pid(self) -> Pid:
        n = next(self._pid_ids)
        return Pid(self.node_atom, n & 0x0FFFFFFF, (n >> 28) & 0x1FFF, self.creation)

    def make_ref(self) -> Reference:
        """A new reference of this node."""
        n = next(self._ref_ids)  # every field is in range by construction: no re-validation
        return trusted_reference(self.node_atom, self.creation, (
            n & 0x3FFFF, ((n >> 18) ^ self._ref_salt[0]) & 0xFFFFFFFF, self._ref_salt[1]))

    def _new_mailbox(self, name: Atom | None, trap_exits: bool) -> Mailbox:
        if name is not None and name in self._names:
            raise UsageError(f"the name {name} is already registered on {self.name}")
        mailbox = Mailbox(self, self._next_pid(), name, trap_exits)
        self._procs[mailbox.pid.id] = mailbox
        if name is not None:
            self._names[name] = mailbox
        return mailbox

    def mailbox(self, name: str | None = None, *, trap_exits: bool = True) -> Mailbox:
        """A new Python process; ``name`` registers it so Erlang can send to ``{Name, Node}``."""
        self._check_running()
        return self._new_mailbox(check_name(name) if name is not None else None, trap_exits)

    def whereis(self, name: str) -> Pid | None:
        mailbox = self._names.get(Atom(name))
        return mailbox.pid if mailbox is not None else None

    def _local(self, pid: Pid) -> Mailbox | None:
        if pid.node != self.node_atom or pid.creation != self.creation:
            return None
        mailbox = self._procs.get(pid.id)
        if mailbox is not None and mailbox.pid == pid:
            return mailbox
        return None

    # ================================================================ connections

    def nodes(self) -> list[str]:
        """Names of the nodes connected now."""
        return [str(name) for name, peer in self._peers.items() if peer.alive]

    async def connect(self, node: str, timeout: float | None = None) -> None:
        """Connect to ``node`` now (sends and calls connect on demand anyway)."""
        await self._peer(Atom(full_node_name(node)), timeout)

    async def _peer(self, node: Atom, timeout: float | None = None) -> _Peer:
        self._check_running()
        peer = self._peers.get(node)
        if peer is not None and peer.alive:
            return peer
        if node == self.node_atom:
            raise UsageError("a node does not connect to itself")
        future = self._pending.get(node)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_consume_exception)
            self._pending[node] = future
            self._connecting[node] = asyncio.ensure_future(self._connect(node, future))
        limit = self.connect_timeout if timeout is None else min(timeout, self.connect_timeout)
        try:
            return await asyncio.wait_for(asyncio.shield(future), limit)
        except TimeoutError:
            raise NoConnection(node, f"no connection within {limit} s") from None

    async def _connect(self, node: Atom, future: asyncio.Future[_Peer]) -> None:
        opened: asyncio.StreamWriter | None = None
        try:
            alive, _, host = node.partition("@")
            info = await _epmd_client.lookup(host, self.epmd_port, alive, self.connect_timeout)
            if info is None:
                raise NoConnection(node, f"{alive!r} is not registered with EPMD on {host}")
            reader, writer = await asyncio.wait_for(self._open(node, host, info.port),
                                                    self.connect_timeout)
            opened = writer
            proto = _Protocol(Role.INITIATOR, this_node=self.name, cookie=self._cookie,
                              creation=self.creation, flags=self._flags, peer_node=str(node),
                              mapping=self.mapping, **self._proto_options)
            writer.write(proto.start())
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    connected = await self._handshake(proto, reader, writer, initiator=True)
            except TimeoutError:
                raise NoConnection(node, f"handshake not finished within {self.handshake_timeout} s "
                                         "(handshake_timeout)") from None
            if connected is None:
                return  # lost the simultaneous-connect arbitration: the peer's connection wins
            self._peer_up(proto, reader, writer, connected)
            opened = None
        except asyncio.CancelledError:
            raise
        except HandshakeFailed as error:
            if error.reason == "nok":
                # simultaneous connect and the peer's attempt wins; it resolves the future
                log.debug("simultaneous connect to %s: waiting for its connection", node)
                self._spawn_task(self._expire_pending(node, future))
                return
            self._fail_pending(node, future, error)
        except (TimeoutError, Timeout):
            self._fail_pending(node, future, NoConnection(node, "handshake timed out"))
        except NoConnection as error:
            self._fail_pending(node, future, error)
        except ssl.SSLError as error:
            self._fail_pending(node, future, TlsHandshakeFailed(node, _tls_reason(error)))
        except (OSError, RemoteProtocolError, EpmdUnavailable) as error:
            if self.tls is not None and isinstance(error, ConnectionResetError | BrokenPipeError):
                error = TlsHandshakeFailed(node, f"the peer closed the connection during TLS ({error})")
            self._fail_pending(node, future, error if isinstance(error, NoConnection)
                               else NoConnection(node, str(error)))
        finally:
            if self._connecting.get(node) is asyncio.current_task():
                del self._connecting[node]
            if opened is not None:
                opened.close()

    async def _open(self, node: Atom, host: str, port: int
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to a peer's listening port: TCP, then TLS with the client context."""
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port)
        if self.tls is None:
            return reader, writer
        # Within what is left of connect_timeout, so that a peer which never answers TLS (a
        # plain-TCP node waits for more of what it takes for a handshake packet) is named as such.
        budget = max(0.1, self.connect_timeout - (time.monotonic() - started) - 0.25)
        try:
            await writer.start_tls(self.tls.client, server_hostname=self.tls.client_hostname(host),
                                   ssl_handshake_timeout=budget)
        except (TimeoutError, ConnectionAbortedError):  # asyncio aborts a handshake past its time
            writer.close()
            raise TlsHandshakeFailed(node, f"no TLS answer within {budget:.1f} s: is it a plain-TCP "
                                           "node? (TLS nodes run -proto_dist inet_tls)") from None
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _accepted(self, conn: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Streams over a connection we accepted: TCP, or TLS with the server context."""
        if self.tls is None:
            return await asyncio.open_connection(sock=conn, limit=_HANDSHAKE_READ)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_HANDSHAKE_READ, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock=conn, ssl=self.tls.server,
            ssl_handshake_timeout=self.handshake_timeout)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _expire_pending(self, node: Atom, future: asyncio.Future[_Peer]) -> None:
        await asyncio.sleep(self.connect_timeout)
        self._fail_pending(node, future, NoConnection(node, "simultaneous connect did not complete"))

    def _fail_pending(self, node: Atom, future: asyncio.Future[_Peer], error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)
        if self._pending.get(node) is future:
            del self._pending[node]

    async def _handshake(self, proto: _Protocol, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, *, initiator: bool) -> _Connected | None:
        """Run the handshake to its end; ``None`` when we gave way to a simultaneous connect."""
        while True:
            event = proto.next_event()
            out = proto.data_to_send()
            if out:
                writer.write(out)
            if event is NEED_DATA:
                data = await reader.read(65536)
                proto.receive_data(data)
                continue
            if isinstance(event, _Connected):
                return event
            if isinstance(event, StatusReceived):
                if event.status == "alive":
                    # we are connecting anew, so any connection the peer remembers is dead
                    writer.write(proto.answer_alive(True))
                continue
            if isinstance(event, NameReceived):
                if event.dynamic:  # a peer without a name (erl_call -R): net_kernel names it
                    if self._closed:
                        writer.write(proto.accept_name("not_allowed"))
                        await writer.drain()
                        return None
                    name, creation = self._unused_dynamic_name(event.name)
                    writer.write(proto.accept_name("named", name=name, creation=creation))
                    continue
                status = self._arbitrate(Atom(event.name))
                writer.write(proto.accept_name(status))
                if status in ("nok", "not_allowed"):
                    await writer.drain()
                    return None
                continue
            if isinstance(event, _Closed):
                raise HandshakeFailed("closed", "peer closed the connection during the handshake")

    def _unused_dynamic_name(self, host: str) -> tuple[str, int]:
        """A dynamic name at ``host`` (and its creation) that no connection uses: a clash of
        64 random bits is unlikely, but net_kernel checks too."""
        while True:
            name, creation = dynamic_name(host)
            if Atom(name) not in self._peers and Atom(name) not in self._connecting:
                return name, creation

    def _arbitrate(self, other: Atom) -> str:
        """The status for an incoming name (see ``net_kernel``'s simultaneous-connect rule)."""
        if self._closed:
            return "not_allowed"
        peer = self._peers.get(other)
        if peer is not None and peer.alive:
            return "alive"
        if other in self._connecting:
            if self.name > other:
                return "nok"  # our own attempt wins
            # the peer's wins, but only once it has proven the cookie (see ``_on_accept``): a
            # stranger using its name must not cancel our attempt; the peer answers it ``nok``
            return "ok_simultaneous"
        return "ok"

    def _accept_ready(self) -> None:
        """Accept what the listening socket has. A connection over the handshake caps is closed
        at once (reset), before anything but its socket exists; one within them gets a
        handshake task with a deadline."""
        listener = self._listener
        if listener is None:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:  # out of file descriptors or memory: try again later
                self._refusals.warn("accept", "cannot accept connections: %s; retrying in %.0f s",
                                    error, _ACCEPT_RETRY)
                assert self._loop is not None
                self._loop.remove_reader(listener.fileno())
                self._loop.call_later(_ACCEPT_RETRY, self._resume_accepting, listener)
                return
            host = str(address[0])
            if (len(self._handshaking) >= self.max_handshakes
                    or self._handshaking_from[host] >= self.max_handshakes_per_address):
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                conn.close()
                self._refusals.warn(
                    "cap", "incoming connection from %s closed: %d handshakes in progress (%d from "
                    "that address; max_handshakes=%d, max_handshakes_per_address=%d)", host,
                    len(self._handshaking), self._handshaking_from[host], self.max_handshakes,
                    self.max_handshakes_per_address)
                continue
            self._handshaking.add(conn)
            self._handshaking_from[host] += 1
            self._spawn_task(self._on_accept(conn, host))

    def _resume_accepting(self, listener: socket.socket) -> None:
        if self._listener is listener and self._loop is not None:
            self._loop.add_reader(listener.fileno(), self._accept_ready)

    async def _on_accept(self, conn: socket.socket, host: str) -> None:
        proto: _Protocol | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.handshake_timeout):
                reader, writer = await self._accepted(conn)
                proto = _Protocol(Role.ACCEPTOR, this_node=self.name, cookie=self._cookie,
                                  creation=self.creation, flags=self._flags, mapping=self.mapping,
                                  **self._proto_options)
                connected = await self._handshake(proto, reader, writer, initiator=False)
        except (HandshakeFailed, RemoteProtocolError, OSError, TimeoutError) as error:
            peer_node = proto.peer_node if proto is not None else None
            if isinstance(error, TimeoutError):
                error = TimeoutError(f"handshake not finished within {self.handshake_timeout} s "
                                     "(handshake_timeout)")
            elif isinstance(error, ssl.SSLError):
                error = OSError(_tls_reason(error) + " (a plain-TCP node, or a certificate our CA "
                                "did not sign?)")
            self._refusals.warn("handshake", "incoming connection from %s%s refused: %s", host,
                                f" ({peer_node})" if peer_node else "", error)
            if writer is not None:
                writer.close()
            else:
                conn.close()
            self._orphaned(peer_node, error)
            return
        except BaseException:  # cancelled (the node closes): the socket goes with the task
            if writer is not None:
                writer.close()
            else:
                conn.close()
            raise
        finally:
            self._handshaking.discard(conn)
            self._handshaking_from[host] -= 1
            if self._handshaking_from[host] <= 0:
                del self._handshaking_from[host]
        if connected is None:
            writer.close()
            return
        name = Atom(connected.name)
        ours = self._connecting.pop(name, None)
        if ours is not None:
            ours.cancel()  # simultaneous connect, authenticated: this connection wins
        old = self._peers.get(name)
        if old is not None:
            self._peer_down(old, "replaced by a new connection")
        self._peer_up(proto, reader, writer, connected)

    def _orphaned(self, name: str | None, error: BaseException) -> None:
        """An accepted handshake that we let win over our own attempt failed: fail its waiters."""
        if name is None:
            return
        node = Atom(name)
        future = self._pending.get(node)
        if future is not None and node not in self._connecting:
            self._fail_pending(node, future, NoConnection(node, f"handshake failed: {error}"))

    def _peer_up(self, proto: _Protocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 connected: _Connected) -> None:
        name = Atom(connected.name)
        with contextlib.suppress(OSError):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = _Peer(name, proto, reader, writer, connected.flags, connected.creation)
        self._peers[name] = peer
        # bytes the stream reader got after the handshake's last read are the peer's first packets
        leftover = bytes(getattr(reader, "_buffer", b""))
        eof = reader.at_eof() or bool(getattr(reader, "_eof", False))
        peer.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        peer.transport.set_protocol(_PeerProtocol(self, peer))
        peer.tasks.append(self._spawn_task(self._tick_loop(peer)))
        assert self._loop is not None
        self._loop.call_soon(self._on_peer_data, peer, leftover or None)
        if eof:
            self._loop.call_soon(self._on_peer_data, peer, b"")
        future = self._pending.pop(name, None)
        if future is not None and not future.done():
            future.set_result(peer)
        log.info("connected to %s", name)
        for watcher in list(self._nodes_watchers):
            watcher.deliver((Atom("nodeup"), name))

    def _on_peer_data(self, peer: _Peer, data: bytes | None) -> None:
        """Bytes from a connection (``b""``: it closed; ``None``: only what is buffered): decode
        and apply every whole message."""
        if not peer.alive:
            return
        with peer.rlock:
            self._on_peer_data_locked(peer, data)

    def _on_peer_data_locked(self, peer: _Peer, data: bytes | None) -> None:
        proto = peer.proto
        try:
            if data is not None:
                proto.receive_data(data)
                peer.last_recv = time.monotonic()
            next_event, dispatch = proto.next_event, self._dispatch
            while True:
                event = next_event()
                if event is NEED_DATA:
                    return
                kind = type(event)
                if kind is Tick:
                    continue
                if kind is _Closed:
                    self._peer_down(peer, "connection closed")
                    return
                try:
                    dispatch(peer, event)
                except Exception:
                    log.exception("error handling %r from %s", kind.__name__, peer.name)
                if not peer.alive:
                    return
        except RemoteProtocolError as error:
            log.warning("closing connection to %s: %s", peer.name, error)
            self._peer_down(peer, f"protocol error: {error}")

    async def _tick_loop(self, peer: _Peer) -> None:
        interval = self.net_ticktime / 4
        while peer.alive:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - peer.last_recv > self.net_ticktime:
                log.warning("%s sent nothing for %.1f s (net_ticktime): connection dropped",
                            peer.name, now - peer.last_recv)
                self._peer_down(peer, "net_tick_timeout")
                return
            if now - peer.last_sent >= interval * 0.9 and peer.alive:
                peer.write(peer.proto.tick())

    def _peer_down(self, peer: _Peer, reason: str) -> None:
        if not peer.alive:
            return
        peer.alive = False
        if self._peers.get(peer.name) is peer:
            del self._peers[peer.name]
        log.info("connection to %s down: %s", peer.name, reason)
        with peer.wlock:
            peer.pending.clear()
            peer.transport.close()
        peer.resume_writing()
        current = asyncio.current_task() if self._loop is not None and self._loop.is_running() else None
        for task in peer.tasks:
            if task is not current:
                task.cancel()
        node = peer.name
        for req in [r for r, c in list(self._calls.items()) if c.node == node]:  # threads add
            self._finish_call(req, False, NoConnection(node, f"connection lost during the call: {reason}"))
        for mailbox in list(self._procs.values()):
            for linked in [p for p in mailbox.links if p.node == node]:
                mailbox.links.discard(linked)
                mailbox.exit_signal(linked, NOCONNECTION)
            for ref, (target, target_node) in list(mailbox.monitors_out.items()):
                if target_node == node:
                    del mailbox.monitors_out[ref]
                    mailbox.deliver((DOWN, ref, PROCESS, _monitored(target, node), NOCONNECTION))
            for ref, (holder, _) in list(mailbox.monitors_in.items()):
                if holder.node == node:
                    del mailbox.monitors_in[ref]
            if node in mailbox.node_monitors:
                mailbox.node_monitors.discard(node)
                mailbox.deliver((NODEDOWN, node))
        for watcher in list(self._nodes_watchers):
            watcher.deliver((NODEDOWN, node))

    def monitor_nodes(self, mailbox: Mailbox, enable: bool = True) -> None:
        """Deliver ``('nodeup', Node)``/``('nodedown', Node)`` for every connection to ``mailbox``."""
        if enable:
            self._nodes_watchers.add(mailbox)
        else:
            self._nodes_watchers.discard(mailbox)

    # ================================================================ routing signals

    def _signal_now(self, node: Atom, message: ControlMessage) -> None:
        """Send a signal on an existing connection, or apply it locally; never waits."""
        if node == self.node_atom:
            self._dispatch(None, message)
            return
        peer = self._peers.get(node)
        if peer is not None:
            peer.send_quiet(message)

    async def _signal(self, node: Atom, message: ControlMessage) -> None:
        if node == self.node_atom:
            self._dispatch(None, message)
            return
        peer = await self._peer(node)
        peer.send(message)
        await peer.drain()

    def _dispatch(self, peer: _Peer | None, event: Any) -> None:
        """Apply one control message that arrived (or that a local process sent locally)."""
        kind = type(event)
        if kind is Send or kind is SendSender:
            mailbox = self._local(event.to_pid)
            if mailbox is not None:
                mailbox.deliver(event.message)
        elif kind is RegSend:
            mailbox = self._names.get(event.to_name)
            if mailbox is None:
                mailbox = self.unrouted
            if mailbox is not None:
                mailbox.deliver(event.message)
            else:
                log.debug("message to unregistered name %s dropped", event.to_name)
        elif kind is AliasSend:
            mailbox = self._aliases.get(event.alias)
            if mailbox is not None:
                mailbox.deliver(event.message)
        elif kind is MonitorPExit:
            if event.to_pid == self._caller_pid:
                self._call_down(event.ref, event.reason)
                return
            mailbox = self._local(event.to_pid)
            entry = mailbox.monitors_out.pop(event.ref, None) if mailbox is not None else None
            if mailbox is not None and entry is not None:
                # shown as the monitor was set, as BEAM does: a monitor on a name gets
                # {Name, Node} (the wire carries the bare name)
                mailbox.deliver((DOWN, event.ref, PROCESS, _monitored(*entry), event.reason))
        elif kind is SpawnReply:
            if event.to_pid == self._caller_pid:
                self._call_spawned(event.req_id, event.result)
                return
            mailbox = self._local(event.to_pid)
            if mailbox is not None:
                if isinstance(event.result, Pid):
                    mailbox.deliver((SPAWN_REPLY, event.req_id, OK, event.result))
                else:
                    mailbox.monitors_out.pop(event.req_id, None)
                    mailbox.deliver((SPAWN_REPLY, event.req_id, ERROR, event.result))
        elif kind is Link:
            mailbox = self._local(event.to_pid)
            if mailbox is None or mailbox.closed is not None:
                self._signal_now(event.from_pid.node, Exit(event.to_pid, event.from_pid, NOPROC))
            else:
                mailbox.links.add(event.from_pid)
        elif kind is UnlinkId:
            mailbox = self._local(event.to_pid)
            if mailbox is not None:
                mailbox.links.discard(event.from_pid)
            self._signal_now(event.from_pid.node, UnlinkIdAck(event.id, event.to_pid, event.from_pid))
        elif kind is Unlink:
            mailbox = self._local(event.to_pid)
            if mailbox is not None:
                mailbox.links.discard(event.from_pid)
        elif kind is Exit:
            mailbox = self._local(event.to_pid)
            if mailbox is not None and event.from_pid in mailbox.links:
                mailbox.links.discard(event.from_pid)
                mailbox.exit_signal(event.from_pid, event.reason)
        elif kind is Exit2:
            mailbox = self._local(event.to_pid)
            if mailbox is not None:
                mailbox.exit_signal(event.from_pid, event.reason, kill=event.reason == KILL)
        elif kind is MonitorP:
            target = event.to_proc
            mailbox = self._names.get(target) if isinstance(target, Atom) else self._local(target)
            if mailbox is None or mailbox.closed is not None:
                self._signal_now(event.from_pid.node, MonitorPExit(target, event.from_pid, event.ref, NOPROC))
            else:
                mailbox.monitors_in[event.ref] = (event.from_pid, target)
        elif kind is DemonitorP:
            target = event.to_proc
            mailbox = self._names.get(target) if isinstance(target, Atom) else self._local(target)
            if mailbox is not None:
                mailbox.monitors_in.pop(event.ref, None)
        elif kind is SpawnRequest:
            if peer is None:
                raise UsageError("local spawn requests are not supported")
            self._on_spawn_request(peer, event)
        elif kind is UnlinkIdAck or kind is GroupLeader or kind is NodeLink:
            pass
        else:
            log.debug("ignored %r", event)

    def _process_ended(self, mailbox: Mailbox, reason: Any) -> None:
        """A local process ended: tell linked and monitoring processes, unregister it."""
        self._procs.pop(mailbox.pid.id, None)
        if mailbox.name is not None and self._names.get(mailbox.name) is mailbox:
            del self._names[mailbox.name]
        self._nodes_watchers.discard(mailbox)
        for alias in [a for a, m in self._aliases.items() if m is mailbox]:
            del self._aliases[alias]
        links, mailbox.links = mailbox.links, set()
        for pid in links:
            self._signal_now(pid.node, Exit(mailbox.pid, pid, reason))
        monitors_in, mailbox.monitors_in = mailbox.monitors_in, {}
        for ref, (watcher, target) in monitors_in.items():
            self._signal_now(watcher.node, MonitorPExit(target, watcher, ref, reason))
        monitors_out, mailbox.monitors_out = mailbox.monitors_out, {}
        for ref, (target, node) in monitors_out.items():
            self._signal_now(node, DemonitorP(mailbox.pid, target, ref))

    # ================================================================ links and monitors

    async def _link(self, mailbox: Mailbox, pid: Pid) -> None:
        if not isinstance(pid, Pid):
            raise UsageError(f"link wants a Pid, not {pid!r}")
        mailbox.links.add(pid)
        try:
            await self._signal(pid.node, Link(mailbox.pid, pid))
        except NoConnection:
            mailbox.links.discard(pid)
            mailbox.exit_signal(pid, NOCONNECTION)

    async def _unlink(self, mailbox: Mailbox, pid: Pid) -> None:
        if pid not in mailbox.links:
            return
        mailbox.links.discard(pid)
        peer = self._peers.get(pid.node)
        if pid.node == self.node_atom:
            self._dispatch(None, UnlinkId(next(self._unlink_ids), mailbox.pid, pid))
        elif peer is not None:
            if peer.flags & Flag.UNLINK_ID:
                peer.send_quiet(UnlinkId(next(self._unlink_ids), mailbox.pid, pid))
            else:
                peer.send_quiet(Unlink(mailbox.pid, pid))

    async def _monitor(self, mailbox: Mailbox, target: Any) -> Reference:
        ref = self.make_ref()
        proc: Pid | Atom
        if isinstance(target, Pid):
            proc, node = target, target.node
        elif isinstance(target, tuple) and len(target) == 2:
            proc, node = check_name(target[0]), Atom(full_node_name(str(target[1])))
        elif isinstance(target, str):
            proc, node = check_name(target), self.node_atom
        else:
            raise UsageError(f"monitor wants a Pid, a name or (name, node), not {target!r}")
        mailbox.monitors_out[ref] = (proc, node)
        try:
            await self._signal(node, MonitorP(mailbox.pid, proc, ref))
        except NoConnection:
            if mailbox.monitors_out.pop(ref, None) is not None:
                mailbox.deliver((DOWN, ref, PROCESS, _monitored(proc, node), NOCONNECTION))
        return ref

    async def _demonitor(self, mailbox: Mailbox, ref: Reference) -> None:
        entry = mailbox.monitors_out.pop(ref, None)
        if entry is not None:
            self._signal_now(entry[1], DemonitorP(mailbox.pid, entry[0], ref))

    # ================================================================ sending

    def _resolve(self, dest: Any) -> tuple[Atom, Any]:
        """``(node, pid | name | alias)`` for what the user names as a destination."""
        if isinstance(dest, Pid):
            return dest.node, dest
        if isinstance(dest, Reference):
            return dest.node, dest
        if isinstance(dest, str):
            return self.node_atom, check_name(dest)
        if isinstance(dest, tuple) and len(dest) == 2:
            return self._node_atom(dest[1]), check_name(dest[0])
        raise UsageError(f"send to a Pid, a registered name, (name, node) or an alias, not {dest!r}")

    def begin_send(self, dest: Any, message: Any, sender: Mailbox | None,
                   done: Callable[[bool, Any], None], timeout: float | None = None) -> None:
        """``send`` in callback form (for ``BlockingNode``): sends at once when connected."""
        try:
            self._check_running()
            node, _ = self._resolve(dest)
            peer = self._peers.get(node)
            if node == self.node_atom or (peer is not None and peer.alive):
                self._send_now(dest, message, sender)
                done(True, None)
                return
        except Exception as error:
            done(False, error)
            return

        async def slow() -> None:
            try:
                await self.send(dest, message, sender=sender, timeout=timeout)
            except Exception as error:
                done(False, error)
            else:
                done(True, None)

        self._spawn_task(slow())

    def _send_now(self, dest: Any, message: Any, sender: Mailbox | None) -> _Peer | None:
        node, target = self._resolve(dest)
        source = sender or self._anon
        assert source is not None
        if isinstance(target, Pid):
            msg: ControlMessage = Send(target, message, source.pid)
        elif isinstance(target, Reference):
            msg = AliasSend(source.pid, target, message)
        else:
            msg = RegSend(source.pid, target, message)
        if node == self.node_atom:
            self._dispatch(None, msg)
            return None
        peer = self._peers[node]
        peer.send(msg)
        return peer

    async def send(self, dest: Any, message: Any, *, sender: Mailbox | None = None,
                   timeout: float | None = None) -> None:
        """Send ``message`` to a ``Pid``, a name registered here, ``(name, node)``, or an alias.

        Connects on demand (within ``timeout``, at most ``connect_timeout``); raises
        ``NoConnection`` when the node cannot be reached and ``EncodeError`` when the message
        has no Erlang form (nothing is sent then).
        """
        self._check_running()
        node, _ = self._resolve(dest)
        if node != self.node_atom:
            peer = self._peers.get(node)
            if peer is None or not peer.alive:
                await self._peer(node, timeout)
        sent = self._send_now(dest, message, sender)
        if sent is not None:
            await sent.drain()

    # ================================================================ calling Erlang

    def _name_atom(self, name: Any) -> Atom:
        """A module or function name as an Atom (cached, like node names)."""
        if not isinstance(name, str):
            return check_name(name)  # refuses it with the usual error
        atom = self._name_atoms.get(name)
        if atom is None:
            atom = check_name(name)
            if len(self._name_atoms) < 4096:
                self._name_atoms[name] = atom
        return atom

    def _node_atom(self, node: Any) -> Atom:
        """A node name as an Atom (cached: calls name the same few nodes again and again)."""
        atom = self._node_atoms.get(node)
        if atom is None:
            if isinstance(node, Atom) and "@" in node:
                return node
            atom = Atom(full_node_name(str(node)))
            if len(self._node_atoms) < 4096:
                self._node_atoms[node] = atom
        return atom

    async def rpc(self, node: str, module: str, function: str, args: Iterable[Any] = (),
                  timeout: float | None = 30.0) -> Any:
        """``erpc:call(Node, Module, Function, Args)``: the result, or a typed error.

        ``ErlangError`` (reason and stack), ``ErlangThrow``, ``ErlangExit``; ``NoConnection``
        when the node is unreachable or goes down during the call; ``Timeout`` after ``timeout``
        seconds (the remote process is then killed, as erpc does).
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def settle(ok: bool, value: Any) -> None:
            if not future.done():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

        req = self.begin_rpc(node, module, function, args, timeout, settle)
        try:
            return await future
        except asyncio.CancelledError:
            if req is not None:
                self._abandon_call(req)
            raise

    def begin_rpc(self, node: str, module: str, function: str, args: Iterable[Any],
                  timeout: float | None, done: Callable[[bool, Any], None]) -> Reference | None:
        """Start an rpc; ``done(ok, value_or_exception)`` is called once, on the loop.

        The callback form lets ``BlockingNode`` wait on a thread future without a task per call.
        Returns the request id when the request went out at once (connected peer).
        """
        try:
            self._check_running()
            target = self._node_atom(node)
            m, f, a = self._name_atom(module), self._name_atom(function), list(args)
        except Exception as error:
            done(False, error)
            return None
        peer = self._peers.get(target)
        if peer is not None and peer.alive and peer.flags & _SPAWN:
            try:
                return self._start_call(peer, m, f, a, timeout, done)
            except Exception as error:
                done(False, error)
                return None
        self._spawn_task(self._rpc_slow(target, m, f, a, timeout, done))
        return None

    def rpc_from_thread(self, node: str, module: str, function: str, args: Iterable[Any]
                        ) -> tuple[_Peer, Reference, Slot] | None:
        """Start an rpc from a thread other than the loop's, writing the request itself.

        ``None`` when the loop must do it (not connected, no SPAWN, bytes queued before ours).
        Otherwise the reply arrives through the loop into the returned waiter; the caller owns
        the deadline and hands an expired call to ``_call_timeout`` on the loop.
        """
        if self._closed or not self._started:
            return None
        target = self._node_atom(node)
        peer = self._peers.get(target)
        if peer is None or not peer.alive or peer.sock is None or not peer.flags & _SPAWN:
            return None
        m, f, a = self._name_atom(module), self._name_atom(function), list(args)
        assert self._group_leader is not None and self._caller_pid is not None
        # still this connection's reader from the last call: say so before the request goes out
        # (the loop's watchdog must not take reading back while the reply is on its way)
        leading = self._lead(peer, threading.get_ident())
        try:
            req = self.make_ref()
            tag = self.make_ref()
            try:
                data = peer.proto.send(spawn_request_unchecked(
                    req, self._caller_pid, self._group_leader.pid, ERPC, EXECUTE_CALL, [tag, m, f, a],
                    [MONITOR]))
            except LocalProtocolError:
                self._unlead(peer, leading)
                return None  # the connection is closing: the loop's path reports it
            waiter = Slot()
            self._calls[req] = _Call(peer.name, tag, waiter.fill, (m, f, len(a)), threaded=True)
            if not peer.write_from_thread(data):
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._write_for_thread, peer, data, req)
            if not peer.alive and self._calls.pop(req, None) is not None:
                raise NoConnection(peer.name, "connection closed")  # went down before it saw our call
            return peer, req, waiter
        except BaseException:
            self._unlead(peer, leading)
            raise

    @staticmethod
    def _unlead(peer: _Peer, leading: bool) -> None:
        if leading:
            with peer.olock:
                peer.active = False

    # ---------------------------------------------------------------- a caller reads for itself
    #
    # A blocking caller waiting for its reply may become the connection's reader ("owner"): the
    # loop pauses the transport's reading and wakes it, and from then on the caller polls and
    # reads the socket itself, applying rpc replies of blocking callers at once and handing every
    # other event to the loop, in order. That saves two thread wake-ups per call (loop thread, then
    # caller). The owner keeps the role across back-to-back calls; when it leaves, the loop takes
    # reading back unless the owner has already started its next call.

    def wait_from_thread(self, peer: _Peer, waiter: Slot, timeout: float | None) -> bool:
        """Wait (on a non-loop thread) for ``waiter``; False when ``timeout`` passed first."""
        loop = self._loop
        assert loop is not None
        me = threading.get_ident()
        deadline = None if timeout is None else time.monotonic() + timeout
        may_lead = peer.sock is not None
        peer.waiting[me] = waiter
        try:
            while waiter.ok is None:
                if may_lead and self._lead(peer, me):
                    try:
                        outcome = self._read_as_owner(peer, waiter, deadline)
                    finally:
                        with peer.olock:
                            peer.active = False
                    if outcome == "timeout":
                        return waiter.ok is not None
                    if outcome != "done":  # "broken" or "handed": the loop reads again
                        may_lead = False
                        loop.call_soon_threadsafe(self._maybe_revoke, peer)
                    continue
                if may_lead and peer.owner is None and peer.alive:
                    may_lead = False  # ask once per call
                    loop.call_soon_threadsafe(self._grant, peer, me, waiter)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if not waiter.wait(remaining):
                    return waiter.ok is not None
                if waiter.ok is None and peer.owner == me:
                    may_lead = True  # woken by a grant or a hand-over: read
            return True
        finally:
            peer.waiting.pop(me, None)
            if peer.owner == me:
                self._leave(peer, me, waiter.ok is not None)

    def _leave(self, peer: _Peer, me: int, served: bool) -> None:
        """The owner's wait is over: hand reading to another waiting blocking caller, else to the
        loop when replies are still due or this wait ran out (the thread goes off elsewhere),
        else keep it for this thread's next call."""
        with peer.olock:
            if peer.owner != me:
                return
            peer.active = False
            for ident, other in list(peer.waiting.items()):
                if ident != me and other.ok is None:
                    peer.owner = ident
                    other.wake()
                    return
        if self._calls or not served:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._maybe_revoke, peer)

    @staticmethod
    def _lead(peer: _Peer, me: int) -> bool:
        """Start reading as the owner: this thread's role, or taken over from another blocking
        thread that holds it but is not reading now (no hop to the loop; the order of events
        does not depend on which thread reads)."""
        with peer.olock:
            owner = peer.owner
            if peer.alive and (owner == me or (owner is not None and not peer.active)):
                peer.owner = me
                peer.active = True
                peer.leads += 1
                return True
            return False

    def _owner_watch(self, peer: _Peer, seen: int) -> None:
        """Loop: take reading back from an owner that has not read since the last look (it went
        off to do other work); an owner calling back to back keeps the role without a hop."""
        with peer.olock:
            if peer.owner is None:
                return
            if peer.active or peer.leads != seen:
                assert self._loop is not None
                self._loop.call_later(_OWNER_IDLE, self._owner_watch, peer, peer.leads)
                return
            peer.owner = None
        if peer.alive:
            peer.transport.resume_reading()

    def _grant(self, peer: _Peer, ident: int, waiter: Slot) -> None:
        """Loop: make a waiting blocking caller the connection's reader."""
        if not peer.alive or peer.owner is not None or waiter.ok is not None:
            return
        with peer.olock:
            peer.owner = ident
            peer.active = False
            seen = peer.leads
        peer.transport.pause_reading()
        # wake it one iteration later: a read the selector reported in this one still runs here
        assert self._loop is not None
        self._loop.call_soon(waiter.wake)
        self._loop.call_later(_OWNER_IDLE, self._owner_watch, peer, seen)

    def _maybe_revoke(self, peer: _Peer) -> None:
        """Loop: take reading back from an owner that is not reading now."""
        with peer.olock:
            if peer.owner is None or peer.active:
                return
            peer.owner = None
        if peer.alive:
            peer.transport.resume_reading()

    def _read_as_owner(self, peer: _Peer, waiter: Slot, deadline: float | None) -> str:
        """Read and apply packets until ``waiter`` is filled: "done", "timeout", "handed" (see
        ``_apply_as_owner``) or "broken"."""
        sock = peer.sock
        assert sock is not None
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
        except (OSError, ValueError):
            return "broken"
        spin_until: float | None = None
        while waiter.ok is None:
            if not peer.alive:
                return "broken"
            with peer.rlock:
                try:
                    data = sock.recv(1 << 18)
                except (BlockingIOError, InterruptedError):
                    data = None
                except (OSError, ValueError):
                    return "broken"
                if data is not None:
                    if not data:
                        return "broken"  # end of stream: the loop reads it again and closes
                    peer.last_recv = time.monotonic()
                    applied = self._apply_as_owner(peer, data)
                    if applied != "ok":
                        return applied
                    continue
            now = time.perf_counter()
            if spin_until is None:
                spin_until = now + _SPIN
            if now < spin_until:
                continue  # a reply is usually microseconds away: sleeping would cost a wake-up
            spin_until = None
            wait = 0.05
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return "timeout"
            try:
                poller.poll(wait * 1000)
            except (OSError, ValueError):
                return "broken"
        return "done"

    def _apply_as_owner(self, peer: _Peer, data: bytes) -> str:
        """Feed bytes read by the owner: "ok"; "handed" when some event went to the loop (the
        owner then stops reading: what it waits for may now come through the loop); "broken"
        when the peer broke the protocol."""
        proto = peer.proto
        loop = self._loop
        assert loop is not None
        proto.receive_data(data)
        caller = self._caller_pid
        calls = self._calls
        outcome = "ok"
        while True:
            try:
                event = proto.next_event()
            except RemoteProtocolError as error:
                loop.call_soon_threadsafe(self._owner_protocol_error, peer, error)
                return "broken"
            if event is NEED_DATA:
                return outcome
            kind = type(event)
            if kind is Tick:
                continue
            if peer.posted_n == peer.processed:  # nothing handed over is pending: order holds
                if kind is MonitorPExit and event.to_pid == caller:
                    call = calls.get(event.ref)
                    if call is not None and call.threaded:
                        self._call_down(event.ref, event.reason)
                        continue
                elif kind is SpawnReply and event.to_pid == caller:
                    call = calls.get(event.req_id)
                    if call is not None and call.threaded:
                        self._call_spawned(event.req_id, event.result)
                        continue
                elif kind is Send or kind is SendSender or kind is RegSend:
                    # a message for a plain mailbox: delivered here unless an async receive
                    # waits on it (services such as rex run on the loop)
                    box = (self._local(event.to_pid) if kind is not RegSend
                           else self._names.get(event.to_name))
                    if type(box) is Mailbox and box.deliver_from_thread(event.message):
                        continue
            peer.posted_n = next(peer.posted)
            loop.call_soon_threadsafe(self._dispatch_from_owner, peer, event)
            outcome = "handed"

    def _dispatch_from_owner(self, peer: _Peer, event: Any) -> None:
        peer.processed += 1
        if not peer.alive:
            return
        try:
            self._dispatch(peer, event)
        except Exception:
            log.exception("error handling %r from %s", type(event).__name__, peer.name)

    def _owner_protocol_error(self, peer: _Peer, error: RemoteProtocolError) -> None:
        log.warning("closing connection to %s: %s", peer.name, error)
        self._peer_down(peer, f"protocol error: {error}")

    def _write_for_thread(self, peer: _Peer, data: bytes, req: Reference) -> None:
        if peer.alive:
            peer.write(data)
        else:
            self._finish_call(req, False, NoConnection(peer.name, "connection closed"))

    def send_from_thread(self, dest: Any, message: Any, sender: Mailbox | None) -> _Peer | None:
        """``send`` from a thread other than the loop's, written directly when the destination's
        node is connected and nothing is queued: the connection it went out on; None: the loop
        must do it."""
        if self._closed or not self._started:
            return None
        node, target = self._resolve(dest)
        if node == self.node_atom:
            return None
        peer = self._peers.get(node)
        if peer is None or not peer.alive or peer.sock is None:
            return None
        source = sender or self._anon
        assert source is not None
        if isinstance(target, Pid):
            msg: ControlMessage = Send(target, message, source.pid)
        elif isinstance(target, Reference):
            msg = AliasSend(source.pid, target, message)
        else:
            msg = RegSend(source.pid, target, message)
        try:
            data = peer.proto.send(msg)
        except LocalProtocolError:
            return None
        return peer if peer.write_from_thread(data) else None

    async def _rpc_slow(self, target: Atom, m: Atom, f: Atom, a: list[Any], timeout: float | None,
                        done: Callable[[bool, Any], None]) -> None:
        """Connect first (or use rex for peers without SPAWN), then call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            peer = await self._peer(target, timeout)
            if not peer.flags & Flag.SPAWN:
                done(True, await self._rex_call(target, m, f, a, deadline))
                return
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            self._start_call(peer, m, f, a, remaining, done)
        except asyncio.CancelledError:
            done(False, NoConnection(target, "node closed"))
            raise
        except Exception as error:
            done(False, error)

    def _start_call(self, peer: _Peer, m: Atom, f: Atom, a: list[Any], timeout: float | None,
                    done: Callable[[bool, Any], None]) -> Reference:
        req = self.make_ref()
        tag = self.make_ref()
        assert self._group_leader is not None and self._caller_pid is not None
        peer.send(spawn_request_unchecked(req, self._caller_pid, self._group_leader.pid, ERPC,
                                          EXECUTE_CALL, [tag, m, f, a], [MONITOR]))
        call = _Call(peer.name, tag, done, (m, f, len(a)))
        self._calls[req] = call
        if timeout is not None:
            assert self._loop is not None
            call.timer = self._loop.call_later(timeout, self._call_timeout, req, timeout)
        return req

    def _finish_call(self, req: Reference, ok: bool, value: Any) -> None:
        call = self._calls.pop(req, None)
        if call is None:
            return
        if call.timer is not None:
            call.timer.cancel()
        call.done(ok, value)

    def _call_spawned(self, req: Reference, result: Any) -> None:
        call = self._calls.get(req)
        if call is None:
            return
        if isinstance(result, Pid):
            call.spawned = result
        else:
            self._finish_call(req, False, ErlangError((ERPC, result)))

    def _call_down(self, req: Reference, reason: Any) -> None:
        call = self._calls.get(req)
        if call is None:
            return
        try:
            value = _erpc_result(call.node, call.tag, reason)
        except Exception as error:
            self._finish_call(req, False, error)
        else:
            self._finish_call(req, True, value)

    def _call_timeout(self, req: Reference, timeout: float) -> None:
        call = self._calls.get(req)
        if call is None:
            return
        self._abandon_call(req)
        m, f, arity = call.label
        call.done(False, Timeout(f"rpc {m}:{f}/{arity} on {call.node} timed out after {timeout} s"))

    def _abandon_call(self, req: Reference) -> None:
        """Forget a call and kill its remote process, as erpc does on timeout."""
        call = self._calls.pop(req, None)
        if call is None:
            return
        if call.timer is not None:
            call.timer.cancel()
        if call.spawned is not None and self._caller_pid is not None:
            self._signal_now(call.node, Exit2(self._caller_pid, call.spawned, KILL))

    async def _rex_call(self, node: Atom, m: Atom, f: Atom, a: list[Any], deadline: float | None) -> Any:
        """Old-style rpc through ``rex`` for peers without SPAWN (erl_interface nodes)."""
        assert self._group_leader is not None
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        result = await self.gen_call((REX, node), (CALL, m, f, a, self._group_leader.pid), remaining)
        if type(result) is tuple and len(result) == 2 and result[0] == BADRPC:
            reason = result[1]
            if reason == _A("nodedown"):
                raise NoConnection(node, "nodedown")
            if type(reason) is tuple and len(reason) == 2 and reason[0] == EXIT_TAG:
                inner = reason[1]
                if type(inner) is tuple and len(inner) == 2 and isinstance(inner[1], list):
                    raise ErlangError(inner[0], inner[1])
                raise ErlangExit(inner)
            raise ErlangError((BADRPC, reason))
        return result

    async def gen_call(self, dest: Any, request: Any, timeout: float | None = 5.0) -> Any:
        """``gen_server:call(Dest, Request)``: the reply; ``ErlangExit`` if the server is gone."""
        self._check_running()
        deadline = None if timeout is None else time.monotonic() + timeout
        mailbox = self._new_mailbox(None, trap_exits=True)
        try:
            node, target = self._resolve(dest)
            if node != self.node_atom:  # connecting is part of the call: within its timeout
                await self._peer(node, timeout)
            ref = await self._monitor(mailbox, target if isinstance(target, Pid) else (target, node))
            await self.send(dest, (GEN_CALL, (mailbox.pid, ref), request), sender=mailbox)
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)

            def is_answer(msg: Any) -> bool:
                return type(msg) is tuple and (
                    (len(msg) == 2 and msg[0] == ref) or (len(msg) == 5 and msg[0] == DOWN and msg[1] == ref))

            try:
                reply = await mailbox.receive(left, is_answer)
            except Timeout:
                raise Timeout(f"gen_call to {dest!r} timed out after {timeout} s") from None
            if len(reply) == 2:
                return reply[1]
            if reply[4] == NOCONNECTION:
                raise NoConnection(node, f"while calling {dest!r}")
            raise ErlangExit(reply[4])
        finally:
            mailbox.close()

    async def gen_cast(self, dest: Any, request: Any) -> None:
        """``gen_server:cast(Dest, Request)``."""
        await self.send(dest, (GEN_CAST, request))

    async def ping(self, node: str, timeout: float = 5.0) -> bool:
        """``net_adm:ping``: True (pong) when the node answers, False (pang) otherwise."""
        try:
            target = Atom(full_node_name(node))
            answer = await self.gen_call((NET_KERNEL, target), (_A("is_auth"), self.node_atom), timeout)
        except (NoConnection, Timeout, HandshakeFailed, RemoteError_):
            return False
        return bool(answer == _A("yes"))

    # ================================================================ Erlang calling us

    def expose(self, module: str, functions: Any, *, inline: bool = False) -> None:
        """Make Python callables callable from Erlang as ``Module:Function(Args...)``.

        ``functions`` is a mapping name -> callable or an iterable of named callables (exactly
        those), a Python module (its ``__all__`` when it has one, else the public functions it
        defines itself: never what it imported, such as ``subprocess.getoutput``), or an object
        (the public methods defined in its class's own bodies: not instance attributes, not what
        ``object`` or a built-in base class brings; for a class, its static and class methods).
        Coroutine functions run on the node's loop; plain ones run in a worker thread
        (``inline=True`` runs them on the loop: fast, but they must not block). Erlang reaches
        them with ``rpc:call``, ``erpc:call``, ``erl_call``; anything else is ``undef``.
        """
        table: dict[Atom, tuple[Callable[..., Any], bool]] = {}
        if isinstance(functions, AbcMapping):
            items = list(functions.items())
        elif isinstance(functions, types.ModuleType):
            items = _module_functions(functions)
        elif isinstance(functions, Iterable) and not isinstance(functions, (str, bytes, type)):
            items = [(getattr(fn, "__name__", ""), fn) for fn in functions]
        else:
            items = _object_methods(functions)
        for fname, fn in items:
            if not callable(fn):
                raise UsageError(f"{module}:{fname} is not callable")
            table[check_name(fname)] = (fn, inline)
        self._exposed.setdefault(check_name(module), {}).update(table)

    async def _invoke(self, module: Atom, function: Atom, args: list[Any]) -> Any:
        entry = self._exposed.get(module, {}).get(function)
        if entry is None or not isinstance(args, list):
            raise _Undefined()
        fn, inline = entry
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        if inline:
            result = fn(*args)
        else:
            result = await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args))
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _outcome(self, module: Atom, function: Atom, args: Any) -> tuple[str, Any, Any]:
        """Run an exposed function: ``('return', value, None)``, ``('error', reason, stack)``..."""
        try:
            return "return", await self._invoke(module, function, args), None
        except _Undefined:
            arity = args if isinstance(args, list) else 0
            return "error", UNDEF, [(module, function, arity, [])]
        except asyncio.CancelledError:
            raise
        except RemoteError_ as error:  # an Erlang-style error raised on purpose keeps its form
            return error.kind, error.reason, error.stack or []
        except Exception as error:
            arity = len(args) if isinstance(args, list) else 0
            stack = [*_PythonError.stack(error), (module, function, arity, [])]
            return "error", _PythonError.reason(error), stack

    def _on_spawn_request(self, peer: _Peer, event: SpawnRequest) -> None:
        if self._closed:
            peer.send_quiet(SpawnReply(event.req_id, event.from_pid, 0, _A("notsup")))
            return
        process = Mailbox(self, self._next_pid(), None, trap_exits=False)
        self._procs[process.pid.id] = process
        flags = 0
        for option in event.options:
            if option == LINK:
                process.links.add(event.from_pid)
                flags |= 1
            elif option == MONITOR:
                process.monitors_in[event.req_id] = (event.from_pid, process.pid)
                flags |= 2
        peer.send_quiet(SpawnReply(event.req_id, event.from_pid, flags, process.pid))
        task = self._spawn_task(self._run_spawned(process, event))
        self._spawned[process.pid.id] = task

    async def _run_spawned(self, process: Mailbox, event: SpawnRequest) -> None:
        m, f, args = event.module, event.function, event.args
        waiter = self._spawn_task(process.receive(None, lambda _: False))  # wakes when killed
        waiter.add_done_callback(_consume_exception)
        try:
            if m == ERPC and f == EXECUTE_CALL and len(args) == 4:
                work = self._spawn_task(self._outcome(args[1], args[2], args[3]))
                done, _ = await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if work not in done:
                    work.cancel()
                    return
                kind, value, stack = work.result()
                tag = args[0]
                if kind == "return":
                    reason: Any = (tag, RETURN, value)
                elif kind == "error":
                    reason = (tag, ERROR, value, stack)
                else:
                    reason = (tag, Atom(kind), value)
                self._finish(process, reason, tag)
            else:
                if m == ERPC and f == EXECUTE_CAST and len(args) == 3:
                    m, f, args = args[0], args[1], args[2]
                work = self._spawn_task(self._outcome(m, f, args))
                done, _ = await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if work not in done:
                    work.cancel()
                    return
                kind, value, stack = work.result()
                if kind == "return":
                    self._finish(process, NORMAL, None)
                else:
                    self._finish(process, (value, stack) if kind == "error" else value, None)
        finally:
            waiter.cancel()
            self._spawned.pop(process.pid.id, None)
            if process.closed is None:
                process.close(KILL)

    def _finish(self, process: Mailbox, reason: Any, tag: Any) -> None:
        """End a spawned process; a result with no Erlang form becomes an error reason."""
        try:
            encode_body(reason, mapping=self.mapping)
        except EncodeError as error:
            python_reason = (Atom("python"), Atom("EncodeError"), str(error).encode())
            reason = (tag, ERROR, python_reason, []) if tag is not None else python_reason
        process.close(reason)

    # ================================================================ EPMD helpers

    async def names(self, host: str | None = None, timeout: float = 5.0) -> list[tuple[str, int]]:
        """What EPMD on ``host`` (default: ours) has registered: ``[(name, port), ...]``."""
        return await _epmd_client.names(host or self.epmd_host, self.epmd_port, timeout)

    def _sockets(self) -> list[socket.socket]:
        """Every socket this node holds (the fork handling releases them in a child)."""
        found: list[Any] = []
        if self._listener is not None:
            found.append(self._listener)
        found += list(self._handshaking)
        writers = [self._epmd_writer] + [p.writer for p in self._peers.values()]
        for writer in writers:
            if writer is not None:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    found.append(sock)
        return found


def _tls_reason(error: ssl.SSLError) -> str:
    """What went wrong in a TLS handshake, in OpenSSL's words (a failed verification names
    its cause: unknown CA, expired, hostname mismatch)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the peer's certificate was refused: {error.verify_message}"
    return f"TLS handshake failed: {error.reason or error}"


def _listen(host: str, ports: tuple[int, int] | None = None) -> socket.socket:
    """A non-blocking listening socket on ``host`` and a free port, the first free one of
    ``ports`` (``low``, ``high``) when given, as Erlang's ``inet_dist_listen_min/max`` (the loop
    does not own it: the node accepts itself, so it can refuse a connection before building
    anything for it)."""
    low, high = ports or (0, 0)
    for port in range(low, high + 1):
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(_LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            if error.errno != errno.EADDRINUSE or port == high:
                if error.errno == errno.EADDRINUSE:
                    raise UsageError(f"no free port in listen_ports {low}..{high} on {host}") from None
                raise
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise AssertionError("unreachable")


class _Throttle:
    """Warnings an attacker can trigger at will, at most one per ``interval`` seconds per kind
    (with a count of the ones left out): a flood must not become a flood of log lines."""

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._skipped: collections.Counter[str] = collections.Counter()

    def warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self._interval) < self._interval:
            self._skipped[kind] += 1
            log.debug(message, *args)
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += " (and %d more like it since the last such warning)"
            args = (*args, skipped)
        self._log.warning(message, *args)


def _module_functions(module: types.ModuleType) -> list[tuple[str, Callable[..., Any]]]:
    """What a module offers: its ``__all__`` (the author's list, re-exports included), else the
    public functions whose ``__module__`` is this one; classes are left out either way (calling
    one from Erlang would build an object Erlang cannot receive)."""
    names = getattr(module, "__all__", None)
    if names is not None:
        found = [(str(n), getattr(module, str(n), None)) for n in names]
        return [(n, fn) for n, fn in found if callable(fn) and not isinstance(fn, type)]
    return [(n, fn) for n, fn in vars(module).items()
            if not n.startswith("_") and callable(fn) and not isinstance(fn, type)
            and getattr(fn, "__module__", None) == module.__name__]


def _object_methods(obj: object) -> list[tuple[str, Callable[..., Any]]]:
    """The public methods an object's classes define in their own bodies (``__qualname__``
    under the class's): an attribute set on the instance, or a function assigned into a class
    body from elsewhere, is not one; nor is anything of ``object`` or a built-in base. For a
    class, only its static and class methods (a plain method would need an instance)."""
    is_class = isinstance(obj, type)
    cls: type = obj if isinstance(obj, type) else type(obj)
    seen: set[str] = set()
    found: list[tuple[str, Callable[..., Any]]] = []
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)  # a subclass's attribute of that name hides the base's
            plain = isinstance(value, types.FunctionType)
            if is_class and plain:
                continue
            func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if not isinstance(func, types.FunctionType):
                continue
            if not func.__qualname__.startswith(klass.__qualname__ + "."):
                continue
            # bound from the class: an instance attribute of the same name does not replace it
            found.append((name, value.__get__(None if is_class else obj, cls)))
    return found


def _monitored(target: Pid | Atom, node: Atom) -> Pid | tuple[Atom, Atom]:
    """The fourth element of a DOWN message: the pid, or ``(Name, Node)`` for a monitor set on
    a registered name (local names too), as ``erlang:monitor/2`` reports them."""
    return target if isinstance(target, Pid) else (target, node)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _erpc_result(node: Atom, tag: Reference, reason: Any) -> Any:
    """Map the exit reason of ``erpc:execute_call`` (seen in a DOWN message) to a result."""
    if type(reason) is tuple and len(reason) >= 3 and reason[0] == tag:
        kind = reason[1]
        if kind == RETURN:
            return reason[2]
        if kind == THROW:
            raise ErlangThrow(reason[2])
        if kind == EXIT_A:
            raise ErlangExit(reason[2])
        if kind == ERROR:
            raise ErlangError(reason[2], reason[3] if len(reason) == 4 else None)
    if reason == NOCONNECTION:
        raise NoConnection(node, "connection lost during the call")
    raise ErlangExit((_A("signal"), reason))


class _Service(Mailbox):
    """A built-in process that handles its messages as they arrive (no queue)."""

    def __init__(self, node: Node, pid: Pid, name: Atom | None = None) -> None:
        super().__init__(node, pid, name, trap_exits=True)

    def deliver(self, message: Any) -> None:
        try:
            self.handle(message)
        except (EncodeError, NoConnection, MailboxClosed) as error:
            log.debug("%s could not answer %r: %s", self.name, message, error)

    def handle(self, message: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reply(self, to: Any, message: Any) -> None:
        """Send without waiting: a reply goes back on the connection the request came on."""
        node = self.node
        if isinstance(to, ImproperList) and to.items and to.items[0] == _A("alias") and isinstance(
                to.tail, Reference):
            node._signal_now(to.tail.node, AliasSend(self.pid, to.tail, message))
            return
        if isinstance(to, Pid):
            node._signal_now(to.node, Send(to, message, self.pid))

    def gen_reply(self, sender: Any, reply: Any) -> None:
        """Answer a ``'$gen_call'`` ``From`` (``{Pid, Tag}``; Tag may be an alias)."""
        if type(sender) is not tuple or len(sender) != 2:
            return
        pid, tag = sender
        node = self.node
        if (isinstance(tag, ImproperList) and tag.items and tag.items[0] == _A("alias")
                and isinstance(tag.tail, Reference)):
            peer = node._peers.get(pid.node) if isinstance(pid, Pid) else None
            if peer is not None and peer.flags & Flag.ALIAS:
                node._signal_now(pid.node, AliasSend(self.pid, tag.tail, (tag, reply)))
                return
        if isinstance(pid, Pid):
            node._signal_now(pid.node, Send(pid, (tag, reply), self.pid))


class _Rex(_Service):
    """The ``rex`` server: old-style rpc (``{call,M,F,A,GL}``, as erl_call and Jinterface send,
    plain or through ``gen_server:call``) and ``features_request``."""

    def handle(self, message: Any) -> None:
        if type(message) is not tuple:
            return
        if len(message) == 2 and isinstance(message[0], Pid):
            sender, request = message
            if request == _A("features_request"):
                self.reply(sender, (_A("features_reply"), self.node.node_atom, [ERPC]))
            elif _is_call(request):
                self.node._spawn_task(self._answer(request, lambda r: self.reply(sender, (REX, r))))
        elif len(message) == 3 and message[0] == GEN_CALL and _is_call(message[2]):
            sender = message[1]
            self.node._spawn_task(self._answer(message[2], lambda r: self.gen_reply(sender, r)))

    async def _answer(self, request: tuple[Any, ...], reply: Callable[[Any], None]) -> None:
        _, m, f, a = request[:4]
        kind, value, stack = await self.node._outcome(m, f, a)
        if kind == "return" or kind == "throw":
            result = value
        elif kind == "exit":
            result = (BADRPC, (EXIT_TAG, value))
        else:
            result = (BADRPC, (EXIT_TAG, (value, stack)))
        try:
            reply(result)
        except EncodeError as error:
            reply((BADRPC, (EXIT_TAG, ((Atom("python"), Atom("EncodeError"), str(error).encode()), []))))


def _is_call(request: Any) -> bool:
    return (type(request) is tuple and len(request) == 5 and request[0] in (CALL, _A("block_call"))
            and isinstance(request[1], Atom) and isinstance(request[2], Atom))


class _Sink(_Service):
    """The sender of messages sent with no mailbox; what comes back to it is dropped."""

    def handle(self, message: Any) -> None:
        log.debug("message to the node's anonymous sender dropped: %.200r", message)


class _NetKernel(_Service):
    """Enough of ``net_kernel`` to answer ``net_adm:ping`` (``{is_auth, Node}`` -> ``yes``)."""

    def handle(self, message: Any) -> None:
        if type(message) is tuple and len(message) == 3 and message[0] == GEN_CALL:
            request = message[2]
            if type(request) is tuple and len(request) == 2 and request[0] == _A("is_auth"):
                self.gen_reply(message[1], _A("yes"))


class _GroupLeader(_Service):
    """The group leader of what we spawn remotely: io requests are logged and answered ``ok``."""

    def handle(self, message: Any) -> None:
        if type(message) is not tuple or len(message) != 4 or message[0] != _A("io_request"):
            return
        _, sender, reply_as, request = message
        text = _io_text(request)
        if text is not None:
            io_log.info("%s", text.rstrip("\n"))
            answer: Any = OK
        else:
            answer = (ERROR, _A("enotsup"))
        self.reply(sender, (_A("io_reply"), reply_as, answer))


def _io_text(request: Any) -> str | None:
    if type(request) is not tuple or not request or request[0] != _A("put_chars"):
        return None
    chars = request[-1]
    if isinstance(chars, bytes):
        return chars.decode("utf-8", "replace")
    if isinstance(chars, list):
        try:
            return "".join(chr(c) if isinstance(c, int) else (c.decode("utf-8", "replace")
                           if isinstance(c, bytes) else "") for c in chars)
        except (TypeError, ValueError):
            return None
    if isinstance(chars, str):
        return chars
    return "<formatted output>"
