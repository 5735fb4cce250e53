"""An Elixir node (Debian's elixir 1.14, on Debian's OTP: OTP 28 here has no compiler
application, which Elixir needs to boot) against beambridge: ``GenServer.call`` to the receiver,
``:erpc.call`` into a Python function, ``Process.monitor`` on names both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from beambridge import Atom, Pid
from beambridge.node import BlockingNode
from beambridge.web import Receiver

from .conftest import CLIENTS, COOKIE, client, unique

pytestmark = pytest.mark.erlang
A = Atom
DOWN, PROCESS = A("DOWN"), A("process")


def fail(text: bytes) -> None:
    raise ValueError(text.decode())


def test_elixir_calls_monitors_and_erpc(py: BlockingNode, epmd_port: int, elixir: str,
                                        tmp_path: Path) -> None:
    py.expose("pymod", {"add": lambda a, b: a + b, "fail": fail})
    receiver_name = unique("recv") + "@127.0.0.1"
    receiver = Receiver(receiver_name, lambda m: (A("answer"), m), cookie=COOKIE,
                        epmd_port=epmd_port)
    ex_name = unique("ex") + "@127.0.0.1"
    with py.mailbox(unique("results")) as results, py.mailbox(unique("watched")) as watched, \
            receiver, client([elixir, "--name", ex_name, "--cookie", COOKIE,
                              "--erl", "-kernel inet_dist_use_interface {127,0,0,1}",
                              str(CLIENTS / "client.exs"), py.name, receiver_name,
                              receiver_name.partition("@")[0], str(results.name),
                              str(watched.name)], epmd_port, tmp_path) as proc:
        def got(tag: str, timeout: float = 10) -> Any:
            message = results.receive(timeout=timeout)
            assert type(message) is tuple and message[0] == A(tag), message
            return message[1]

        # gen_server:call({Name, Node}, Req) answered by the receiver's handler
        assert got("gen_call", timeout=30) == (A("answer"), (A("hello"), 7))
        assert got("erpc") == 42
        kind, reason = got("erpc_error")
        assert kind == A("error") and reason[0] == A("exception")
        assert reason[1] == (A("python"), A("ValueError"), b"nope")
        # Process.monitor({name, py_node}): DOWN names {Name, Node}, as between Erlang nodes
        ref = got("monitoring")
        watched.close(A("bye"))
        assert got("down") == (DOWN, ref, PROCESS, (A(str(watched.name)), A(py.name)), A("bye"))
        ghost = got("ghost")
        assert type(ghost) is tuple and ghost[0] == DOWN
        assert ghost[2:] == (PROCESS, (A("bb_no_such_name"), A(py.name)), A("noproc"))
        # and Python monitors a name on the Elixir node
        main = got("registered")
        assert isinstance(main, Pid) and main.node == A(ex_name)
        with py.mailbox() as mb:
            ref = mb.monitor(("bb_elixir_named", ex_name))
            py.send(("bb_elixir_named", ex_name), (A("exit"), A("finished")))
            assert mb.receive(timeout=5) == (
                DOWN, ref, PROCESS, (A("bb_elixir_named"), A(ex_name)), A("finished"))
        py.send(main, A("finish"))
        assert proc.wait(20) == 0
