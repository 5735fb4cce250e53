"""Real EPMD and real Erlang nodes for the node tests.

Everything binds to loopback, on ports found at runtime; every node gets a unique name; every
process started here is stopped by its pid. One private EPMD serves the whole session.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from beambridge import BlockingNode, otp
from beambridge.node import _epmd_client

HERE = Path(__file__).parent
COOKIE = "bb_test_cookie_" + secrets.token_hex(4)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate`` came true within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def in_threads(work: Callable[[int], None], count: int, timeout: float) -> list[BaseException]:
    """Run ``work(0)`` .. ``work(count - 1)`` in threads of their own, at once: what they raised."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as error:  # collected for the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(3)}"


def registered(port: int, timeout: float = 2.0) -> list[str]:
    try:
        found = asyncio.run(_epmd_client.names("127.0.0.1", port, timeout))
    except Exception:
        return []
    return [name for name, _ in found]


@pytest.fixture(scope="session")
def epmd_port() -> Iterator[int]:
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
def test_ebin() -> Path:
    out = Path(tempfile.mkdtemp(prefix="bb_ebin_"))
    subprocess.run([str(otp.erlc()), "-o", str(out), str(HERE / "erlang" / "bb_test.erl")],
                   check=True, timeout=120, capture_output=True)
    return out


class ErlNode:
    """One real ``erl`` node on loopback (``name@127.0.0.1``), stopped by pid."""

    def __init__(self, runtime: otp.Runtime, epmd_port: int, ebin: Path, *, name: str | None = None,
                 cookie: str = COOKIE, ticktime: int | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.runtime = runtime
        self.args = args
        self.epmd_port = epmd_port
        self.ebin = ebin
        self.alive = name or unique("erl")
        self.name = f"{self.alive}@127.0.0.1"
        self.cookie = cookie
        self.ticktime = ticktime
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        command = [str(self.runtime.erl), "-noinput", "-name", self.name, "-setcookie", self.cookie,
                   "-kernel", "inet_dist_use_interface", "{127,0,0,1}", "-pa", str(self.ebin)]
        if self.ticktime:
            command += ["-kernel", "net_ticktime", str(self.ticktime)]
        command += self.args
        env = self.runtime.environ({**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)})
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.alive in registered(self.epmd_port):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"erl {self.name} exited with {self.proc.returncode}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"erl {self.name} did not register with EPMD within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        deadline = time.monotonic() + 5
        while self.alive in registered(self.epmd_port) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture(scope="session")
def erl(otp_runtime: otp.Runtime, epmd_port: int, test_ebin: Path) -> Iterator[ErlNode]:
    """A long-lived Erlang node per OTP release, shared by the tests that do not hurt it."""
    node = ErlNode(otp_runtime, epmd_port, test_ebin)
    yield node
    node.stop()


@pytest.fixture
def fresh_erl(otp_runtime: otp.Runtime, epmd_port: int, test_ebin: Path) -> Iterator[ErlNode]:
    """An Erlang node for one test (which may kill it)."""
    node = ErlNode(otp_runtime, epmd_port, test_ebin)
    yield node
    node.stop()


@pytest.fixture
def py(epmd_port: int) -> Iterator[BlockingNode]:
    """A blocking Python node on the test EPMD, closed after the test."""
    node = BlockingNode(unique("py") + "@127.0.0.1", COOKIE, epmd_port=epmd_port)
    yield node
    node.close()
