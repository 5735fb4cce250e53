"""The sans-IO distribution core, fed whole, one byte at a time, with trailing data and garbage."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest

from beambridge.protocol import (
    DIST_LIMITS,
    NEED_DATA,
    AliasSend,
    BadCookie,
    Connected,
    Connection,
    ConnectionClosed,
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
    State,
    StatusReceived,
    Tick,
    Unlink,
    UnlinkId,
    UnlinkIdAck,
    epmd,
    missing_mandatory,
)
from beambridge.protocol._connection import MAX_HANDSHAKE_MESSAGE
from beambridge.protocol._flags import DEFAULT_FLAGS, MANDATORY_25, MANDATORY_26
from beambridge.term import Atom, Limits, Pid, Reference, term_to_binary

A = "a@host"
B = "b@host"
PA = Pid(Atom(A), 1, 0, 7)
PB = Pid(Atom(B), 2, 0, 9)
REF = Reference(Atom(A), 7, (1, 2, 3))


def drain(conn: Connection) -> list[Any]:
    events = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or isinstance(event, ConnectionClosed):
            return events
        events.append(event)


def feed(conn: Connection, data: bytes, bytewise: bool) -> list[Any]:
    events: list[Any] = []
    if bytewise:
        for i in range(len(data)):
            conn.receive_data(data[i:i + 1])
            events += drain(conn)
    else:
        conn.receive_data(data)
        events += drain(conn)
    return events


def handshake(bytewise: bool = False, cookie_b: str = "secret", status: str = "ok",
              flags_b: int = DEFAULT_FLAGS) -> tuple[Connection, Connection]:
    a = Connection(Role.INITIATOR, this_node=A, cookie="secret", creation=7, peer_node=B)
    b = Connection(Role.ACCEPTOR, this_node=B, cookie=cookie_b, creation=9, flags=flags_b)
    events = feed(b, a.start(), bytewise)
    assert events == [NameReceived(A, DEFAULT_FLAGS, 7)]
    events = feed(a, b.accept_name(status), bytewise)
    assert events == [StatusReceived(status)]
    # the status and the challenge came together: a's challenge reply is waiting
    return a, b


def complete(a: Connection, b: Connection, bytewise: bool = False) -> None:
    ev_b = feed(b, a.data_to_send(), bytewise)          # reply -> b acks
    assert ev_b == [Connected(A, DEFAULT_FLAGS, a.creation)]
    ev_a = feed(a, b.data_to_send(), bytewise)
    assert ev_a == [Connected(B, b.flags, b.creation)]
    assert a.state is State.CONNECTED and b.state is State.CONNECTED


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_handshake_both_sides(bytewise: bool) -> None:
    a, b = handshake(bytewise)
    complete(a, b, bytewise)
    assert a.peer_creation == 9 and b.peer_creation == 7


def test_handshake_ok_simultaneous() -> None:
    a, b = handshake(status="ok_simultaneous")
    complete(a, b)


@pytest.mark.parametrize("status", ["nok", "not_allowed"])
def test_handshake_refused(status: str) -> None:
    a = Connection(Role.INITIATOR, this_node=A, cookie="c", creation=1, peer_node=B)
    b = Connection(Role.ACCEPTOR, this_node=B, cookie="c", creation=2)
    b.receive_data(a.start())
    assert isinstance(b.next_event(), NameReceived)
    a.receive_data(b.accept_name(status))
    assert b.state is State.CLOSED
    with pytest.raises(HandshakeFailed) as info:
        a.next_event()
    assert info.value.reason == status
    assert a.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        a.next_event()


@pytest.mark.parametrize("keep", [True, False])
def test_handshake_alive(keep: bool) -> None:
    a = Connection(Role.INITIATOR, this_node=A, cookie="c", creation=1, peer_node=B)
    b = Connection(Role.ACCEPTOR, this_node=B, cookie="c", creation=2)
    b.receive_data(a.start())
    b.next_event()
    a.receive_data(b.accept_name("alive"))
    assert a.next_event() == StatusReceived("alive")
    assert a.next_event() is NEED_DATA
    b.receive_data(a.answer_alive(keep))
    if keep:
        assert b.next_event() is NEED_DATA
        a.receive_data(b.data_to_send())
        assert a.next_event() is NEED_DATA
        complete(a, b)
    else:
        with pytest.raises(HandshakeFailed):
            b.next_event()


def test_wrong_cookie_detected_by_acceptor_and_initiator_sees_close() -> None:
    a, b = handshake(cookie_b="other")
    b.receive_data(a.data_to_send())
    with pytest.raises(BadCookie):
        b.next_event()
    a.receive_data(b"")
    with pytest.raises(HandshakeFailed, match="cookies probably differ"):
        a.next_event()


def test_wrong_cookie_detected_by_initiator() -> None:
    a, b = handshake()
    reply = a.data_to_send()
    b.receive_data(reply)
    b.next_event()
    ack = b.data_to_send()
    a._cookie = b"changed"  # the ack now fails a's check
    a.receive_data(ack)
    with pytest.raises(BadCookie):
        a.next_event()


def test_missing_mandatory_flags_refused() -> None:
    assert missing_mandatory(int(MANDATORY_25)) == Flag(0)
    assert missing_mandatory(int(Flag.MANDATORY_25_DIGEST)) == Flag(0)
    assert missing_mandatory(0) == MANDATORY_25
    assert DEFAULT_FLAGS & MANDATORY_26 == MANDATORY_26
    assert DEFAULT_FLAGS & Flag.MANDATORY_25_DIGEST
    a = Connection(Role.INITIATOR, this_node=A, cookie="c", creation=1, peer_node=B, flags=Flag.UTF8_ATOMS)
    b = Connection(Role.ACCEPTOR, this_node=B, cookie="c", creation=2)
    b.receive_data(a.start())
    with pytest.raises(HandshakeFailed, match="mandatory"):
        b.next_event()


def test_peer_closing_mid_handshake() -> None:
    b = Connection(Role.ACCEPTOR, this_node=B, cookie="c", creation=2)
    b.receive_data(b"\x00\x10N\x00")
    b.receive_data(b"")
    with pytest.raises(HandshakeFailed, match="closed"):
        b.next_event()


@pytest.mark.parametrize("role", [Role.ACCEPTOR, Role.INITIATOR])
def test_handshake_messages_are_bounded_small(role: Role) -> None:
    """A handshake length over the limit is refused from its 2-byte prefix, before buffering."""
    conn = Connection(role, this_node=B, cookie="c", creation=2, peer_node=A)
    if role is Role.INITIATOR:
        conn.start()
    conn.receive_data(struct.pack(">H", MAX_HANDSHAKE_MESSAGE + 1))
    with pytest.raises(RemoteProtocolError, match="handshake message limit"):
        conn.next_event()
    assert conn.state is State.ERROR and conn._buf == b""


def test_handshake_name_longer_than_an_atom_is_refused() -> None:
    b = Connection(Role.ACCEPTOR, this_node=B, cookie="c", creation=2)
    name = ("x" * 300 + "@host").encode()
    message = b"N" + struct.pack(">QIH", DEFAULT_FLAGS, 1, len(name)) + name
    b.receive_data(struct.pack(">H", len(message)) + message)
    with pytest.raises(RemoteProtocolError, match="255"):
        b.next_event()
    # the longest legal name (255 characters, 4 bytes each) fits the handshake limit
    long_name = "\U0001f600" * 250 + "@host"
    a = Connection(Role.INITIATOR, this_node=long_name, cookie="c", creation=1, peer_node=B)
    b = Connection(Role.ACCEPTOR, this_node=B, cookie="c", creation=2)
    b.receive_data(a.start())
    assert b.next_event() == NameReceived(long_name, DEFAULT_FLAGS, 1)


def test_atom_cache_refs_follow_a_replaced_slot() -> None:
    """Headers that only refer to cached atoms may be remembered; a header that stores a new
    atom in a slot must make the same reference bytes resolve to the new atom afterwards."""
    _, b = connected_pair()
    body = b"h\x04a\x06" + term_to_binary(PA)[1:] + b"R\x00R\x01" + b"R\x01"
    cached = header_frame([(0, 5, None), (3, 200, None)], body)
    frames = [header_frame([(0, 5, ""), (3, 200, "rex")], body), cached, cached,
              header_frame([(0, 5, ""), (3, 200, "other")], body), cached]
    events = feed(b, b"".join(frames), False)
    assert events == [RegSend(PA, Atom("rex"), Atom("rex"))] * 3 + [
        RegSend(PA, Atom("other"), Atom("other"))] * 2


@pytest.mark.parametrize("garbage", [b"\x00\x03xyz", b"\x00\x01N", b"\x00\x00", b"\xff\xffGET / HTTP/1.1"])
def test_handshake_garbage(garbage: bytes) -> None:
    b = Connection(Role.ACCEPTOR, this_node=B, cookie="c", creation=2)
    b.receive_data(garbage)
    try:
        event = b.next_event()
    except RemoteProtocolError:
        assert b.state is State.ERROR
        with pytest.raises(LocalProtocolError):
            b.receive_data(b"x")
    else:
        assert event is NEED_DATA  # an incomplete message: waits for more


def connected_pair(**kwargs: Any) -> tuple[Connection, Connection]:
    a = Connection(Role.INITIATOR, this_node=A, cookie="s", creation=7, peer_node=B, **kwargs)
    b = Connection(Role.ACCEPTOR, this_node=B, cookie="s", creation=9, **kwargs)
    b.receive_data(a.start())
    b.next_event()
    a.receive_data(b.accept_name("ok"))
    a.next_event()
    a.next_event()
    b.receive_data(a.data_to_send())
    assert isinstance(b.next_event(), Connected)
    a.receive_data(b.data_to_send())
    assert isinstance(a.next_event(), Connected)
    return a, b


ALL_MESSAGES: list[ControlMessage] = [
    Link(PA, PB),
    Send(PB, {b"k": [1, 2.5, b"bin"]}),
    Send(PB, (Atom("hello"), 1), from_pid=PA),
    Send(PB, 1, trace_token=Atom("tok")),
    SendSender(PA, PB, [1, 2, 3]),
    RegSend(PA, Atom("rex"), (PA, Atom("features_request"))),
    RegSend(PA, Atom("rex"), 5, trace_token=3),
    Exit(PA, PB, Atom("normal")),
    Exit(PA, PB, (Atom("shutdown"), 1), trace_token=Atom("t")),
    Exit2(PA, PB, Atom("kill")),
    Exit2(PA, PB, Atom("kill"), trace_token=1),
    Unlink(PA, PB),
    NodeLink(),
    GroupLeader(PA, PB),
    MonitorP(PA, PB, REF),
    MonitorP(PA, Atom("named"), REF),
    DemonitorP(PA, PB, REF),
    MonitorPExit(PB, PA, REF, Atom("noproc")),
    MonitorPExit(Atom("named"), PA, REF, Atom("noproc")),
    SpawnRequest(REF, PA, PA, Atom("erpc"), Atom("execute_call"), [REF, Atom("m"), Atom("f"), []],
                 [Atom("monitor")]),
    SpawnRequest(REF, PA, PA, Atom("m"), Atom("f"), [], [], trace_token=2),
    SpawnReply(REF, PA, 2, PB),
    SpawnReply(REF, PA, 0, Atom("badopt"), trace_token=1),
    AliasSend(PA, REF, Atom("hi")),
    AliasSend(PA, REF, Atom("hi"), trace_token=1),
    UnlinkId(5, PA, PB),
    UnlinkIdAck(5, PB, PA),
]


def expected(msg: ControlMessage) -> ControlMessage:
    if isinstance(msg, Send) and msg.from_pid is not None:
        return SendSender(msg.from_pid, msg.to_pid, msg.message, msg.trace_token)
    return msg


@pytest.mark.parametrize("header", [True, False], ids=["dist-header", "pass-through"])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_every_control_message_round_trips(header: bool, bytewise: bool) -> None:
    flags = DEFAULT_FLAGS if header else DEFAULT_FLAGS & ~Flag.DIST_HDR_ATOM_CACHE
    a, b = connected_pair(flags=flags)
    wire = b"".join(a.send(m) for m in ALL_MESSAGES) + a.tick()
    if not header:
        assert wire[4:5] == b"p"
    events = feed(b, wire, bytewise)
    assert events == [expected(m) for m in ALL_MESSAGES] + [Tick()]


def test_exit_payload_forms_follow_peer_flags() -> None:
    a, b = connected_pair(flags=DEFAULT_FLAGS & ~Flag.EXIT_PAYLOAD & ~Flag.SEND_SENDER)
    for msg in (Exit(PA, PB, 1), Exit2(PA, PB, 2), MonitorPExit(PA, PB, REF, 3), Send(PB, 1, PA)):
        control, _ = msg.to_wire(a.peer_flags)
        assert control[0] in (3, 8, 21, 2)
        b.receive_data(a.send(msg))
        got = b.next_event()
        assert got == (Send(PB, 1) if isinstance(msg, Send) else msg)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_fragmented_send_and_reassembly(bytewise: bool) -> None:
    a, b = connected_pair(fragment_size=100)
    big = bytes(range(256)) * 10
    wire = a.send(Send(PB, big, PA)) + a.send(Send(PB, Atom("after")))
    assert wire.count(b"\x83F") >= 20
    events = feed(b, wire, bytewise and False) if not bytewise else feed(b, wire[:5000], True) + feed(
        b, wire[5000:], False)
    assert events == [SendSender(PA, PB, big), Send(PB, Atom("after"))]


def test_fragment_out_of_order_is_a_protocol_error() -> None:
    a, b = connected_pair(fragment_size=100)
    wire = a.send(Send(PB, bytes(1000)))
    first_len = struct.unpack(">I", wire[:4])[0]
    second = wire[4 + first_len:]
    b.receive_data(second)
    with pytest.raises(RemoteProtocolError, match="fragment"):
        b.next_event()


def first_fragment(sequence: int, count: int, chunk: bytes) -> bytes:
    frame = b"\x83E" + struct.pack(">QQ", sequence, count) + b"\x00" + chunk
    return struct.pack(">I", len(frame)) + frame


def test_unfinished_fragments_are_bounded_in_bytes_and_released() -> None:
    _, b = connected_pair(max_fragmented_bytes=10_000)
    chunk = bytes(3000)
    b.receive_data(b"".join(first_fragment(seq, 5, chunk) for seq in (1, 2, 3)))
    assert drain(b) == []
    assert b._partial_bytes == 9000
    b.receive_data(first_fragment(4, 5, chunk))  # would hold 12000 bytes
    with pytest.raises(RemoteProtocolError, match="max_fragmented_bytes"):
        b.next_event()
    assert b.state is State.ERROR and not b._partials and b._partial_bytes == 0


def test_a_following_fragment_counts_toward_the_bound() -> None:
    _, b = connected_pair(max_fragmented_bytes=5000)
    follow = b"\x83F" + struct.pack(">QQ", 1, 4) + bytes(3000)
    b.receive_data(first_fragment(1, 5, bytes(3000)) + struct.pack(">I", len(follow)) + follow)
    with pytest.raises(RemoteProtocolError, match="max_fragmented_bytes"):
        b.next_event()
    assert not b._partials


def test_unfinished_fragments_are_bounded_in_number() -> None:
    _, b = connected_pair(max_fragmented_messages=8)
    b.receive_data(b"".join(first_fragment(seq, 2, b"x") for seq in range(1, 9)))
    assert drain(b) == []
    b.receive_data(first_fragment(9, 2, b"x"))
    with pytest.raises(RemoteProtocolError, match="max_fragmented_messages"):
        b.next_event()
    assert not b._partials


def test_finished_fragments_give_their_bytes_back() -> None:
    a, b = connected_pair(fragment_size=100, max_fragmented_bytes=1500)
    for _ in range(5):  # each message fits under the bound; together they would not
        events = feed(b, a.send(Send(PB, bytes(1000))), False)
        assert events == [Send(PB, bytes(1000))]
        assert b._partial_bytes == 0


def _nil_list(count: int) -> bytes:
    return b"l" + struct.pack(">I", count) + b"j" * count + b"j"


@pytest.mark.parametrize("form", ["pass-through-zlib", "header"])
def test_decoding_is_bounded_by_work_not_bytes(form: str) -> None:
    """A message whose few bytes ask for millions of objects is refused by DIST_LIMITS."""
    _, b = connected_pair()
    assert b.limits == DIST_LIMITS
    control = term_to_binary((6, PA, Atom(""), Atom("nobody")))
    if form == "header":
        body = b"\x83D\x00" + control[1:] + _nil_list(11_000_000)
    else:
        inner = _nil_list(16_000_000)
        body = b"p" + control + b"\x83P" + struct.pack(">I", len(inner)) + zlib.compress(inner, 9)
        assert len(body) < 20_000
    b.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(RemoteProtocolError, match="max_terms"):
        b.next_event()
    assert b.state is State.ERROR


def test_decode_limits_are_the_connections_choice() -> None:
    a, b = connected_pair(limits=Limits(max_terms=100))
    with pytest.raises(RemoteProtocolError, match="max_terms"):
        feed(b, a.send(Send(PB, list(range(200)))), False)
    a, b = connected_pair()
    assert feed(b, a.send(Send(PB, list(range(1_000_000)))), False) == [Send(PB, list(range(1_000_000)))]


def header_frame(refs: list[tuple[int, int, str | None]], body: bytes, long_atoms: bool = False) -> bytes:
    """A 'D' packet with the given (segment, index, new-text-or-None) atom cache references."""
    n = len(refs)
    nibbles = [(8 if text is not None else 0) | seg for seg, _, text in refs] + [1 if long_atoms else 0]
    flags = bytearray(n // 2 + 1)
    for i, nib in enumerate(nibbles):
        flags[i >> 1] |= nib << (4 if i & 1 else 0)
    out = bytearray(b"\x83D" + bytes([n]) + flags)
    for _, idx, text in refs:
        out.append(idx)
        if text is not None:
            raw = text.encode()
            out += struct.pack(">H", len(raw)) if long_atoms else bytes([len(raw)])
            out += raw
    out += body
    return struct.pack(">I", len(out)) + bytes(out)


@pytest.mark.parametrize("long_atoms", [False, True])
def test_atom_cache_header(long_atoms: bool) -> None:
    _, b = connected_pair()
    # control {6, PA, '', rex} with '' and rex as cache refs 0 and 1; message = ref 1 (rex)
    body = b"h\x04a\x06" + term_to_binary(PA)[1:] + b"R\x00R\x01" + b"R\x01"
    frame1 = header_frame([(0, 5, ""), (3, 200, "rex")], body, long_atoms)
    frame2 = header_frame([(0, 5, None), (3, 200, None)], body, long_atoms)
    events = feed(b, frame1 + frame2, False)
    assert events == [RegSend(PA, Atom("rex"), Atom("rex"))] * 2
    bad = header_frame([(1, 1, None)], b"a\x01")
    b.receive_data(bad)
    with pytest.raises(RemoteProtocolError, match="empty atom cache slot"):
        b.next_event()


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00\x01\x00",                   # unknown packet kind
    b"\x00\x00\x00\x02\x83Z",                  # unknown header kind
    b"\x00\x00\x00\x05\x83D\x00a\x01",         # control not a tuple
    b"\x00\x00\x00\x07\x83D\x00h\x01a\x63",    # unknown control tag 99
    b"\x00\x00\x00\x07\x83D\x00h\x01a\x01",    # LINK with the wrong arity
    b"\x00\x00\x00\x05\x83D\x00h\x05",         # truncated term
    b"\x00\x00\x00\x03p\x83q",                 # pass-through garbage
])
def test_connected_garbage(garbage: bytes) -> None:
    _, b = connected_pair()
    b.receive_data(garbage)
    with pytest.raises(RemoteProtocolError):
        b.next_event()
    assert b.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        b.next_event()


def test_oversized_frame_refused_before_buffering() -> None:
    _, b = connected_pair(max_frame_size=1000)
    b.receive_data(struct.pack(">I", 10**6))
    with pytest.raises(RemoteProtocolError, match="max_frame_size"):
        b.next_event()


def test_ticks_trailing_data_and_close() -> None:
    a, b = connected_pair()
    b.receive_data(a.tick() + a.tick() + a.send(Link(PA, PB))[:5])
    assert b.next_event() == Tick()
    assert b.next_event() == Tick()
    assert b.next_event() is NEED_DATA
    b.receive_data(b"")
    assert isinstance(b.next_event(), ConnectionClosed)
    assert b.state is State.CLOSED


def test_encode_error_leaves_connection_usable() -> None:
    a, b = connected_pair()
    with pytest.raises(TypeError):
        a.send(Send(PB, "a str is refused by the exact mapping"))
    b.receive_data(a.send(Send(PB, 1)))
    assert b.next_event() == Send(PB, 1)


def test_misuse_is_local_error() -> None:
    a = Connection(Role.INITIATOR, this_node=A, cookie="c", creation=1, peer_node=B)
    with pytest.raises(LocalProtocolError):
        a.send(Link(PA, PB))
    with pytest.raises(LocalProtocolError):
        a.accept_name("ok")
    with pytest.raises(LocalProtocolError):
        Connection(Role.INITIATOR, this_node=A, cookie="c", creation=1)
    with pytest.raises(TypeError):
        Link(PA, "not a pid")  # type: ignore[arg-type]


def test_epmd_messages() -> None:
    req = epmd.alive2_request("py", 5000, hidden=True)
    assert req[:3] == b"\x00\x0f\x78" and req.endswith(b"py\x00\x00")
    assert epmd.parse_alive2_reply(b"v\x00\x00\x00") is None
    assert epmd.parse_alive2_reply(b"v\x00\x00\x00\x00\x05") == epmd.Alive2Reply(0, 5)
    assert epmd.parse_alive2_reply(b"y\x01\x00\x02") == epmd.Alive2Reply(1, 2)
    with pytest.raises(RemoteProtocolError):
        epmd.parse_alive2_reply(b"z")
    reply = b"w\x00" + struct.pack(">HBBHHH", 4000, 77, 0, 6, 5, 3) + b"foo" + b"\x00\x00"
    for cut in range(len(reply)):
        assert epmd.parse_port2_reply(reply[:cut]) is None
    parsed = epmd.parse_port2_reply(reply)
    assert parsed is not None and parsed.info is not None
    assert (parsed.info.port, parsed.info.name, parsed.info.hidden) == (4000, "foo", False)
    assert epmd.parse_port2_reply(b"w\x01") == epmd.PortReply(1, None)
    assert epmd.port_please2_request("foo") == b"\x00\x04zfoo"
    assert epmd.names_request() == b"\x00\x01n"
    port, names = epmd.parse_names_reply(b"\x00\x00\x11\x11name a at port 1\nname b at port 22\n")
    assert port == 0x1111 and names == [("a", 1), ("b", 22)]
    with pytest.raises(LocalProtocolError):
        epmd.alive2_request("a@b", 1)


# The hot messages' checks first test the exact types and fall back to the field-by-field ones:
# both ways must still refuse what is not a pid, a reference or an atom.
_WRONG = "not a term of that type"


@pytest.mark.parametrize("build", [
    lambda: MonitorPExit(PA, PB, _WRONG, 1),  # type: ignore[arg-type]
    lambda: MonitorPExit(_WRONG, PB, REF, 1),  # type: ignore[arg-type]
    lambda: SpawnReply(REF, PA, 0, _WRONG),  # type: ignore[arg-type]
    lambda: SpawnReply(REF, PA, True, PB),  # a bool is not the int flags
    lambda: SpawnRequest(REF, PA, PA, Atom("m"), Atom("f"), [], (Atom("monitor"),)),  # type: ignore[arg-type]
    lambda: SpawnRequest(REF, PA, _WRONG, Atom("m"), Atom("f"), [], []),  # type: ignore[arg-type]
    lambda: Send(PB, 1, _WRONG),  # type: ignore[arg-type]
    lambda: Exit(PA, _WRONG, 1),  # type: ignore[arg-type]
], ids=["monitor-ref", "monitor-proc", "reply-result", "reply-flags", "request-options",
        "request-leader", "send-from", "exit-to"])
def test_hot_messages_refuse_wrong_types(build: Any) -> None:
    with pytest.raises(TypeError):
        build()


@pytest.mark.parametrize("control, payload", [
    ((29, REF, PA, _WRONG, (Atom("m"), Atom("f"), 0), []), []),
    ((29, REF, PA, PA, (Atom("m"), Atom("f"), 0), (Atom("monitor"),)), []),
    ((29, REF, PA, PA, (Atom("m"), Atom("f"), 1), []), []),  # arity says 1, no argument
    ((31, REF, PA, 0, _WRONG), None),
    ((21, PB, PA, _WRONG, Atom("normal")), None),
], ids=["request-leader", "request-options", "request-arity", "reply-result", "monitor-ref"])
def test_malformed_hot_control_messages_break_only_that_connection(control: Any, payload: Any) -> None:
    from beambridge.term import Mapping, encode_body

    _, b = connected_pair()
    body = encode_body(control, mapping=Mapping.TEXT)
    if payload is not None:
        body += encode_body(payload)
    b.receive_data(struct.pack(">I", len(body) + 3) + b"\x83D\x00" + body)
    with pytest.raises(RemoteProtocolError, match="malformed control message"):
        b.next_event()
    assert b.state is State.ERROR
    c, d = connected_pair()  # another connection is not touched
    d.receive_data(c.send(SpawnReply(REF, PA, 2, PB)))
    assert d.next_event() == SpawnReply(REF, PA, 2, PB)


# ------------------------------------------------------------------ the node's hot-path calls

def _read_fast(conn: Connection, limit: int = 3) -> list[Any]:
    """A node's reading: batches from ``take_messages`` turned into events, ``next_event``
    for the rest, until more data is needed."""
    events: list[Any] = []
    while True:
        batch: list[tuple[Any, Any]] = []
        taken = conn.take_messages(batch, limit)
        assert taken == len(batch) <= limit
        events += [conn.event_of(control, payload) for control, payload in batch]
        event = conn.next_event()
        if event is NEED_DATA or isinstance(event, ConnectionClosed):
            return events
        events.append(event)


@pytest.mark.parametrize("header", [True, False], ids=["dist-header", "pass-through"])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_batched_reading_gives_the_events_next_event_gives(header: bool, chunk: int) -> None:
    """``take_messages`` + ``event_of`` read the same events as ``next_event`` alone, in the
    same order, whatever the reads' sizes; the packets it cannot take (new atoms, ticks, the
    pass-through form, fragments) are left for ``next_event``."""
    flags = DEFAULT_FLAGS if header else DEFAULT_FLAGS & ~Flag.DIST_HDR_ATOM_CACHE
    a, b = connected_pair(flags=flags, fragment_size=200)
    messages = ALL_MESSAGES * 2 + [Send(PB, bytes(1000)), Send(PB, Atom("after"))]
    wire = b"".join(a.send(m) for m in messages[:10]) + a.tick() + b"".join(
        a.send(m) for m in messages[10:])
    events: list[Any] = []
    for at in range(0, len(wire), chunk):
        b.receive_data(wire[at:at + chunk])
        events += _read_fast(b)
    assert events == [expected(m) for m in messages[:10]] + [Tick()] + [
        expected(m) for m in messages[10:]]
    if header:  # the second round's atoms are cached: most of it came in batches
        c, d = connected_pair(flags=flags)
        d.receive_data(b"".join(c.send(m) for m in ALL_MESSAGES))
        drain(d)
        d.receive_data(b"".join(c.send(m) for m in ALL_MESSAGES))
        batch: list[tuple[Any, Any]] = []
        assert d.take_messages(batch) == len(ALL_MESSAGES)
    else:
        c, d = connected_pair(flags=flags)
        d.receive_data(c.send(Send(PB, 1)))
        assert d.take_messages([]) == 0 and d.next_event() == Send(PB, 1)


def test_take_messages_takes_nothing_outside_its_state() -> None:
    a = Connection(Role.INITIATOR, this_node=A, cookie="s", creation=7, peer_node=B)
    a.start()
    assert a.take_messages([]) == 0  # handshaking: next_event reads
    c, d = connected_pair()
    d.receive_data(c.send(Send(PB, 1)) + b"")
    d.receive_data(b"")  # the end of input, after one message
    out: list[Any] = []
    assert d.take_messages(out) == 1 and d.event_of(*out[0]) == Send(PB, 1)
    assert isinstance(d.next_event(), ConnectionClosed) and d.state is State.CLOSED
    assert d.take_messages([]) == 0


def test_a_malformed_batch_breaks_the_connection() -> None:
    """A first packet that does not decode is a RemoteProtocolError from ``take_messages``;
    a control tuple that is no message is one from ``event_of``: both leave the ERROR state."""
    _, d = connected_pair()
    d.receive_data(struct.pack(">I", 6) + b"\x83D\x00\x68\x05\x61")  # a tuple cut short
    with pytest.raises(RemoteProtocolError, match="malformed"):
        d.take_messages([])
    assert d.state is State.ERROR
    _, d = connected_pair()
    body = b"\x83D\x00" + term_to_binary((6, PA))[1:] + term_to_binary(1)[1:]
    d.receive_data(struct.pack(">I", len(body)) + body)
    out: list[Any] = []
    assert d.take_messages(out) == 1
    with pytest.raises(RemoteProtocolError, match="has 2 elements, not 4"):
        d.event_of(*out[0])
    assert d.state is State.ERROR


_SPAWN = (REF, PA, PA, Atom("erpc"), Atom("execute_call"))


@pytest.mark.parametrize("header", [True, False], ids=["dist-header", "pass-through"])
@pytest.mark.parametrize("size", [10, 5000], ids=["small", "fragmented"])
def test_spawn_request_is_send_of_a_spawn_request(header: bool, size: int) -> None:
    """``spawn_request`` (the rpc path's send without the message object) writes the bytes
    ``send(SpawnRequest(...))`` writes, fragments and atom cache included."""
    flags = DEFAULT_FLAGS if header else DEFAULT_FLAGS & ~Flag.DIST_HDR_ATOM_CACHE
    (a1, b1), (a2, _) = connected_pair(flags=flags, fragment_size=1000), connected_pair(
        flags=flags, fragment_size=1000)
    for args in ([REF, Atom("m"), Atom("f"), [bytes(size)]], [REF, Atom("m"), Atom("f"), []]):
        options = [Atom("monitor")]
        fast = a1.spawn_request(*_SPAWN, args, options)
        assert fast == a2.send(SpawnRequest(*_SPAWN, args, options))
        b1.receive_data(fast)
        assert drain(b1) == [SpawnRequest(*_SPAWN, args, options)]


def test_spawn_request_errors_are_sends_errors() -> None:
    a, b = connected_pair()
    with pytest.raises(TypeError) as fast:
        a.spawn_request(*_SPAWN, ["a str is refused by the exact mapping"], [])
    with pytest.raises(TypeError) as slow:
        a.send(SpawnRequest(*_SPAWN, ["a str is refused by the exact mapping"], []))
    assert type(fast.value) is type(slow.value) and str(fast.value) == str(slow.value)
    b.receive_data(a.spawn_request(*_SPAWN, [1], []))  # the connection is still usable
    assert drain(b) == [SpawnRequest(*_SPAWN, [1], [])]
    handshaking = Connection(Role.INITIATOR, this_node=A, cookie="s", creation=7, peer_node=B)
    with pytest.raises(LocalProtocolError):
        handshaking.spawn_request(*_SPAWN, [], [])
    b.receive_data(b"\x00\x00\x00\x05garbage")
    with pytest.raises(RemoteProtocolError):
        b.next_event()
    with pytest.raises(LocalProtocolError):  # ERROR
        b.spawn_request(*_SPAWN, [], [])
    _, d = connected_pair()
    d.receive_data(b"")
    assert isinstance(d.next_event(), ConnectionClosed)
    with pytest.raises(LocalProtocolError):  # CLOSED
        d.spawn_request(*_SPAWN, [], [])


def test_the_unchecked_builders_make_what_the_constructors_make() -> None:
    """A node builds the messages of its own hot paths without the constructors' checks: each
    such builder gives the message the checked constructor gives, down to the wire."""
    from beambridge.node._names import addressed
    from beambridge.protocol import Exit, MonitorPExit, RegSend, Send, SpawnReply, SpawnRequest, _control

    me, other = Pid(Atom("a@h"), 1, 2, 3), Pid(Atom("b@h"), 4, 5, 6)
    ref = Reference(Atom("a@h"), 1, (1, 2, 3))
    pairs = [
        (_control.send_unchecked(other, [1], me), Send(other, [1], me)),
        (_control.reg_send_unchecked(me, Atom("name"), (1, 2)), RegSend(me, Atom("name"), (1, 2))),
        (addressed(other, b"m", me), Send(other, b"m", me)),
        (addressed(Atom("name"), b"m", me), RegSend(me, Atom("name"), b"m")),
        (_control.exit_unchecked(me, other, Atom("normal")), Exit(me, other, Atom("normal"))),
        (_control.monitor_exit_unchecked(me, other, ref, 7), MonitorPExit(me, other, ref, 7)),
        (_control.spawn_reply_unchecked(ref, other, 2, me), SpawnReply(ref, other, 2, me)),
        (_control.spawn_request_unchecked(ref, me, me, Atom("m"), Atom("f"), [1], []),
         SpawnRequest(ref, me, me, Atom("m"), Atom("f"), [1], [])),
    ]
    for built, checked in pairs:
        assert type(built) is type(checked) and built == checked
        for flags in (0, int(DEFAULT_FLAGS)):
            assert built.to_wire(flags) == checked.to_wire(flags)


@pytest.mark.parametrize("error", [KeyboardInterrupt, MemoryError])
def test_an_interrupted_batch_takes_nothing(monkeypatch: pytest.MonkeyPatch,
                                            error: type[BaseException]) -> None:
    """An exception that is not the peer's fault (an interrupt, no memory) raised while the
    codec reads a batch goes up as it is: ``out`` holds what it held before, the input is
    where it was and the connection is still up, so the next read takes every message."""
    from beambridge.protocol import _connection

    c, d = connected_pair()
    messages = [Send(PB, i) for i in range(5)]
    d.receive_data(b"".join(c.send(m) for m in messages))
    drain(d)  # the atoms are cached now: the same messages again come in batches
    d.receive_data(b"".join(c.send(m) for m in messages))
    real = _connection._decode_dist_batch

    def interrupted(*args: Any) -> Any:
        real(*args)  # the packets are read into ``out``, then the interrupt comes
        raise error

    monkeypatch.setattr(_connection, "_decode_dist_batch", interrupted)
    out: list[Any] = ["before"]
    with pytest.raises(error):
        d.take_messages(out)
    assert out == ["before"] and d.state is State.CONNECTED
    monkeypatch.setattr(_connection, "_decode_dist_batch", real)
    assert d.take_messages(out) == len(messages)
    assert [d.event_of(*item) for item in out[1:]] == messages
