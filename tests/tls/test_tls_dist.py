"""TLS distribution against real Erlang nodes on ``-proto_dist inet_tls``, both directions, with
the same ``ssl_dist_optfile`` on both sides; and every refusal typed and clear."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from beambridge import BlockingNode
from beambridge.node import HandshakeFailed, NoConnection, TlsHandshakeFailed
from beambridge.term import Atom
from tests.node.conftest import COOKIE, ErlNode, in_threads, unique, wait_until
from tests.tls.conftest import Pki

pytestmark = pytest.mark.erlang

A = Atom


@pytest.fixture
def make_py(epmd_port: int) -> Iterator[Callable[..., BlockingNode]]:
    made: list[BlockingNode] = []

    def make(tls: Path | None, cookie: str = COOKIE, **options: object) -> BlockingNode:
        made.append(BlockingNode(unique("pytls") + "@127.0.0.1", cookie, epmd_port=epmd_port,
                                 tls=tls, connect_timeout=5, **options))
        return made[-1]

    yield make
    for node in made:
        node.close()


def test_rpc_messages_and_monitors_to_an_erlang_tls_node(
        make_py: Callable[..., BlockingNode], tls_erl: ErlNode, tls_pki: Pki) -> None:
    py = make_py(tls_pki.good)
    assert py.rpc(tls_erl.name, "erlang", "node", []) == A(tls_erl.name)
    # the connection is TLS on Erlang's side too
    assert py.rpc(tls_erl.name, "net_kernel", "get_net_ticktime", []) > 0
    assert py.rpc(tls_erl.name, "init", "get_argument", [A("proto_dist")]) == (
        A("ok"), [[list(b"inet_tls")]])
    with py.mailbox() as box:
        echo = py.rpc(tls_erl.name, "bb_test", "start_echo", [A(unique("echo"))])
        box.send(echo, (box.pid, b"over tls"))
        assert box.receive(timeout=10) == b"over tls"
        ref = box.monitor(echo)
        py.rpc(tls_erl.name, "erlang", "exit", [echo, A("kill")])
        assert box.receive(timeout=10) == (A("DOWN"), ref, A("process"), echo, A("killed"))


def test_erlang_opens_tls_to_python_and_erpc_runs_python(
        make_py: Callable[..., BlockingNode], tls_erl: ErlNode, tls_pki: Pki) -> None:
    caller, target = make_py(tls_pki.good), make_py(tls_pki.good)
    target.expose("pyfns", {"double": lambda x: 2 * x, "where": lambda: A(target.name)})
    # caller asks Erlang to call target: Erlang opens that connection itself (TLS client to us)
    assert caller.rpc(tls_erl.name, "bb_test", "erpc_py",
                      [A(target.name), A("pyfns"), A("double"), [21]]) == (A("ok"), 42)
    assert caller.rpc(tls_erl.name, "rpc", "call",
                      [A(target.name), A("pyfns"), A("where"), []]) == A(target.name)
    assert A(target.name) in caller.rpc(tls_erl.name, "erlang", "nodes", [A("hidden")])


def test_a_hundred_megabytes_each_way_over_tls(
        make_py: Callable[..., BlockingNode], tls_erl: ErlNode, tls_pki: Pki) -> None:
    py = make_py(tls_pki.good)
    size = 100 << 20
    big = py.rpc(tls_erl.name, "bb_test", "big", [size], timeout=120)
    assert isinstance(big, bytes) and len(big) == size and big[:1] == b"x"
    assert py.rpc(tls_erl.name, "erlang", "byte_size", [big + b"y"], timeout=120) == size + 1


def test_threads_encrypt_and_read_tls_themselves(
        make_py: Callable[..., BlockingNode], tls_erl: ErlNode, tls_pki: Pki) -> None:
    """Over TLS a blocking caller writes its request and reads its reply itself, as over plain
    TCP (the node does TLS, not the transport). Four threads at once, small calls and
    megabytes mixed: every answer right, and the one connection never broke (records out of
    order would fail the peer's integrity check and drop it)."""
    py = make_py(tls_pki.good)
    assert py.rpc(tls_erl.name, "erlang", "node", []) == A(tls_erl.name)
    peer = py.node._peers[A(tls_erl.name)]
    assert peer.tls is not None and peer.sock is not None
    node = py.node
    direct = [0]
    started = node.rpc_from_thread

    def counting(*args: object) -> object:
        fast = started(*args)  # type: ignore[arg-type]
        if fast is not None:
            direct[0] += 1
        return fast

    node.rpc_from_thread = counting  # type: ignore[method-assign]
    for i in range(50):
        assert py.rpc(tls_erl.name, "lists", "reverse", [[i, 1]]) == [1, i]
    assert direct[0] == 50

    def caller(t: int) -> None:
        for i in range(40):
            if i % 10 == 3:
                big = bytes([t]) * ((1 << 20) + i)
                assert py.rpc(tls_erl.name, "erlang", "byte_size", [big], timeout=60) == len(big)
            else:
                assert py.rpc(tls_erl.name, "lists", "reverse", [[t, i]]) == [i, t]

    failures = in_threads(caller, 4, 120)
    assert not failures, failures
    assert node._peers[A(tls_erl.name)] is peer and peer.alive
    assert node._stats[A(tls_erl.name)].connects == 1


def test_messages_sent_just_before_erlang_disconnects_arrive(
        make_py: Callable[..., BlockingNode], tls_erl: ErlNode, tls_pki: Pki) -> None:
    """Erlang sends, then drops the connection at once (its last records and its close_notify
    may come in one read): every message arrives, in order, and then the connection is down."""
    py = make_py(tls_pki.good)
    with py.mailbox() as box:
        assert py.rpc(tls_erl.name, "bb_test", "send_then_disconnect", [box.pid, 200]) == A("ok")
        got = [box.receive(timeout=10) for _ in range(200)]
        assert got == [(A("msg"), i) for i in range(1, 201)]
    assert wait_until(lambda: A(tls_erl.name) not in py.node._peers, 10)
    assert py.rpc(tls_erl.name, "erlang", "node", []) == A(tls_erl.name)  # and connects again


def test_links_fire_across_tls(make_py: Callable[..., BlockingNode], tls_erl: ErlNode,
                               tls_pki: Pki) -> None:
    py = make_py(tls_pki.good)
    with py.mailbox() as box:  # mailboxes trap exits: the link's signal arrives as a message
        linker = py.rpc(tls_erl.name, "bb_test", "linker", [box.pid])
        box.send(linker, (A("exit"), A("boom")))
        assert box.receive(timeout=10) == (A("EXIT"), linker, A("boom"))


def test_cookie_is_still_checked_inside_tls(make_py: Callable[..., BlockingNode],
                                            tls_erl: ErlNode, tls_pki: Pki) -> None:
    py = make_py(tls_pki.good, cookie="not_the_cookie")
    with pytest.raises(HandshakeFailed) as caught:  # TLS was fine; the cookie was not
        py.rpc(tls_erl.name, "erlang", "node", [])
    assert "cookies probably differ" in str(caught.value)


@pytest.mark.parametrize("case", ["unknown_ca", "expired", "wrong_name"])
def test_we_refuse_a_peer_certificate(case: str, make_py: Callable[..., BlockingNode],
                                      make_tls_erl: Callable[[Path], ErlNode], tls_pki: Pki) -> None:
    cert = {"unknown_ca": tls_pki.stranger, "expired": tls_pki.expired,
            "wrong_name": tls_pki.wrong_name}[case]
    # The Erlang node presents a bad certificate and does not check ours.
    erl = make_tls_erl(tls_pki.optfile(f"erl_{case}", cert, tls_pki.other_ca if case == "unknown_ca"
                                       else None, verify=False))
    py = make_py(tls_pki.good)
    with pytest.raises(TlsHandshakeFailed) as caught:
        py.rpc(erl.name, "erlang", "node", [], timeout=10)
    expected = {"unknown_ca": "self-signed certificate in certificate chain|unable to get local issuer",
                "expired": "certificate has expired", "wrong_name": "IP address mismatch"}[case]
    assert re.search(expected, str(caught.value)), caught.value
    assert "the peer's certificate was refused" in str(caught.value)


def test_erlang_refuses_our_certificate_and_we_say_so(
        make_py: Callable[..., BlockingNode], tls_erl: ErlNode, tls_pki: Pki) -> None:
    stranger = make_py(tls_pki.optfile("py_stranger", tls_pki.stranger))  # trusts the right CA
    with pytest.raises(TlsHandshakeFailed) as caught:
        stranger.rpc(tls_erl.name, "erlang", "node", [], timeout=10)
    assert "TLS" in str(caught.value)
    # and the node with a good certificate is served meanwhile
    assert make_py(tls_pki.good).rpc(tls_erl.name, "erlang", "node", []) == A(tls_erl.name)


def test_plain_and_tls_do_not_mix(make_py: Callable[..., BlockingNode], tls_erl: ErlNode,
                                  tls_pki: Pki, erl: ErlNode) -> None:
    plain = make_py(None)
    with pytest.raises(NoConnection):
        plain.rpc(tls_erl.name, "erlang", "node", [], timeout=10)
    secure = make_py(tls_pki.good)
    with pytest.raises(TlsHandshakeFailed, match="plain-TCP node"):
        secure.rpc(erl.name, "erlang", "node", [], timeout=10)
    # a plain Erlang node cannot reach the TLS Python node either; a TLS one can
    assert plain.rpc(erl.name, "net_adm", "ping", [A(secure.name)]) == A("pang")
    assert secure.rpc(tls_erl.name, "net_adm", "ping", [A(secure.name)]) == A("pong")
    done = threading.Event()
    secure.expose("t", {"ping": lambda: done.set() or A("ok")})
    assert secure.rpc(tls_erl.name, "rpc", "call", [A(secure.name), A("t"), A("ping"), []]) == A("ok")
    assert done.is_set()
