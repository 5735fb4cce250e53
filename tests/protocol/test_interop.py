"""What peers we did not write send: a request for a dynamic name (``NAME_ME``, as
``erl -name undefined@host`` and ``erl_call -R`` send it) and bytes after a message's terms (as
erl_call sends for some arguments). Both are answered as BEAM answers them (checked against real
nodes in tests/thirdparty)."""

from __future__ import annotations

import re
import struct

import pytest

from beambridge.protocol import (
    Connected,
    Connection,
    Flag,
    HandshakeFailed,
    Link,
    LocalProtocolError,
    NameReceived,
    RegSend,
    RemoteProtocolError,
    Role,
    Send,
    State,
    digest,
    dynamic_name,
)
from beambridge.protocol._flags import DEFAULT_FLAGS
from beambridge.term import Atom, encode_body, term_to_binary

from .test_protocol import PA, PB, connected_pair, drain, feed

B = "b@host"
COOKIE = "secret"
ASKING = int(DEFAULT_FLAGS) | int(Flag.NAME_ME)


def send_name(name: str, flags: int = ASKING, creation: int = 0) -> bytes:
    raw = name.encode()
    payload = b"N" + struct.pack(">QIH", flags, creation, len(raw)) + raw
    return struct.pack(">H", len(payload)) + payload


def acceptor() -> Connection:
    return Connection(Role.ACCEPTOR, this_node=B, cookie=COOKIE, creation=9,
                      flags=int(DEFAULT_FLAGS) | int(Flag.PUBLISHED))


def handshake_messages(data: bytes) -> list[bytes]:
    out = []
    while data:
        (size,) = struct.unpack(">H", data[:2])
        out.append(data[2:2 + size])
        data = data[2 + size:]
    return out


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_a_peer_asking_for_a_name_is_named(bytewise: bool) -> None:
    b = acceptor()
    assert feed(b, send_name("client.example"), bytewise) == [
        NameReceived("client.example", ASKING, 0, dynamic=True)]
    status, challenge = handshake_messages(b.accept_name("named", name="X1Z@client.example",
                                                         creation=77))
    # dist_util's send_status(named): "snamed:", 16-bit length, the name, 32-bit creation
    assert status == b"snamed:" + b"\x00\x12X1Z@client.example" + struct.pack(">I", 77)
    flags, our_challenge, _creation, nlen = struct.unpack(">QIIH", challenge[1:19])
    assert challenge[19:] == B.encode() and nlen == len(B)
    # and, as BEAM's acceptor does for a dynamic peer, NAME_ME instead of PUBLISHED
    assert flags & Flag.NAME_ME and not flags & Flag.PUBLISHED
    # the peer (now X1Z@client.example) answers the challenge; the connection is up under the
    # name and creation we gave it
    reply = b"r" + struct.pack(">I", 1234) + digest(our_challenge, COOKIE.encode())
    events = feed(b, struct.pack(">H", len(reply)) + reply, bytewise)
    assert events == [Connected("X1Z@client.example", ASKING, 77)]
    (ack,) = handshake_messages(b.data_to_send())
    assert ack == b"a" + digest(1234, COOKIE.encode())
    assert b.state is State.CONNECTED and b.peer_node == "X1Z@client.example"


def test_the_default_dynamic_name_is_net_kernels() -> None:
    b = acceptor()
    b.receive_data(send_name("h"))
    drain(b)
    status = handshake_messages(b.accept_name("named"))[0]
    (nlen,) = struct.unpack(">H", status[7:9])
    name = status[9:9 + nlen].decode()
    (creation,) = struct.unpack(">I", status[9 + nlen:])
    # integer_to_list(rand:uniform(1 bsl 64), 36) ++ "@" ++ Host; a creation of 4 or more
    assert re.fullmatch(r"[0-9A-Z]{1,13}@h", name) and creation >= 4
    assert b.peer_node == name and b.peer_creation == creation
    names = {dynamic_name("h")[0] for _ in range(100)}
    assert len(names) == 100


def test_named_is_the_only_way_on_for_a_dynamic_peer() -> None:
    b = acceptor()
    b.receive_data(send_name("host"))
    drain(b)
    for status in ("ok", "ok_simultaneous", "alive"):
        with pytest.raises(LocalProtocolError, match="answered 'named'"):
            b.accept_name(status)
    with pytest.raises(LocalProtocolError, match="name@host"):
        b.accept_name("named", name="X@elsewhere")
    with pytest.raises(LocalProtocolError, match="name@host"):
        b.accept_name("named", name="@host")
    b.accept_name("not_allowed")
    assert b.state is State.CLOSED
    # and 'named' is refused for a peer that has a name of its own
    c = acceptor()
    c.receive_data(send_name("a@host", flags=int(DEFAULT_FLAGS)))
    assert drain(c) == [NameReceived("a@host", int(DEFAULT_FLAGS), 0)]
    with pytest.raises(LocalProtocolError, match="only a peer that asked"):
        c.accept_name("named")


@pytest.mark.parametrize(("name", "flags"), [
    ("nohost", int(DEFAULT_FLAGS)),        # a static name needs name@host
    ("a@b@c", int(DEFAULT_FLAGS)),
    ("@host", int(DEFAULT_FLAGS)),
    ("a@host", ASKING),                    # asking for a name sends the host alone
], ids=["no-at", "two-ats", "empty-name", "dynamic-with-name"])
def test_names_dist_util_refuses(name: str, flags: int) -> None:
    b = acceptor()
    b.receive_data(send_name(name, flags))
    with pytest.raises(HandshakeFailed):
        b.next_event()
    assert b.state is State.ERROR


# ---------------------------------------------------------------- bytes after the terms

REG_SEND = (6, PA, Atom(""), Atom("rex"))
JUNK = [b"\x64\x00\x04user", b"\xff\xfe\x00"]  # a whole term (what erl_call leaves), garbage


@pytest.mark.parametrize("junk", JUNK, ids=["term", "garbage"])
@pytest.mark.parametrize("form", ["header", "pass-through"])
def test_bytes_after_the_terms_are_ignored(form: str, junk: bytes) -> None:
    """BEAM delivers the message and keeps the connection (seen with OTP 25 and 28: a
    REG_SEND with a payload, a LINK without one, each followed by junk)."""
    flags = int(DEFAULT_FLAGS)
    if form == "pass-through":
        flags &= ~int(Flag.DIST_HDR_ATOM_CACHE | Flag.FRAGMENTS)
    a, b = connected_pair(flags=flags)
    message = (PA, (Atom("call"), Atom("m"), Atom("f"), Atom("a"), Atom("b")))
    link = (1, PA, PB)
    if form == "header":
        frames = [b"\x83D\x00" + encode_body(REG_SEND) + encode_body(message) + junk,
                  b"\x83D\x00" + encode_body(link) + junk]
    else:
        frames = [b"p" + term_to_binary(REG_SEND) + term_to_binary(message) + junk,
                  b"p" + term_to_binary(link) + junk]
    data = b"".join(struct.pack(">I", len(f)) + f for f in frames)
    events = feed(b, data + a.send(Send(PB, 1)), False)
    assert events[0] == RegSend(PA, Atom("rex"), message)
    assert events[1] == Link(PA, PB)
    assert events[2] == Send(PB, 1)  # and the connection goes on
    assert b.state is State.CONNECTED


def test_a_truncated_payload_still_breaks_the_connection() -> None:
    """A message cut short is still malformed (erl_call's ``[[a|]]`` sends one; it gets no
    answer from BEAM either)."""
    _, b = connected_pair()
    frame = b"\x83D\x00" + encode_body(REG_SEND) + encode_body((PA, [1, 2]))[:-3]
    b.receive_data(struct.pack(">I", len(frame)) + frame)
    with pytest.raises(RemoteProtocolError, match="malformed"):
        b.next_event()
    assert b.state is State.ERROR


def test_a_tls_peer_is_named_as_such() -> None:
    """A plain-TCP side reading a TLS record (ClientHello or alert) says what is wrong."""
    from beambridge.protocol import Connection, RemoteProtocolError, Role

    for record in (b"\x16\x03\x01\x02\x00\x01", b"\x15\x03\x03\x00\x02\x02\x28"):
        acceptor = Connection(Role.ACCEPTOR, this_node="a@127.0.0.1", cookie="c", creation=5)
        acceptor.receive_data(record)
        with pytest.raises(RemoteProtocolError, match="the peer speaks TLS"):
            acceptor.next_event()
