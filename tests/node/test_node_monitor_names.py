"""Monitors set on registered names, both ways, against real nodes (OTP 25 and 28).

BEAM reports a monitor on a name as ``{'DOWN', Ref, process, {Name, Node}, Reason}``, local
names included, whatever the wire carries (MONITOR_P_EXIT names the bare atom): seen with
``erlang:monitor(process, {Name, Node})`` between real nodes and from a real node to ours.
"""

from __future__ import annotations

import time

import pytest

from beambridge import Atom, Pid
from beambridge.node import BlockingNode

from .conftest import ErlNode, unique

pytestmark = pytest.mark.erlang
A = Atom
DOWN, PROCESS = A("DOWN"), A("process")


def test_python_monitors_an_erlang_name(py: BlockingNode, erl: ErlNode) -> None:
    name = unique("echo")
    py.rpc(erl.name, "bb_test", "start_echo", [A(name)])
    with py.mailbox() as mb:
        ref = mb.monitor((name, erl.name))
        py.send((name, erl.name), A("stop"))
        assert mb.receive(timeout=5) == (DOWN, ref, PROCESS, (A(name), A(erl.name)), A("normal"))
        ghost = unique("ghost")
        ref = mb.monitor((ghost, erl.name))
        assert mb.receive(timeout=5) == (DOWN, ref, PROCESS, (A(ghost), A(erl.name)), A("noproc"))
        # a monitor on a pid still names the pid
        pid = py.rpc(erl.name, "bb_test", "start_echo", [A(unique("echo"))])
        ref = mb.monitor(pid)
        py.send(pid, A("stop"))
        assert mb.receive(timeout=5) == (DOWN, ref, PROCESS, pid, A("normal"))


def test_erlang_monitors_a_python_name(py: BlockingNode, erl: ErlNode) -> None:
    with py.mailbox() as report:
        name = unique("pyname")
        target = py.mailbox(name)
        watcher, ref = py.rpc(erl.name, "bb_test", "monitorer", [(A(name), A(py.name)), report.pid])
        target.close(A("bye"))
        assert report.receive(timeout=5) == (
            A("forwarded"), watcher, (DOWN, ref, PROCESS, (A(name), A(py.name)), A("bye")))
        ghost = unique("pyghost")
        watcher, ref = py.rpc(erl.name, "bb_test", "monitorer", [(A(ghost), A(py.name)), report.pid])
        assert report.receive(timeout=5) == (
            A("forwarded"), watcher, (DOWN, ref, PROCESS, (A(ghost), A(py.name)), A("noproc")))


def test_python_monitors_its_own_names(py: BlockingNode) -> None:
    with py.mailbox() as mb:
        name = unique("local")
        target = py.mailbox(name)
        ref = mb.monitor(name)
        target.close(A("done"))
        assert mb.receive(timeout=5) == (DOWN, ref, PROCESS, (A(name), A(py.name)), A("done"))
        ref = mb.monitor((name, py.name))  # gone now: noproc, as erlang:monitor/2 says
        assert mb.receive(timeout=5) == (DOWN, ref, PROCESS, (A(name), A(py.name)), A("noproc"))


def test_a_name_monitor_sees_noconnection(py: BlockingNode, fresh_erl: ErlNode) -> None:
    name = unique("echo")
    pid = py.rpc(fresh_erl.name, "bb_test", "start_echo", [A(name)])
    assert isinstance(pid, Pid)
    with py.mailbox() as mb:
        ref = mb.monitor((name, fresh_erl.name))
        time.sleep(0.1)
        fresh_erl.stop()
        assert mb.receive(timeout=10) == (
            DOWN, ref, PROCESS, (A(name), A(fresh_erl.name)), A("noconnection"))
        nowhere = unique("nonode") + "@127.0.0.1"
        ref = mb.monitor(("x", nowhere))
        assert mb.receive(timeout=15) == (DOWN, ref, PROCESS, (A("x"), A(nowhere)), A("noconnection"))
