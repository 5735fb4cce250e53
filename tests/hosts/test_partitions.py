"""Partitions and a frozen host, plain TCP and TLS: a link taken down mid-traffic ends every
blocked caller within its own timeout (never a hang), fires monitors and links with
``noconnection`` on both sides, leaves the other hosts served, and with the link back the next
call reconnects to the same Erlang node; a host whose processes are stopped is found dead within
``net_ticktime``.

The elapsed-time bounds are bounds on a hang (the caller's timeout plus ``MARGIN``), not speed
claims."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from beambridge import BlockingNode
from beambridge.node import NoConnection, Timeout
from beambridge.term import Atom
from tests.hosts.conftest import TICK, Cluster, timed, wait_until
from tests.hosts.netns import Network

pytestmark = pytest.mark.erlang

A = Atom
MARGIN = 1.5
#: a silent peer is dropped after net_ticktime, checked every quarter of it
DETECTED = TICK * 1.25 + MARGIN


class Caller(threading.Thread):
    """A blocking call in a thread of its own: when it ended and how (value or exception)."""

    def __init__(self, name: str, timeout: float, call: Callable[[], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self.timeout = timeout
        self.call = call
        self.elapsed = -1.0
        self.outcome: Any = None

    def run(self) -> None:
        self.elapsed, self.outcome = timed(self.call)

    def check(self, *expected: type[BaseException]) -> None:
        self.join(self.timeout + MARGIN + 5)
        assert not self.is_alive(), f"{self.name} hangs"
        assert isinstance(self.outcome, expected or (NoConnection, Timeout)), (self.name, self.outcome)
        assert self.elapsed <= self.timeout + MARGIN, (self.name, self.elapsed, self.outcome)


def start(name: str, timeout: float, call: Callable[[], Any]) -> Caller:
    caller = Caller(name, timeout, call)
    caller.start()
    return caller


def send_or_fail(py: BlockingNode, dest: Any) -> Any:
    """A send to a cut host may go out (into a connection not yet known dead) or fail."""
    py.send(dest, b"x", timeout=1.5)
    return NoConnection(str(dest), "sent (ok: sends need no answer)")


def test_a_link_cut_mid_traffic(cluster: Cluster, links_back: Network) -> None:
    py, n1, n2, erl2 = cluster.py, cluster.n1, cluster.n2, cluster.net["erl2"]
    os_pid = py.rpc(n2.name, "os", "getpid", [])
    server = py.rpc(n2.name, "bb_test", "start_server", [A(f"srv_{cluster.mode}")])
    collector = py.rpc(n2.name, "bb_test", "collect", [A(f"coll_{cluster.mode}"), 0])
    box = py.mailbox()  # traps exits: link signals arrive as messages
    watched = py.mailbox()
    echo = py.rpc(n2.name, "bb_test", "start_echo", [A(f"echo_cut_{cluster.mode}")])
    ref = box.monitor(echo)
    linker = py.rpc(n2.name, "bb_test", "linker", [box.pid])
    box.monitor_node(n2.name)
    # erl2 watches a Python process and reports to a collector of its own
    watcher, wref = py.rpc(n2.name, "bb_test", "monitorer", [watched.pid, collector])

    # traffic: a stream of calls, and calls in flight that the cut catches
    stop = threading.Event()
    served = [0]
    last = [0.0]  # how long the stream's last call took

    def stream() -> Any:
        while not stop.is_set():
            last[0], outcome = timed(lambda: py.rpc(n2.name, "erlang", "node", [], timeout=2))
            if isinstance(outcome, Exception):
                return outcome
            served[0] += 1
        return "stopped"

    streamer = start("stream", 2, stream)
    in_flight = [start(f"sleep_{t}", t, lambda t=t: py.rpc(  # type: ignore[misc]
        n2.name, "timer", "sleep", [60_000], timeout=t)) for t in (1.5, 3, 10)]
    wait_until(lambda: served[0] > 20, 5, "traffic flowing")
    time.sleep(0.3)
    erl2.cut()
    cut_at = time.monotonic()
    started_during_cut = [
        start("gen_call", 2, lambda: py.gen_call((f"srv_{cluster.mode}", n2.name), b"hi", timeout=2)),
        start("receive", 1, lambda: box.receive(timeout=1, match=lambda m: m == b"never")),
    ]
    streamer.join(2 + MARGIN)
    stop.set()
    assert not streamer.is_alive(), "the stream of calls hangs"
    assert isinstance(streamer.outcome, (NoConnection, Timeout)), streamer.outcome
    assert last[0] <= 2 + MARGIN, last[0]
    for caller in (*in_flight, *started_during_cut):
        caller.check()
    # the long call outlives detection: it is told the connection went, not a timeout
    assert isinstance(in_flight[-1].outcome, NoConnection), in_flight[-1].outcome

    # monitors, links and the node monitor fire with noconnection, within net_ticktime
    got: set[Any] = set()
    while len(got) < 3:
        left = cut_at + DETECTED - time.monotonic()
        message = box.receive(timeout=max(left, 0.01))
        got.add(message)
    assert got == {(A("DOWN"), ref, A("process"), echo, A("noconnection")),
                   (A("EXIT"), linker, A("noconnection")), (A("nodedown"), A(n2.name))}
    assert n2.name not in py.nodes()

    # once it is known down, new calls fail within their own timeouts too (nothing answers)
    attempts_from = time.monotonic()
    after = [start("rpc", 1.5, lambda: py.rpc(n2.name, "erlang", "node", [], timeout=1.5)),
             start("gen_call", 1.5, lambda: py.gen_call((f"srv_{cluster.mode}", n2.name), b"x",
                                                       timeout=1.5)),
             start("send", 1.5, lambda: send_or_fail(py, (f"srv_{cluster.mode}", n2.name))),
             start("ping", 1.5, lambda: NoConnection(n2.name, "pang") if not py.ping(
                 n2.name, timeout=1.5) else "pong")]
    for caller in after:
        caller.check()
    # the survivors are served meanwhile, both ways
    assert py.rpc(n1.name, "erlang", "node", [], timeout=2) == A(n1.name)
    py.expose("cutfns", {"ok": lambda: A("ok")})
    assert py.rpc(n1.name, "bb_test", "erpc_py", [A(py.name), A("cutfns"), A("ok"), []],
                  timeout=5) == (A("ok"), A("ok"))

    # the link back: the next call reconnects, to the same Erlang node (nothing restarted).
    # Not before the connection attempts of the calls above are over: they outlive their
    # callers by up to connect_timeout (3 s here), and a call joins an attempt in progress
    # (as net_kernel's pending connect), so it could be told of the cut after all.
    time.sleep(max(0.0, attempts_from + 3.0 + 0.2 - time.monotonic()))
    erl2.restore()
    assert py.rpc(n2.name, "os", "getpid", [], timeout=5) == os_pid
    assert py.gen_call(server, b"again", timeout=5) == (A("echo"), b"again")
    # erl2 saw our process go with noconnection too
    box.send(collector, (A("get"), box.pid))
    collected = box.receive(timeout=5, match=lambda m: m[0] == A("collected"))
    assert (A("forwarded"), watcher, (A("DOWN"), wref, A("process"), watched.pid,
                                      A("noconnection"))) in collected[1]
    box.close()
    watched.close()


def test_a_frozen_host_is_detected_within_net_ticktime(cluster: Cluster, links_back: Network) -> None:
    py, n2, erl2 = cluster.py, cluster.n2, cluster.net["erl2"]
    os_pid = py.rpc(n2.name, "os", "getpid", [])
    with py.mailbox() as box:
        box.monitor_node(n2.name)
        echo = py.rpc(n2.name, "bb_test", "start_echo", [A(f"echo_frozen_{cluster.mode}")])
        ref = box.monitor(echo)
        call = start("sleep", 10, lambda: py.rpc(n2.name, "timer", "sleep", [60_000], timeout=10))
        time.sleep(0.2)
        assert erl2.freeze()  # its EPMD and its node: the kernel still answers TCP, nobody else
        frozen_at = time.monotonic()
        got = {box.receive(timeout=max(frozen_at + DETECTED - time.monotonic(), 0.01))
               for _ in range(2)}
        detected = time.monotonic() - frozen_at
        assert got == {(A("nodedown"), A(n2.name)),
                       (A("DOWN"), ref, A("process"), echo, A("noconnection"))}
        assert detected <= DETECTED, detected
        call.check(NoConnection)
        erl2.thaw()
        assert py.rpc(n2.name, "os", "getpid", [], timeout=5) == os_pid


def test_calls_to_a_cut_host_end_within_their_own_timeout(cluster: Cluster,
                                                          links_back: Network) -> None:
    """Regression: gen_call, ping and send connected within ``connect_timeout`` (10 s by default)
    instead of their own shorter timeout; a fresh node has no connection, so each call starts
    by connecting, and nothing answers a cut host."""
    py = cluster.python("fresh", connect_timeout=10.0)
    n2, erl2 = cluster.n2, cluster.net["erl2"]
    erl2.cut()
    box = py.mailbox()
    callers = [
        start("rpc", 1, lambda: py.rpc(n2.name, "erlang", "node", [], timeout=1)),
        start("gen_call", 1, lambda: py.gen_call(("net_kernel", n2.name), b"x", timeout=1)),
        start("send", 1, lambda: py.send(("nobody", n2.name), b"x", timeout=1)),
        start("mailbox send", 1, lambda: box.send(("nobody", n2.name), b"x", timeout=1)),
        start("connect", 1, lambda: py.connect(n2.name, timeout=1)),
        start("ping", 1, lambda: NoConnection(n2.name, "pang") if not py.ping(
            n2.name, timeout=1) else "pong")]
    for caller in callers:
        caller.check(NoConnection)
    # Regression: closing the node while those connection attempts were still pending left
    # them destroyed pending when the loop stopped ("Task was destroyed but it is pending!").
    inner = py.node
    box.close()
    py.close()
    assert not inner._connecting, inner._connecting
