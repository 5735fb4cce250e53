"""Jinterface (Debian's erlang-jinterface) against a beambridge node: an ``OtpNode`` pings,
sends to a registered name and receives at its mailbox; an ``OtpConnection`` does ``sendRPC``.
The client is one Java source file, run by ``java`` itself (no build step)."""

from __future__ import annotations

from pathlib import Path

import pytest

from beambridge import Atom, Pid
from beambridge.node import BlockingNode

from .conftest import CLIENTS, COOKIE, client, unique

pytestmark = pytest.mark.erlang
A = Atom


def test_jinterface_pings_sends_receives_and_rpcs(py: BlockingNode, epmd_port: int,
                                                  jinterface: Path, tmp_path: Path) -> None:
    py.expose("pymod", {"add": lambda a, b: a + b})
    alive = unique("jnode")
    with py.mailbox(unique("inbox")) as inbox, \
            client(["java", "-cp", str(jinterface), str(CLIENTS / "BbClient.java"), alive, COOKIE,
                    py.name, str(inbox.name)], epmd_port, tmp_path) as proc:
        # net_adm:ping's {is_auth, Node} answered by our net_kernel
        assert inbox.receive(timeout=60) == (A("ping"), A("pong"))
        sender, hello, number = inbox.receive(timeout=10)
        assert isinstance(sender, Pid) and sender.node == A(f"{alive}@127.0.0.1")
        assert (hello, number) == (A("hello"), 42)
        py.send(sender, (A("reply"), b"hi"))
        assert inbox.receive(timeout=10) == (A("echoed"), (A("reply"), b"hi"))
        tag, total, missing = inbox.receive(timeout=20)
        assert (tag, total) == (A("rpc"), 42)
        assert missing == (A("badrpc"), (A("EXIT"), (A("undef"), [(A("pymod"), A("missing"), [], [])])))
        assert proc.wait(20) == 0
