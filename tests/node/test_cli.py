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


def test_messages_say_why_and_name_the_flag(erl: ErlNode, epmd_port: int, tmp_path: object) -> None:
    """What a new user sees: each failure says its cause in one line and names the flag to fix it."""
    done = cli(epmd_port, "ping", erl.name, "--cookie", "wrong-cookie", "--timeout", "5")
    assert (done.returncode, done.stdout.strip()) == (3, "pang")
    assert "refused us: wrong cookie" in done.stderr and "--cookie" in done.stderr, done.stderr

    done = cli(epmd_port, "ping", "nobody_here@127.0.0.1", "--cookie", COOKIE, "--timeout", "3")
    assert (done.returncode, done.stdout.strip()) == (3, "pang")
    assert done.stderr.strip() == ("beambridge: nobody_here@127.0.0.1 is unreachable: 'nobody_here' "
                                   "is not registered with EPMD on 127.0.0.1"), done.stderr

    done = cli(epmd_port, "rpc", erl.name, "lists", "nosuchfun", "[1]", "--cookie", COOKIE)
    assert done.returncode == 1
    assert f"error: undef: lists:nosuchfun/1 is not defined on {erl.name}" in done.stderr, done.stderr
    done = cli(epmd_port, "rpc", erl.name, "no_such_module_bb", "f", "[1, 2]", "--cookie", COOKIE)
    assert done.returncode == 1 and "no_such_module_bb:f/2 is not defined" in done.stderr

    # No EPMD where we look: one "no EPMD", the whole command inside backticks, flags not kwargs.
    for command in (["names", "--epmd-port", "1"], ["names", "--port", "1"],
                    ["ping", erl.name, "--cookie", COOKIE, "--epmd-port", "1"]):
        done = cli(epmd_port, *command)
        assert done.returncode == 3, (command, done.stderr)
        assert done.stderr.count("no EPMD") == 1 and "`epmd -daemon -port 1`" in done.stderr
        assert "--epmd-port" in done.stderr and "start_epmd" not in done.stderr, done.stderr

    env = {k: v for k, v in os.environ.items() if k != "ERLANG_COOKIE"}
    done = subprocess.run([sys.executable, "-m", "beambridge", "ping", erl.name],
                          env={**env, "HOME": str(tmp_path), "ERL_EPMD_PORT": str(epmd_port)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "pass --cookie" in done.stderr and "cookie=" not in done.stderr


def test_epmd_port_flag_is_the_same_everywhere(erl: ErlNode, epmd_port: int) -> None:
    for command in ("names", "ping", "rpc", "send", "receiver"):
        shown = cli(epmd_port, command, "--help").stdout
        assert "--epmd-port PORT" in shown and "$ERL_EPMD_PORT" in shown, (command, shown)
        assert "--port" not in shown.replace("--epmd-port", ""), (command, shown)
    assert f"now {epmd_port}" in " ".join(cli(epmd_port, "names", "--help").stdout.split())
    # The flag wins over the environment (which points nowhere here).
    done = cli(1, "names", "--epmd-port", str(epmd_port))
    assert done.returncode == 0 and f"name {erl.alive} at port" in done.stdout, done.stderr
    done = cli(1, "ping", erl.name, "--cookie", COOKIE, "--epmd-port", str(epmd_port))
    assert (done.returncode, done.stdout.strip()) == (0, "pong"), done.stderr
    done = cli(epmd_port, "names", "--epmd-port", "http")
    assert done.returncode == 2 and "--epmd-port: must be a TCP port" in done.stderr


def test_verbose_after_the_subcommand(erl: ErlNode, epmd_port: int) -> None:
    for command in (["-v", "ping", erl.name], ["ping", "-v", erl.name], ["ping", erl.name, "-v"]):
        done = cli(epmd_port, *command, "--cookie", COOKIE)
        assert done.returncode == 0 and "INFO beambridge.node" in done.stderr, (command, done.stderr)
    done = cli(epmd_port, "ping", erl.name, "--cookie", COOKIE)
    assert "INFO" not in done.stderr
    done = cli(epmd_port, "-v", "ping", "-v", erl.name, "--cookie", COOKIE)
    assert "DEBUG beambridge.node" in done.stderr and "threads use the socket" in done.stderr
