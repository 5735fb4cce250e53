"""erl_interface's ``ei`` (Debian's erlang-dev): a C node, compiled here with gcc, connects to a
beambridge node, sends to a registered name, gets an answer at its pid, and calls ``ei_rpc``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from beambridge import Atom, Pid
from beambridge.node import BlockingNode

from .conftest import CLIENTS, COOKIE, client, unique

pytestmark = pytest.mark.erlang
A = Atom


@pytest.fixture(scope="session")
def ei_client(erl_interface: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("ei") / "ei_client"
    subprocess.run(["gcc", "-Wall", "-Werror", "-o", str(binary), str(CLIENTS / "ei_client.c"),
                    "-I", str(erl_interface / "include"), "-L", str(erl_interface / "lib"),
                    "-lei", "-lpthread"], check=True, capture_output=True, timeout=120)
    return binary


def test_ei_node_sends_receives_and_rpcs(py: BlockingNode, epmd_port: int, ei_client: Path,
                                         tmp_path: Path) -> None:
    py.expose("pymod", {"add": lambda a, b: a + b})
    alive = unique("ei")
    with py.mailbox(unique("inbox")) as inbox, \
            client([str(ei_client), alive, COOKIE, py.name, str(inbox.name)], epmd_port,
                   tmp_path) as proc:
        sender, hello, number = inbox.receive(timeout=15)
        assert isinstance(sender, Pid) and sender.node == A(f"{alive}@127.0.0.1")
        assert (hello, number) == (A("hello"), 42)
        py.send(sender, (A("reply"), b"hi"))
        assert inbox.receive(timeout=10) == (A("echoed"), (A("reply"), b"hi"))
        # ei_rpc: {call, pymod, add, [40, 2], user} to rex, {rex, Result} back
        assert inbox.receive(timeout=10) == (A("rpc"), 42)
        assert inbox.receive(timeout=10) == (A("rpc_missing"), (A("badrpc"), (A("EXIT"), (
            A("undef"), [(A("pymod"), A("missing"), [40, 2], [])]))))
        assert proc.wait(10) == 0
