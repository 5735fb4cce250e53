"""Peers without a name of their own (``NAME_ME``) and what erl_call sends, on OTP 25 and 28.

``erl_call -R`` and ``erl -name undefined@127.0.0.1`` ask the node they connect to for a name;
a BEAM node answers ``named:`` with ``integer_to_list(rand:uniform(1 bsl 64), 36)`` at the
host the peer sent (seen against real ``erl``: ``erl_call -R -a 'erlang node'`` works, and a
nameless ``erl``'s ``node()`` becomes ``'3P2J1M6V1DFD2@127.0.0.1'``-like). erl_call writes the
arguments ``[a|b]`` as two bare terms, leaving an atom after the message's term; BEAM delivers
the message and keeps the connection, and so must we.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from beambridge import Atom, Pid, otp
from beambridge.node import BlockingNode

from .conftest import COOKIE, client, unique

pytestmark = pytest.mark.erlang
A = Atom
DYNAMIC = re.compile(r"[0-9A-Z]{1,13}")


def erl_call(runtime: otp.Runtime, epmd_port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = runtime.environ({**os.environ, "ERL_EPMD_PORT": str(epmd_port)})
    return subprocess.run([str(runtime.tool("erl_call")), "-c", COOKIE, *args], env=env,
                          capture_output=True, text=True, timeout=30)


def test_erl_call_with_a_dynamic_name(py: BlockingNode, otp_runtime: otp.Runtime,
                                      epmd_port: int) -> None:
    py.expose("pymod", {"peers": lambda: [A(n) for n in py.nodes()]})
    done = erl_call(otp_runtime, epmd_port, "-R", "-name", py.name, "-a", "pymod peers []")
    assert done.returncode == 0, done.stderr
    # erl_call prints the list of our connections: just itself, under the name we gave it
    found = re.fullmatch(r"\['([^'@]+)@([^']+)'\]", done.stdout.strip())
    assert found is not None, done.stdout
    assert DYNAMIC.fullmatch(found[1])


def test_nameless_erl_is_named_by_us(py: BlockingNode, otp_runtime: otp.Runtime, epmd_port: int,
                                     tmp_path: Path) -> None:
    py.expose("pymod", {"add": lambda a, b: a + b})
    with py.mailbox(unique("inbox")) as inbox:
        script = (
            # a nameless node does not connect on demand (dist_auto_connect never): it connects
            # once, explicitly, and takes the name it is given
            f"Py = '{py.name}', Inbox = {{'{inbox.name}', Py}}, true = net_kernel:connect_node(Py),"
            "Inbox ! {self(), node(), rpc:call(Py, pymod, add, [1, 2]),"
            "         erpc:call(Py, pymod, add, [40, 2], 5000)},"
            "receive stop -> ok after 10000 -> ok end, halt().")
        command = [str(otp_runtime.erl), "-noinput", "-name", "undefined@127.0.0.1",
                   "-setcookie", COOKIE, "-eval", script]
        with client(command, epmd_port, tmp_path, env=otp_runtime.environ()) as proc:
            sender, name, by_rpc, by_erpc = inbox.receive(timeout=20)
            assert isinstance(sender, Pid) and sender.node == name
            alive, _, host = str(name).partition("@")
            assert DYNAMIC.fullmatch(alive) and host == "127.0.0.1"
            assert (by_rpc, by_erpc) == (3, 42)
            assert str(name) in py.nodes()
            py.send(sender, A("stop"))
            assert proc.wait(20) == 0


@pytest.mark.parametrize("arguments", ["[a|b]", "[x, [1|2]]"])
def test_erl_call_arguments_with_bytes_after_the_term(py: BlockingNode, otp_runtime: otp.Runtime,
                                                      epmd_port: int, arguments: str) -> None:
    py.expose("pymod", {"echo": lambda *args: list(args)})
    done = erl_call(otp_runtime, epmd_port, "-name", py.name, "-a", f"pymod echo {arguments}")
    # the rpc arrives (its arguments garbled by erl_call, not a list: undef, as our rex says) and
    # is answered on the same connection
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("{badrpc, {'EXIT', {undef, [{pymod, echo"), done.stdout
    # and a well-formed call still works afterwards
    done = erl_call(otp_runtime, epmd_port, "-name", py.name, "-a", "pymod echo [1, b]")
    assert (done.returncode, done.stdout.strip()) == (0, "[1, b]"), done.stderr
