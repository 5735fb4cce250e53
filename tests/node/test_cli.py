"""``beambridge ping | names | rpc | send`` against real Erlang nodes, as a shell script sees it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import COOKIE, ErlNode

pytestmark = pytest.mark.erlang


def cli(epmd_port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ERL_EPMD_PORT": str(epmd_port)}
    return subprocess.run([sys.executable, "-m", "beambridge", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_ping_names_rpc_send(erl: ErlNode, epmd_port: int) -> None:
    done = cli(epmd_port, "ping", erl.name, "--cookie", COOKIE)
    assert (done.returncode, done.stdout.strip()) == (0, "pong"), done.stderr

    done = cli(epmd_port, "names", "127.0.0.1", "--port", str(epmd_port))
    assert done.returncode == 0 and f"name {erl.alive} at port" in done.stdout

    done = cli(epmd_port, "rpc", erl.name, "lists", "reverse", '[[1, two, "three", <<"four">>]]',
               "--cookie", COOKIE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[<<"four">>,"three",two,1]'

    done = cli(epmd_port, "rpc", erl.name, "erlang", "list_to_tuple", "[[a, 1.5, #{k => v}]]",
               "--cookie", COOKIE)
    assert done.stdout.strip() == "{a,1.5,#{k => v}}"

    # A registered process that leaves a 3-tuple unread: `send` puts it in its message queue.
    started = cli(epmd_port, "rpc", erl.name, "bb_test", "start_echo", "[bb_cli_echo]",
                  "--cookie", COOKIE)
    assert started.returncode == 0, started.stderr
    pid_text = started.stdout.strip()
    done = cli(epmd_port, "send", erl.name, "bb_cli_echo", '{hello, <<"x">>, 42}', "--cookie", COOKIE)
    assert done.returncode == 0, done.stderr
    done = cli(epmd_port, "rpc", erl.name, "erlang", "process_info", f"[{pid_text}, messages]",
               "--cookie", COOKIE)
    assert done.stdout.strip() == '{messages,[{hello,<<"x">>,42}]}', (pid_text, done.stderr)


def test_exit_codes(erl: ErlNode, epmd_port: int) -> None:
    done = cli(epmd_port, "rpc", erl.name, "erlang", "error", "[boom]", "--cookie", COOKIE)
    assert done.returncode == 1 and "boom" in done.stderr

    done = cli(epmd_port, "rpc", erl.name, "lists", "reverse", "[1,", "--cookie", COOKIE)
    assert done.returncode == 2 and "ARGS" in done.stderr

    done = cli(epmd_port, "ping", "nobody_here@127.0.0.1", "--cookie", COOKIE, "--timeout", "3")
    assert (done.returncode, done.stdout.strip()) == (3, "pang")

    done = cli(epmd_port, "ping", erl.name, "--cookie", "wrong-cookie", "--timeout", "5")
    assert done.returncode == 3 and done.stdout.strip() == "pang"

    done = cli(epmd_port, "rpc", erl.name, "timer", "sleep", "[5000]", "--cookie", COOKIE,
               "--timeout", "1")
    assert done.returncode == 4, (done.returncode, done.stderr)
