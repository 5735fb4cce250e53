"""Every road across real hosts (separate network namespaces), plain TCP and TLS: rpc both ways,
messages, monitors and links, the receiver answering Erlang, and a node's listen port range."""

from __future__ import annotations

import socket

import pytest

from beambridge import UsageError
from beambridge.term import Atom
from beambridge.web import Receiver
from tests.hosts.conftest import COOKIE, TICK, Cluster

pytestmark = pytest.mark.erlang

A = Atom


def test_rpc_both_ways_across_hosts(cluster: Cluster) -> None:
    py, n1, n2 = cluster.py, cluster.n1, cluster.n2
    assert py.rpc(n1.name, "erlang", "node", []) == A(n1.name)
    assert py.rpc(n2.name, "erlang", "node", []) == A(n2.name)
    expected = [list(b"inet_tls")] if cluster.mode == "tls" else None
    args = py.rpc(n2.name, "init", "get_argument", [A("proto_dist")])
    assert args == ((A("ok"), [expected]) if expected else A("error"))
    # the Erlang host sees us at the front end's own address, not loopback
    peer = py.rpc(n2.name, "net_kernel", "node_info", [A(py.name), A("address")])
    assert peer[0] == A("ok") and peer[1][1][0] == tuple(int(x) for x in cluster.web.ip.split("."))
    py.expose("hostfns", {"double": lambda x: 2 * x, "where": lambda: A(py.name)})
    # Erlang calls Python: erpc from erl2 over the connection we opened ...
    assert py.rpc(n2.name, "bb_test", "erpc_py", [A(py.name), A("hostfns"), A("double"), [21]]) == (
        A("ok"), 42)
    # ... and over one erl1 opens itself, to a front-end node it never met
    other = cluster.python("other")
    other.expose("hostfns", {"where": lambda: A(other.name)})
    assert py.rpc(n1.name, "rpc", "call", [A(other.name), A("hostfns"), A("where"), []]) == A(
        other.name)
    assert A(other.name) in py.rpc(n1.name, "erlang", "nodes", [A("hidden")])
    # and between the Erlang hosts, for good measure: erl1 calls erl2, which calls Python
    assert py.rpc(n1.name, "rpc", "call", [A(n2.name), A("bb_test"), A("erpc_py"),
                                           [A(py.name), A("hostfns"), A("double"), [5]]]) == (
        A("ok"), 10)


def test_messages_monitors_and_links_across_hosts(cluster: Cluster) -> None:
    py, n2 = cluster.py, cluster.n2
    with py.mailbox() as box:
        echo = py.rpc(n2.name, "bb_test", "start_echo", [A(f"echo_{cluster.mode}")])
        box.send(echo, (box.pid, b"across"))
        assert box.receive(timeout=5) == b"across"
        box.send((f"echo_{cluster.mode}", n2.name), (box.pid, b"by name"))
        assert box.receive(timeout=5) == b"by name"
        ref = box.monitor(echo)
        linker = py.rpc(n2.name, "bb_test", "linker", [box.pid])
        box.send(linker, (A("exit"), A("boom")))
        assert box.receive(timeout=5) == (A("EXIT"), linker, A("boom"))
        py.rpc(n2.name, "erlang", "exit", [echo, A("kill")])
        assert box.receive(timeout=5) == (A("DOWN"), ref, A("process"), echo, A("killed"))
        # an Erlang process monitoring a Python one sees it end
        with py.mailbox() as watched:
            watcher, wref = py.rpc(n2.name, "bb_test", "monitorer", [watched.pid, box.pid])
            watched.close(A("done"))
            assert box.receive(timeout=5) == (A("forwarded"), watcher,
                                              (A("DOWN"), wref, A("process"), watched.pid, A("done")))


def test_the_receiver_answers_erlang_across_hosts(cluster: Cluster) -> None:
    web, n1 = cluster.web, cluster.n1
    name = f"recv_{cluster.mode}@{web.ip}"
    seen: list[object] = []

    def handle(request: object) -> object:
        seen.append(request)
        return (A("upper"), request.upper()) if isinstance(request, bytes) else A("what")

    receiver = web.call(lambda: Receiver(name, handle, cookie=COOKIE, listen_host=web.ip,
                                         net_ticktime=TICK, tls=cluster.optfiles["web"]).start())
    try:
        answer = cluster.py.rpc(n1.name, "gen_server", "call",
                                [(A(f"recv_{cluster.mode}"), A(name)), b"hello", 5000], timeout=10)
        assert answer == (A("upper"), b"HELLO")
        assert seen == [b"hello"]
    finally:
        receiver.stop()


def test_listen_ports_take_the_first_free_one_of_the_range(cluster: Cluster) -> None:
    web = cluster.web  # a host of our own: nobody else takes ports there
    low = 21000 if cluster.mode == "tcp" else 21100
    held = web.call(lambda: socket.create_server((web.ip, low)))
    try:
        node = cluster.python("ports_a", listen_ports=(low, low + 1))
        assert node.node.port == low + 1
        assert (node.name.partition("@")[0], low + 1) in node.names()
        # reached from another host through that port
        assert cluster.py.rpc(cluster.n1.name, "net_adm", "ping", [A(node.name)]) == A("pong")
        # the range is full now: a clear UsageError naming it, and nothing registered
        with pytest.raises(UsageError, match=f"no free port in listen_ports {low}..{low + 1}"):
            cluster.python("ports_b", listen_ports=(low, low + 1))
        assert not [n for n, _ in node.names() if n.startswith("ports_b")]
    finally:
        held.close()
