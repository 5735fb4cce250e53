"""The receiver: messages sent from Erlang reach a Python handler; answers go back to pids."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beambridge import Atom, Pid, web
from beambridge.web import Receiver, WebSettings

from .conftest import COOKIE, ROOT, registered, unique

pytestmark = pytest.mark.erlang
A = Atom


def test_in_process_receiver(erl, web_settings: WebSettings, web_epmd: int,
                             caplog: pytest.LogCaptureFixture) -> None:
    name = unique("recv") + "@127.0.0.1"
    receiver = Receiver(name, cookie=COOKIE, epmd_port=web_epmd)
    seen: list[object] = []

    @receiver.handler
    def handle(message: object) -> object:
        seen.append(message)
        if message == A("boom"):
            raise RuntimeError("boom, as asked")
        return (A("answer"), message)

    @receiver.route("counter")
    def count(message: object) -> object:
        return len(seen)

    with receiver:
        alive = name.partition("@")[0]
        # a plain message to any name: handled, nothing sent back
        assert web.rpc("bbw_examples", "send", [(A("whatever"), A(name)), (A("note"), 1)]) == A("ok")
        # {Pid, Request}: the return value goes back to the pid
        assert web.rpc("bbw_examples", "request", [(A("x"), A(name)), b"q", 5000]) == (
            A("ok"), (A("answer"), b"q"))
        # a raising handler is logged and the receiver goes on
        with caplog.at_level(logging.ERROR, logger="beambridge.web.receiver"):
            assert web.rpc("bbw_examples", "request", [(A("x"), A(name)), A("boom"), 300]) == A(
                "timeout")
        assert "boom, as asked" in caplog.text
        # gen_server:call to the registered name (monitor + alias reply)
        assert web.rpc("bbw_examples", "gen_request", [(A(alive), A(name)), 7, 5000]) == (
            A("ok"), (A("answer"), 7))
        # a route of its own
        assert web.rpc("bbw_examples", "request", [(A("counter"), A(name)), 0, 5000]) == (A("ok"), 4)
        assert seen[0] == (A("note"), 1)
        assert receiver.failed == 1 and receiver.handled >= 4


def test_standalone_receiver_cli(erl, web_settings: WebSettings, web_epmd: int, tmp_path: Path) -> None:
    name = unique("cli_recv") + "@127.0.0.1"
    log = tmp_path / "got.txt"
    env = dict(os.environ, BB_RECEIVER_LOG=str(log), BEAMBRIDGE_EPMD_PORT=str(web_epmd),
               PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}")
    proc = subprocess.Popen([sys.executable, "-m", "beambridge", "receiver", "--name", name,
                             "--cookie", COOKIE, "tests.web.apps.handlers:handle"],
                            env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while name.partition("@")[0] not in registered(web_epmd) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        time.sleep(0.3)
        answer = web.rpc("bbw_examples", "request", [(A("any"), A(name)), b"hi", 5000])
        assert answer[0] == A("ok")
        got, message, os_pid = answer[1]
        assert (got, message, os_pid) == (A("got"), b"hi", proc.pid)
        # boom raises in the handler; the receiver logs it and keeps serving
        assert web.rpc("bbw_examples", "request", [(A("any"), A(name)), A("boom"), 500]) == A("timeout")
        assert web.rpc("bbw_examples", "request", [(A("any"), A(name)), 3, 5000])[1][1] == 3
        assert web.rpc("bbw_examples", "send", [(A("p"), A(name)), A("fire_and_forget")]) == A("ok")
        deadline = time.monotonic() + 5
        while "fire_and_forget" not in (log.read_text() if log.exists() else "") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text().splitlines() == ["b'hi'", "Atom('boom')", "3", "Atom('fire_and_forget')"]
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
    text = out.decode(errors="replace")
    assert "boom, as asked" in text and "Traceback" in text
    assert proc.returncode == 0, text


def test_pid_is_a_real_pid(erl, web_settings: WebSettings) -> None:
    assert isinstance(web.rpc("erlang", "self", []), Pid)
