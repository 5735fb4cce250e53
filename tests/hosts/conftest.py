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
import dataclasses
import http.client
import json
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
from beambridge.compute import Client, Service
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


def _epmd_answers() -> bool:
    with socket.create_connection(("127.0.0.1", 4369), 1):
        return True


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
            wait_until(lambda h=host: h.call(_epmd_answers, 5),  # type: ignore[misc]
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
    pki: HostPki
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


@dataclass(frozen=True)
class HostPki:
    """A CA and, for each host, a certificate for its address and an ``ssl_dist_optfile``."""

    ca: Path
    certs: dict[str, pki.Cert]
    optfiles: dict[str, Path]


@pytest.fixture(scope="session")
def host_pki(net: Network, tmp_path_factory: pytest.TempPathFactory) -> HostPki:
    folder = tmp_path_factory.mktemp("hosts_pki")
    ca = pki.make_ca(folder)
    certs = {name: pki.make_cert(folder, name, ips=(host.ip,), dns=())
             for name, host in net.hosts.items()}
    return HostPki(ca, certs, {name: pki.optfile(folder / f"{name}.conf", cert, ca)
                               for name, cert in certs.items()})


def _needs_ssl() -> None:
    if not any((otp.default_runtime().root / "lib").glob("ssl-*")):
        pytest.skip("the Erlang runtime has no ssl application (TLS distribution needs it)")


@pytest.fixture(scope="session", params=MODES)
def cluster(request: pytest.FixtureRequest, net: Network, host_pki: HostPki,
            test_ebin: Path) -> Iterator[Cluster]:  # noqa: F811
    mode = request.param
    if mode == "tls":
        _needs_ssl()
    optfiles: dict[str, Path | None] = {
        name: host_pki.optfiles[name] if mode == "tls" else None for name in net.hosts}
    made = Cluster(mode, net, test_ebin, optfiles, host_pki)
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


@dataclass
class Compute:
    """The compute service on erl1, joined to worker nodes on both Erlang hosts (the cluster's
    ``n1`` and ``n2``); its HTTP(S) port on erl1's address, asked from the front end."""

    cluster: Cluster
    service: Service
    client_options: dict[str, Any]

    def run(self, fn: Callable[[Client], Any], timeout: float = 60.0) -> Any:
        """``fn(client)`` from the front-end host (every connection the client opens is there)."""
        def go() -> Any:
            with Client(self.service.url, token=self.service.token, **self.client_options) as c:
                return fn(c)
        return self.cluster.web.call(go, timeout)

    def workers_up(self) -> set[str]:
        return {n["name"] for n in self.run(lambda c: c.nodes(), 15)
                if n.get("role") == "remote" and n.get("status") == "up"}


@pytest.fixture(scope="session")
def compute(cluster: Cluster) -> Iterator[Compute]:
    erl1 = cluster.net["erl1"]
    token = secrets.token_hex(16)
    config: dict[str, Any] = {"nodes": [cluster.n1.name, cluster.n2.name], "cookie": COOKIE,
                              "bind": erl1.ip, "port": 8080 + MODES.index(cluster.mode)}
    flags = f"-kernel net_ticktime {TICK} " + " ".join(cluster.dist_args(erl1))
    client_options: dict[str, Any] = {"timeout": 30.0}
    if cluster.mode == "tls":  # HTTPS with erl1's certificate, verified with the cluster's CA
        cert = cluster.pki.certs["erl1"]
        config.update(tls_certfile=str(cert.cert), tls_keyfile=str(cert.key))
        client_options["cafile"] = str(cluster.pki.ca)
    else:
        config["allow_plain_http"] = True
        client_options["allow_plain_http"] = True
    base = otp.default_runtime()
    # the service's own node: a short net_ticktime, and TLS distribution in that mode
    runtime = dataclasses.replace(base, env={**base.env, "ERL_AFLAGS": flags})
    service = Service(config=config, token=token, runtime=runtime)
    erl1.call(service.start, 120)  # its erl is a child of a thread in erl1: it runs there
    made = Compute(cluster, service, client_options)
    try:
        wait_until(lambda: made.workers_up() == {cluster.n1.name, cluster.n2.name}, 30,
                   "both worker nodes joined")
        yield made
    finally:
        service.stop()


@dataclass
class WebApp:
    """``tests/hosts/flask_app.py`` under one gunicorn worker on the front end."""

    host: Host
    port: int
    proc: subprocess.Popen[bytes]

    def get(self, path: str, timeout: float = 20.0) -> tuple[int, Any, float]:
        """``(status, JSON body or text, seconds)`` of ``GET path``, asked from the front end."""
        def go() -> tuple[int, Any, float]:
            start = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read().decode()
            finally:
                conn.close()
            with contextlib.suppress(ValueError):
                return response.status, json.loads(body), time.monotonic() - start
            return response.status, body, time.monotonic() - start
        return self.host.call(go, timeout + 5)


#: the app's rpc_timeout and connect_timeout (BEAMBRIDGE_RPC_TIMEOUT/CONNECT_TIMEOUT)
WEB_TIMEOUT = 2.0


@pytest.fixture(scope="session")
def web_app(cluster: Cluster, compute: Compute) -> Iterator[WebApp]:
    web = cluster.web
    port = 8000 + MODES.index(cluster.mode)
    env = {"BEAMBRIDGE_ERLANG_NODE": cluster.n2.name, "BEAMBRIDGE_COOKIE": COOKIE,
           "BEAMBRIDGE_NODE_NAME": f"web_{cluster.mode}@{web.ip}",
           "BEAMBRIDGE_RPC_TIMEOUT": str(WEB_TIMEOUT), "BEAMBRIDGE_CONNECT_TIMEOUT": str(WEB_TIMEOUT),
           "HOSTS_LISTEN_HOST": web.ip, "HOSTS_TICKTIME": str(TICK),
           "HOSTS_TLS_OPTFILE": str(cluster.optfiles["web"] or ""),
           "HOSTS_COMPUTE_URL": compute.service.url, "HOSTS_COMPUTE_TOKEN": compute.service.token or "",
           "HOSTS_COMPUTE_CAFILE": str(cluster.pki.ca) if cluster.mode == "tls" else ""}
    command = [str(Path(sys.executable).parent / "gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}",
               "--timeout", "30", "--graceful-timeout", "2",
               "--chdir", str(Path(__file__).resolve().parents[2]), "tests.hosts.flask_app:app"]
    proc = web.popen(command, env={**os.environ, **env}, stderr=None)
    app = WebApp(web, port, proc)
    try:
        wait_until(lambda: proc.poll() is not None or app.get("/health", 2)[0] == 200, 30,
                   "gunicorn serving")
        assert proc.poll() is None, "gunicorn exited"
        yield app
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
