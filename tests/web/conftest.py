"""Real Erlang nodes, a private EPMD and real web servers for the web tests.

Loopback only, ports found at runtime, unique node names, every process stopped by its pid.
One private EPMD serves the whole session (never one we did not start).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beambridge import otp
from beambridge.web import WebSettings, close_node, configure
from tests.node.conftest import COOKIE, ErlNode, free_port, registered, unique

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

__all__ = ["COOKIE", "ErlNode", "Server", "free_port", "http_get", "registered", "unique"]


@pytest.fixture(scope="session")
def web_epmd() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(["epmd", "-port", str(port), "-address", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.kill()
    proc.wait(10)


@pytest.fixture(scope="session")
def web_ebin() -> Path:
    return otp.build_erlang_app("beambridge_web")


@pytest.fixture(scope="session")
def system_runtime() -> otp.Runtime:
    return otp.default_runtime()


@pytest.fixture(scope="session")
def erl(system_runtime: otp.Runtime, web_epmd: int, web_ebin: Path) -> Iterator[ErlNode]:
    """A long-lived Erlang node (system OTP) with beambridge_web loaded; tests must not hurt it."""
    node = ErlNode(system_runtime, web_epmd, web_ebin, name=unique("web_erl"))
    yield node
    node.stop()


@pytest.fixture
def fresh_erl(system_runtime: otp.Runtime, web_epmd: int, web_ebin: Path) -> Iterator[ErlNode]:
    """An Erlang node for one test, which may stop and restart it."""
    node = ErlNode(system_runtime, web_epmd, web_ebin, name=unique("web_fresh"))
    yield node
    node.stop()


@pytest.fixture
def web_settings(erl: ErlNode, web_epmd: int) -> Iterator[WebSettings]:
    """This process's default web node pointed at ``erl``; closed after the test."""
    settings = WebSettings(node_name=unique("pyweb"), erlang_node=erl.name, cookie=COOKIE,
                           epmd_port=web_epmd, rpc_timeout=5.0, connect_timeout=3.0)
    configure(settings)
    yield settings
    close_node()


def server_env(erl_name: str, epmd_port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "BEAMBRIDGE_ERLANG_NODE": erl_name,
        "BEAMBRIDGE_COOKIE": COOKIE,
        "BEAMBRIDGE_EPMD_PORT": str(epmd_port),
        "BEAMBRIDGE_NODE_NAME": unique("srv") + "@127.0.0.1",
        "BEAMBRIDGE_RPC_TIMEOUT": "3",
        "BEAMBRIDGE_CONNECT_TIMEOUT": "2",
        "PYTHONPATH": str(ROOT) + os.pathsep + str(ROOT / "src"),
    })
    env.update(extra)
    return env


def http_get(port: int, path: str, *, timeout: float = 10.0, data: bytes | None = None,
             method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def http_json(port: int, path: str, timeout: float = 10.0) -> Any:
    status, _, body = http_get(port, path, timeout=timeout)
    assert status == 200, (status, body)
    return json.loads(body)


class Server:
    """A real web server process on loopback, stopped by its pid (process group)."""

    def __init__(self, command: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.port = port
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(command, env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError):
                status, _, _ = http_get(port, "/const", timeout=2)
                if status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within 60 s:\n{self.output()}")

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        self._log_file.close()


def suffix() -> str:
    return secrets.token_hex(3)
