"""The service's life: clients that hang up, SIGTERM with work in flight, and parts of the
service killed under it (through a real Erlang distribution connection with its cookie)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from beambridge import Atom, BlockingNode
from beambridge.compute import Client, Service, ServiceBusy

pytestmark = pytest.mark.erlang

J = "bbc_sample_jobs"


def port_of(svc: Service) -> int:
    return int(urllib.parse.urlsplit(svc.url).port or 0)


def until(predicate: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def call_in_background(client: Client, fun: str, *args: Any) -> tuple[dict[str, Any], threading.Thread]:
    """A synchronous call from a thread, once the service runs it; its answer (or error)
    lands in the dict under "slow"."""
    answers: dict[str, Any] = {}

    def slow() -> None:
        try:
            answers["slow"] = client.call(fun, *args)
        except Exception as error:  # the test looks at it
            answers["slow"] = error

    caller = threading.Thread(target=slow)
    caller.start()
    assert until(lambda: client.health()["jobs_running"] == 1)
    return answers, caller


def test_a_client_that_hangs_up_frees_its_job_slot() -> None:
    svc = Service(config={"max_jobs": 2, "max_jobs_per_client": 2}).start()
    try:
        c = Client(svc.url)
        body = b'{"op":"call","fun":"bbc_sample_jobs:sleep","args":[20000]}'
        with socket.create_connection(("127.0.0.1", port_of(svc)), timeout=10) as gone:
            gone.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert until(lambda: c.health()["jobs_running"] == 1)
        assert until(lambda: c.health()["jobs_running"] == 0), "the job outlived its client"
        assert c.call(f"{J}:add", 1, 2) == 3
    finally:
        svc.stop()


def test_sigterm_answers_requests_in_flight_before_stopping() -> None:
    svc = Service(config={"drain_ms": 8000}).start()
    try:
        c = Client(svc.url, retries=0)
        answers, caller = call_in_background(c, f"{J}:sleep_square", [1500, 7])
        assert svc.pid is not None
        os.kill(svc.pid, signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(ServiceBusy, match="stopping"):  # no new work while draining
            Client(svc.url, retries=0).call(f"{J}:add", 1, 1)
        caller.join(30)
        assert answers["slow"] == 49  # finished within the grace, answered with its result
    finally:
        svc.stop()


def test_sigterm_past_the_grace_answers_503_not_a_closed_connection() -> None:
    svc = Service(config={"drain_ms": 500}).start()
    try:
        c = Client(svc.url, retries=0)
        answers, caller = call_in_background(c, f"{J}:sleep", 20000)
        assert svc.pid is not None
        t0 = time.monotonic()
        os.kill(svc.pid, signal.SIGTERM)
        caller.join(30)
        assert isinstance(answers["slow"], ServiceBusy), answers
        assert "stopping" in str(answers["slow"])
        assert time.monotonic() - t0 < 15
    finally:
        svc.stop()


@pytest.fixture()
def node_on(tmp_path: Path) -> Any:
    """A Python node with the service's cookie: the way an operator's shell would kill parts."""
    def connect(svc: Service) -> BlockingNode:
        return BlockingNode(f"bbctest_{os.getpid()}_{time.monotonic_ns() % 10**6}@127.0.0.1",
                            cookie=svc.cookie, start_epmd=False)
    return connect


def test_killed_parts_come_back_without_taking_others_along(node_on: Any, tmp_path: Path) -> None:
    svc = Service(local_nodes=1, port=0, data_dir=tmp_path / "data").start()
    try:
        c = Client(svc.url)
        workers = svc.worker_pids()
        service = Atom(svc.node)
        with node_on(svc) as node:
            def kill(name: str) -> None:
                pid = node.rpc(service, "erlang", "whereis", [Atom(name)], timeout=10)
                node.rpc(service, "erlang", "exit", [pid, Atom("kill")], timeout=10)

            # the listener: back on the same port (it was started with port 0)
            kill("bbc_http")
            assert until(lambda: _health(svc) == 200)
            # the job registry: its running jobs go with it (nothing runs unseen), a recorded
            # background job runs again, and the worker nodes stay as they were
            job = c.submit("call", fun=f"{J}:sleep_square", args=[[1500, 6]])
            assert until(lambda: c.health()["jobs_running"] == 1)
            kill("bbc_jobs")
            assert until(lambda: _health(svc) == 200)
            assert c.job(job.id).result(timeout=30) == 36
            assert svc.worker_pids() == workers
            children = node.rpc(service, "supervisor", "which_children", [Atom("bbc_job_sup")], timeout=10)
            assert children == []
    finally:
        svc.stop()


def _health(svc: Service) -> int:
    try:
        Client(svc.url, retries=0, timeout=2).health()
        return 200
    except Exception:
        return 0


def test_a_hung_worker_node_blocks_neither_start_nor_health(tmp_path: Path) -> None:
    """A configured node whose OS process is stopped (SIGSTOP): its TCP port still accepts,
    so connecting to it hangs until net_setuptime; nothing of the service may wait on it."""
    import secrets
    import subprocess

    from beambridge import otp

    cookie = secrets.token_hex(8)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / ".erlang.cookie").write_text(cookie)
    (home / ".erlang.cookie").chmod(0o400)
    name = f"bbchung_{os.getpid()}_{secrets.token_hex(2)}@127.0.0.1"
    runtime = otp.default_runtime()
    env = {**runtime.environ(), "HOME": str(home), "ERL_EPMD_ADDRESS": "127.0.0.1"}
    hung = subprocess.Popen([str(runtime.erl), "-noinput", "-name", name, "-connect_all", "false"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # registered with EPMD
        os.kill(hung.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        svc = Service(config={"nodes": [name], "cookie": cookie}).start(timeout=60)
        started = time.monotonic() - t0
        try:
            c = Client(svc.url, timeout=3, retries=0)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # through at least one reconnect attempt
                health = c.health()
                assert health["status"] == "ok" and health["workers"] == 0
                assert c.call(f"{J}:add", 1, 2) == 3
                time.sleep(0.5)
            assert [n["status"] for n in c.nodes() if n["name"] == name] == ["down"]
        finally:
            svc.stop()
        print(f"service with a hung node up in {started:.1f} s")
    finally:
        os.kill(hung.pid, signal.SIGCONT)
        hung.kill()
        hung.wait(10)
