"""A test network of real hosts: a front end (``web``, 10.77.X.1) and two Erlang hosts (``erl1``,
``erl2``), each a network namespace with its own EPMD on port 4369, on one switch.

The network is built once per session; a ``Cluster`` per distribution mode (plain TCP and TLS,
``-proto_dist inet_tls`` with a certificate for each host's address) runs one long-named
Erlang node on each Erlang host and a ``BlockingNode`` on the front end, shared by the tests
(the partition tests put the link back before they end, and check the next call reconnects).
Where namespaces cannot be made the tests skip with the reason; under CI (``$CI``) they fail.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from beambridge import BlockingNode, otp
from beambridge.node import epmd_names
from tests.hosts.netns import Host, Network, unavailable
from tests.node.conftest import test_ebin  # noqa: F401 (fixture)
from tests.tls import pki

#: net_ticktime on both sides: a dead or silent peer is detected in 3 to 5 s
TICK = 4
COOKIE = "bb_hosts_" + secrets.token_hex(6)
MODES = ("tcp", "tls")


def wait_until(check: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``check`` until it answers something true; ``AssertionError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            found = check()
            if found:
                return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(step)


def host_registered(host: Host) -> list[str]:
    """Names registered with the host's own EPMD (asked from inside the host)."""
    return [name for name, _ in host.call(lambda: epmd_names("127.0.0.1", 4369, timeout=2), 10)]


@pytest.fixture(scope="session")
def net() -> Iterator[Network]:
    """The hosts, each with its EPMD on 4369; everything is killed and deleted at the end."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the multi-host tests: {reason}")
        pytest.skip(reason)
    network = Network(["web", "erl1", "erl2"])
    try:
        epmd = str(otp.default_runtime().tool("epmd"))
        for host in network.hosts.values():
            host.popen([epmd])  # all addresses of the host: only its own exist there
        for host in network.hosts.values():
            wait_until(lambda h=host: h.call(  # type: ignore[misc]
                lambda: socket.create_connection(("127.0.0.1", 4369), 1).close() or True, 5),
                10, f"EPMD on {host.name}")
        yield network
    finally:
        network.close()


class HostErl:
    """An ``erl -name NAME@HOST_IP`` node on a host, on that host's EPMD; killed by pid."""

    def __init__(self, host: Host, alive: str, ebin: Path, args: tuple[str, ...] = ()) -> None:
        self.host = host
        self.alive = alive
        self.name = f"{alive}@{host.ip}"
        runtime = otp.default_runtime()
        command = [str(runtime.erl), "-noinput", "-name", self.name, "-setcookie", COOKIE,
                   "-start_epmd", "false", "-connect_all", "false",
                   "-kernel", "net_ticktime", str(TICK), "-pa", str(ebin), *args]
        self.proc = host.popen(command, env=runtime.environ())
        wait_until(lambda: self.proc.poll() is not None or alive in host_registered(host), 30,
                   f"{self.name} registered")
        if self.proc.poll() is not None:
            raise RuntimeError(f"erl {self.name} exited with {self.proc.returncode}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Cluster:
    """One distribution mode's nodes: ``py`` on the front end, ``n1``/``n2`` on erl1/erl2."""

    mode: str
    net: Network
    ebin: Path
    optfiles: dict[str, Path | None]
    py: BlockingNode = field(init=False)
    n1: HostErl = field(init=False)
    n2: HostErl = field(init=False)
    made: list[BlockingNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.n1 = self.erlang(self.net["erl1"], "n1")
        self.n2 = self.erlang(self.net["erl2"], "n2")
        self.py = self.python("py")

    @property
    def web(self) -> Host:
        return self.net["web"]

    def dist_args(self, host: Host) -> tuple[str, ...]:
        optfile = self.optfiles[host.name]
        return () if optfile is None else ("-proto_dist", "inet_tls", "-ssl_dist_optfile", str(optfile))

    def erlang(self, host: Host, alive: str) -> HostErl:
        return HostErl(host, f"{alive}_{self.mode}", self.ebin, self.dist_args(host))

    def python(self, alive: str, host: Host | None = None, **options: Any) -> BlockingNode:
        """A ``BlockingNode`` living on ``host`` (default: the front end), closed with the cluster."""
        where = host or self.web
        name = f"{alive}_{self.mode}_{secrets.token_hex(2)}@{where.ip}"
        settings: dict[str, Any] = {"listen_host": where.ip, "net_ticktime": TICK,
                                    "connect_timeout": 3.0, "handshake_timeout": 3.0,
                                    "tls": self.optfiles[where.name], **options}
        node = where.call(lambda: BlockingNode(name, COOKIE, **settings), 30)
        self.made.append(node)
        return node

    def close(self) -> None:
        for node in self.made:
            with contextlib.suppress(Exception):
                node.close(5)
        for erl in (self.n1, self.n2):
            erl.stop()


@pytest.fixture(scope="session")
def host_pki(net: Network, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and, for each host, a certificate for its address and an ``ssl_dist_optfile``."""
    folder = tmp_path_factory.mktemp("hosts_pki")
    ca = pki.make_ca(folder)
    return {name: pki.optfile(folder / f"{name}.conf",
                              pki.make_cert(folder, name, ips=(host.ip,), dns=()), ca)
            for name, host in net.hosts.items()}


def _needs_ssl() -> None:
    if not any((otp.default_runtime().root / "lib").glob("ssl-*")):
        pytest.skip("the Erlang runtime has no ssl application (TLS distribution needs it)")


@pytest.fixture(scope="session", params=MODES)
def cluster(request: pytest.FixtureRequest, net: Network, host_pki: dict[str, Path],
            test_ebin: Path) -> Iterator[Cluster]:  # noqa: F811
    mode = request.param
    if mode == "tls":
        _needs_ssl()
    optfiles: dict[str, Path | None] = {
        name: host_pki[name] if mode == "tls" else None for name in net.hosts}
    made = Cluster(mode, net, test_ebin, optfiles)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def links_back(net: Network) -> Iterator[Network]:
    """For a test that cuts or freezes hosts: every link up and every process running after it."""
    yield net
    for host in net.hosts.values():
        host.restore()
        host.thaw()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, outcome)``: the value, or the exception raised."""
    start = time.monotonic()
    try:
        outcome: Any = fn()
    except Exception as error:
        outcome = error
    return time.monotonic() - start, outcome


def gunicorn(host: Host, app: str, env: dict[str, str], port: int = 8000) -> subprocess.Popen[bytes]:
    """One gunicorn worker serving ``app`` on the host's loopback (the test asks from inside)."""
    command = [str(Path(sys.executable).parent / "gunicorn"), "-w", "1",
               "-b", f"127.0.0.1:{port}", "--timeout", "30", "--graceful-timeout", "2",
               "--chdir", str(Path(__file__).resolve().parents[2]), app]
    return host.popen(command, env={**os.environ, **env})
