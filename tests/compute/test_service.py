"""The compute service end to end: every endpoint and error code, results against plain
Python, failures, cancel, TTL, concurrency, and a worker node killed with SIGKILL mid-job."""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import re
import signal
import sysconfig
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from beambridge import ConnectionLost, RemoteError, TransportError, UsageError
from beambridge.compute import (
    AsyncClient,
    BadRequest,
    Client,
    JobCancelled,
    JobFailed,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    Service,
    ServiceBusy,
    Unauthorized,
    send_to_erlang,
)

TOKEN = "s3cret-token"  # the one in conftest.py

pytestmark = pytest.mark.erlang

J = "bbc_sample_jobs"


def raw(svc: Service, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """One plain HTTP exchange, to see status codes and error bodies as a client would (a
    legitimate one: POST and DELETE go as JSON unless ``headers`` say otherwise)."""
    parts = urllib.parse.urlsplit(svc.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    json_type = {"Content-Type": "application/json"} if method in ("POST", "DELETE") else {}
    try:
        conn.request(method, path, body=body, headers={**json_type, **(headers or {})})
        answer = conn.getresponse()
        assert answer.getheader("Content-Type") == "application/json"
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def stdlib_files(limit: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(str(p) for p in root.glob("*.py"))[:limit]


def python_word_count(paths: list[str]) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for path in paths:
        counts.update(w.decode().lower() for w in re.findall(rb"[A-Za-z]+", Path(path).read_bytes()))
    return dict(counts)


# -- endpoints ---------------------------------------------------------------------------

def test_health_and_nodes(service: Service) -> None:
    client = service.client()
    health = client.health()
    assert health["status"] == "ok" and health["workers"] == 2
    nodes = client.nodes()
    assert [n["role"] for n in nodes] == ["service", "local", "local"]
    for node in nodes:
        assert node["status"] == "up"
        assert isinstance(node["os_pid"], int) and node["schedulers"] >= 1
        assert {"run_queue", "process_count", "memory_bytes"} <= node.keys()


def test_operations_match_plain_python(service: Service) -> None:
    client = service.client()
    items = list(range(-50, 150))
    assert client.map(f"{J}:square", items) == [x * x for x in items]
    assert client.map(f"{J}:square", items, chunk=7, processes=3, nodes="none") == [x * x for x in items]
    assert client.filter(f"{J}:is_even", items, chunk=3) == [x for x in items if x % 2 == 0]
    assert client.fold(f"{J}:sum", items, 0, chunk=11) == sum(items)
    assert client.fold(f"{J}:sum", items, 0, fuse=f"{J}:add") == sum(items)
    shuffled = sorted(items, key=lambda x: (x * 7919) % 101)
    assert client.sort(shuffled, chunk=13) == sorted(items)
    assert client.sort(shuffled, f"{J}:le") == sorted(items)
    assert client.call(f"{J}:add", 2, 40) == 42
    assert client.call(f"{J}:echo", {"a": [1, 2.5, "x", None, True]}) == {"a": [1, 2.5, "x", None, True]}
    assert client.map(f"{J}:square", []) == []


def test_mapreduce_word_count_matches_python(service: Service) -> None:
    paths = stdlib_files(40)
    counts = service.client().mapreduce(f"{J}:word_count", paths, f"{J}:sum_counts", chunk=2)
    assert counts == python_word_count(paths)
    grouped = service.client().mapreduce(f"{J}:word_count", paths[:3])
    expected = {w: [n] for w, n in python_word_count(paths[:1]).items()}
    assert all(grouped[w][0] == v[0] for w, v in expected.items())


def test_work_spreads_over_both_workers(service: Service) -> None:
    result = service.client().map(f"{J}:where", list(range(40)), chunk=1)
    assert [x for x, _ in result] == list(range(40))
    # Instant items may all go to whichever worker was ready first; items that take a while
    # cannot: each worker has only so many slots.
    nodes = service.client().map(f"{J}:sleep", [30] * 40, chunk=1)
    assert set(nodes) == {n["name"] for n in service.client().nodes() if n["role"] == "local"}


# -- errors ------------------------------------------------------------------------------

def job(spec: dict[str, Any]) -> bytes:
    return json.dumps(spec).encode()


def test_error_codes_have_json_bodies(service: Service) -> None:
    running = service.client().submit("map", fun=f"{J}:sleep_square", items=[[30, i] for i in range(20)],
                                      chunk=1)
    cases = [
        ("POST", "/jobs", b"{not json", 400, "bad_json"),
        ("POST", "/jobs", b"[1,2]", 400, "bad_request"),
        ("POST", "/jobs", json.dumps({"op": "explode", "items": []}).encode(), 400, "bad_request"),
        ("POST", "/jobs", json.dumps({"op": "map", "fun": f"{J}:square"}).encode(), 400, "bad_request"),
        ("POST", "/jobs", json.dumps({"op": "map", "fun": "os:cmd", "items": []}).encode(), 404,
         "unknown_function"),
        ("POST", "/jobs", json.dumps({"op": "map", "fun": f"{J}:nope", "items": []}).encode(), 404,
         "unknown_function"),
        ("POST", "/jobs", job({"op": "call", "fun": f"{J}:sleep", "args": [5000], "timeout": 100}),
         504, "timeout"),
        ("POST", "/jobs", job({"op": "call", "fun": f"{J}:fail", "args": [1]}), 500, "job_failed"),
        ("GET", "/jobs/0123456789abcdef", None, 404, "unknown_job"),
        ("DELETE", "/jobs/0123456789abcdef", None, 404, "unknown_job"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("PUT", "/jobs", None, 405, "method_not_allowed"),
    ]
    for method, path, body, status, code in cases:
        got_status, got = raw(service, method, path, body)
        assert (got_status, got["error"]) == (status, code), (method, path, got)
        assert isinstance(got["reason"], str) and got["reason"]
    # none of it disturbed the service or the job running meanwhile
    assert service.client().call(f"{J}:add", 1, 1) == 2
    assert running.result(timeout=30) == [i * i for i in range(20)]


def test_typed_errors(service: Service) -> None:
    client = service.client()
    with pytest.raises(NotFound):
        client.call("os:cmd", "ls")
    with pytest.raises(BadRequest):
        client.map(f"{J}:square", [1], chunk=1, nodes=["nobody@nowhere"], timeout=0.0001)
    with pytest.raises(JobTimeout):
        client.call(f"{J}:sleep", 3000, timeout=0.2)
    with pytest.raises(UsageError):
        client.map(f"{J}:square", [object()])
    with pytest.raises(UsageError):
        client.map("no-colon", [1])
    with pytest.raises(NotFound):
        client.job("feedfacefeedface").status()


def test_worker_raise_fails_with_remote_stack(service: Service) -> None:
    client = service.client()
    with pytest.raises(JobFailed) as caught:
        client.map(f"{J}:fail", list(range(20)), chunk=1)
    error = caught.value
    assert isinstance(error, RemoteError)
    assert error.kind == "error" and "job_failed_on_purpose" in error.reason
    assert error.stack[0]["module"] == J and error.stack[0]["function"] == "fail"
    assert error.term[0] == "job_failed_on_purpose"
    # The failure left the service (and its workers) fine.
    assert client.map(f"{J}:square", [1, 2, 3]) == [1, 4, 9]


def test_limits_token_body_and_in_flight(limited: Service) -> None:
    # token: required everywhere but /health
    assert raw(limited, "GET", "/health")[0] == 200
    status, body = raw(limited, "GET", "/nodes")
    assert (status, body["error"]) == (401, "unauthorized")
    status, body = raw(limited, "GET", "/nodes", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    with pytest.raises(Unauthorized):
        Client(limited.url, token="wrong").call(f"{J}:add", 1, 2)
    client = limited.client()
    assert client.call(f"{J}:add", 1, 2) == 3
    # body size
    big = json.dumps({"op": "map", "fun": f"{J}:square", "items": list(range(1000))}).encode()
    status, body = raw(limited, "POST", "/jobs", big, {"Authorization": f"Bearer {TOKEN}"})
    assert (status, body["error"]) == (413, "body_too_large")
    with pytest.raises(PayloadTooLarge):
        client.map(f"{J}:square", list(range(1000)))
    # jobs in flight
    slow = [client.submit("call", fun=f"{J}:sleep", args=[10000]) for _ in range(2)]
    with pytest.raises(ServiceBusy) as busy:
        client.call(f"{J}:add", 1, 2)
    assert busy.value.status == 429 and busy.value.retry_after >= 1
    for job in slow:
        assert job.cancel().status == "cancelled"
    assert client.call(f"{J}:add", 1, 2) == 3


# -- background jobs -----------------------------------------------------------------------

def test_submit_progress_and_result(service: Service) -> None:
    seen: list[tuple[int, int]] = []
    items = [[60, i] for i in range(24)]
    job = service.client().submit("map", fun=f"{J}:sleep_square", items=items, chunk=1,
                                  progress=lambda done, total: seen.append((done, total)))
    first = job.status()
    assert first.status == "running" and first.total == 24
    assert job.result(timeout=30) == [i * i for i in range(24)]
    assert seen[-1] == (24, 24)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert job.status().status == "done"


def test_cancel(service: Service) -> None:
    client = service.client()
    job = client.submit("map", fun=f"{J}:sleep", items=[5000] * 8, chunk=1)
    time.sleep(0.3)
    assert job.cancel().status == "cancelled"
    assert job.status().status == "cancelled"
    with pytest.raises(JobCancelled):
        job.result(timeout=5)
    # the workers' sleeping processes went with it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(n["run_queue"] for n in client.nodes()) > 2:
        time.sleep(0.1)
    # DELETE on a finished job drops it
    job.cancel()
    with pytest.raises(NotFound):
        job.status()


def test_job_timeout_in_background(service: Service) -> None:
    job = service.client().submit("call", fun=f"{J}:sleep", args=[5000], timeout=0.2)
    with pytest.raises(JobTimeout):
        job.result(timeout=10)


def test_result_expires_after_ttl(service: Service) -> None:
    client = service.client()
    job = client.submit("call", fun=f"{J}:add", args=[1, 2], ttl=0.5)
    assert job.result(timeout=10) == 3
    deadline = time.monotonic() + 10
    with pytest.raises(NotFound):
        while time.monotonic() < deadline:
            job.status()
            time.sleep(0.1)


def test_failed_background_job(service: Service) -> None:
    job = service.client().submit("map", fun=f"{J}:fail", items=[1, 2])
    with pytest.raises(JobFailed) as caught:
        job.result(timeout=10)
    assert caught.value.stack


# -- concurrency ---------------------------------------------------------------------------

def test_fifty_concurrent_clients(service: Service) -> None:
    def one(i: int) -> list[int]:
        with Client(service.url) as client:
            return [client.call(f"{J}:add", i, k) for k in range(5)] + client.map(f"{J}:square", [i, i + 1])

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert results == [[i + k for k in range(5)] + [i * i, (i + 1) ** 2] for i in range(50)]


def test_async_client(service: Service) -> None:
    async def main() -> None:
        async with AsyncClient(service.url) as client:
            assert (await client.health())["status"] == "ok"
            calls = await asyncio.gather(*[client.call(f"{J}:add", i, 1) for i in range(50)])
            assert calls == [i + 1 for i in range(50)]
            assert await client.map(f"{J}:square", range(30), chunk=4) == [x * x for x in range(30)]
            assert await client.fold(f"{J}:sum", range(10), 0) == 45
            assert await client.sort([3, 1, 2]) == [1, 2, 3]
            assert await client.filter(f"{J}:is_even", range(6)) == [0, 2, 4]
            paths = stdlib_files(5)
            counted = await client.mapreduce(f"{J}:word_count", paths, f"{J}:sum_counts")
            assert counted == python_word_count(paths)
            items = [[50, i] for i in range(8)]
            handle = await client.submit("map", fun=f"{J}:sleep_square", items=items, chunk=1)
            assert await handle.result(timeout=20) == [i * i for i in range(8)]
            slow = await client.submit("call", fun=f"{J}:sleep", args=[5000])
            assert (await slow.cancel()).status == "cancelled"
            with pytest.raises(JobFailed):
                await client.call(f"{J}:fail", 3)
            with pytest.raises(NotFound):
                await client.job("feedfacefeedface").status()
    asyncio.run(main())


# -- transport -----------------------------------------------------------------------------

def test_transport_failures_are_retried_then_raised(caplog: pytest.LogCaptureFixture) -> None:
    import socket
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", timeout=2, retries=2, backoff=0.01)
    with caplog.at_level("INFO", logger="beambridge.compute"), pytest.raises(ConnectionLost) as caught:
        client.health()
    assert isinstance(caught.value, TransportError)
    assert sum("retry" in r.getMessage() for r in caplog.records) == 2

    async def main() -> None:
        with pytest.raises(ConnectionLost):
            await AsyncClient(f"http://127.0.0.1:{port}", retries=1, backoff=0.01).health()
    asyncio.run(main())


def test_send_to_erlang_one_liner(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEAMBRIDGE_COMPUTE_URL", service.url)
    assert send_to_erlang({"user": "ann", "n": [1, 2]}, f"{J}:echo") == {"user": "ann", "n": [1, 2]}
    monkeypatch.setenv("BEAMBRIDGE_COMPUTE_JOB", f"{J}:square")
    assert send_to_erlang(12) == 144


# -- node death ----------------------------------------------------------------------------

def test_kill_9_worker_mid_job_still_gives_full_result(service: Service) -> None:
    client = service.client()
    items = [[100, i] for i in range(40)]
    job = client.submit("map", fun=f"{J}:sleep_square", items=items, chunk=1, timeout=60)
    time.sleep(0.4)
    assert job.status().status == "running"
    victim = next(n for n in client.nodes() if n["role"] == "local")
    os.kill(victim["os_pid"], signal.SIGKILL)
    assert job.result(timeout=60) == [i * i for i in range(40)]
    # the service restarts its worker (bounded wait), so later jobs have both again
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        up = [n for n in client.nodes() if n["role"] == "local" and n["status"] == "up"]
        if len(up) == 2 and victim["os_pid"] not in [n["os_pid"] for n in up]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"worker not restarted: {client.nodes()}")
    assert client.map(f"{J}:square", [1, 2]) == [1, 4]


def test_threads_share_one_client(service: Service) -> None:
    client = service.client()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(10):
                assert client.call(f"{J}:add", i, i) == 2 * i
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
