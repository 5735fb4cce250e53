"""``Node.stats()`` / ``BlockingNode.stats()``: what a node counts about each peer, checked
against traffic made on purpose to a real Erlang node (both the loop's path and blocking
callers' fast path), across a reconnect."""

from __future__ import annotations

import asyncio
import threading

import pytest

from beambridge import Atom, BlockingNode
from beambridge.node import ErlangError, Node, Timeout
from tests.node.conftest import COOKIE, ErlNode, unique

pytestmark = pytest.mark.erlang


def test_counts_calls_outcomes_messages_and_bytes(py: BlockingNode, fresh_erl: ErlNode) -> None:
    assert py.stats()["peers"] == {}
    for i in range(3):
        assert py.rpc(fresh_erl.name, "erlang", "abs", [-i]) == i
    with pytest.raises(ErlangError):
        py.rpc(fresh_erl.name, "erlang", "binary_to_atom", [[1]])
    with pytest.raises(Timeout):
        py.rpc(fresh_erl.name, "timer", "sleep", [2000], timeout=0.3)
    threads = [threading.Thread(target=lambda: py.rpc(fresh_erl.name, "erlang", "node", []))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    with py.mailbox() as box:
        echo = py.rpc(fresh_erl.name, "bb_test", "start_echo", [Atom(unique("echo"))])
        for _ in range(5):
            box.send(echo, (box.pid, b"x" * 1000))
            assert box.receive(timeout=5) == b"x" * 1000
    stats = py.stats()
    peer = stats["peers"][fresh_erl.name]
    assert peer["connected"] and peer["connects"] == 1 and peer["connected_since"] > 0
    assert peer["rpc_calls"] == 3 + 1 + 1 + 4 + 1  # the echo's start too
    assert peer["rpc_errors"] == 1 and peer["rpc_timeouts"] == 1
    assert peer["rpc_seconds_max"] >= 0.3 and peer["rpc_seconds"] >= peer["rpc_seconds_max"]
    assert peer["messages_out"] >= 10 + 5 and peer["messages_in"] >= 10 + 5
    assert peer["bytes_out"] > 5000 and peer["bytes_in"] > 5000
    assert stats["totals"]["rpc_calls"] == peer["rpc_calls"] and stats["totals"]["connections_up"] == 1


def test_a_reconnect_goes_on_counting(py: BlockingNode, fresh_erl: ErlNode) -> None:
    py.rpc(fresh_erl.name, "erlang", "node", [])
    fresh_erl.stop()
    with pytest.raises(Exception):  # noqa: B017 - whichever way the loss shows
        py.rpc(fresh_erl.name, "erlang", "node", [], timeout=2)
    assert py.stats()["peers"][fresh_erl.name]["connected"] is False
    fresh_erl.start()
    py.rpc(fresh_erl.name, "erlang", "node", [])
    peer = py.stats()["peers"][fresh_erl.name]
    assert peer["connects"] == 2 and peer["connected"] and peer["rpc_calls"] >= 2


def test_the_async_node_counts_too(erl: ErlNode, epmd_port: int) -> None:
    async def main() -> dict[str, object]:
        async with Node(unique("pya") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as node:
            await asyncio.gather(*(node.rpc(erl.name, "erlang", "node", []) for _ in range(20)))
            return node.stats()

    peer = asyncio.run(main())["peers"][erl.name]  # type: ignore[index]
    assert peer["rpc_calls"] == 20 and peer["rpc_errors"] == 0 and peer["messages_out"] >= 20


def test_erlang_asks_the_node_what_it_is(epmd_port: int, erl: ErlNode) -> None:
    """``beambridge_node:info/0``, built into every node: what the dashboard lists."""
    import os

    with BlockingNode(unique("pyi") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                      role="web worker") as node:
        node.expose("mine", {"f": lambda: 1})
        me = Atom(node.name)
        for _ in range(3):
            node.rpc(erl.name, "erlang", "node", [])
        info = node.rpc(erl.name, "rpc", "call", [me, Atom("beambridge_node"), Atom("info"), []])
        assert info[Atom("os_pid")] == os.getpid() and info[Atom("role")] == b"web worker"
        assert info[Atom("exposes")] == [Atom("beambridge_node"), Atom("mine")]
        assert info[Atom("rpc_calls")] >= 3 and info[Atom("connections")] == 1
        assert info[Atom("memory_bytes")] > 1 << 20 and info[Atom("bytes_out")] > 0


def test_a_node_not_open_reports_nothing_and_opens_nothing() -> None:
    name = unique("pyz") + "@127.0.0.1"
    node = BlockingNode(name, COOKIE, start=False)
    assert node.stats() == {"node": name, "peers": {}, "totals": {}}
