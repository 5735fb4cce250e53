"""The clients' shared pure logic: request bodies, answers to typed errors, retry delays,
and the asyncio client's HTTP response reader (fed whole, byte by byte, and chunked)."""

from __future__ import annotations

import asyncio
import json

import pytest

from beambridge import ProtocolError, RemoteError, Timeout, TransportError, UsageError
from beambridge.compute import (
    BadRequest,
    Client,
    JobCancelled,
    JobFailed,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    ServiceBusy,
    ServiceError,
    Unauthorized,
)
from beambridge.compute._async import _read_response
from beambridge.compute._base import Response, RetryPolicy, build_spec, decode, finished_result, job_status


def test_build_spec() -> None:
    body = json.loads(build_spec("map", timeout=1.5, background=True, fun="m:f", items=range(3), chunk=2))
    assert body == {"op": "map", "timeout": 1500, "async": True, "fun": "m:f", "items": [0, 1, 2], "chunk": 2}
    call = json.loads(build_spec("call", timeout=1, background=False, fun="m:f", args=(1, "a")))
    assert call["args"] == [1, "a"]
    fold = json.loads(build_spec("fold", timeout=1, background=False, fun="m:f", items=[], init=0))
    assert fold["init"] == 0
    for bad in (dict(op="nope"), dict(op="map", fun="m:f"), dict(op="map", fun="mf", items=[]),
                dict(op="map", fun="m:f", items=[], chunk=0), dict(op="map", fun="m:f", items=[float("nan")]),
                dict(op="map", fun="m:f", items=[object()])):
        op = bad.pop("op")
        with pytest.raises(UsageError):
            build_spec(str(op), timeout=1, background=False, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "code", "kind"), [
    (400, "bad_json", BadRequest), (401, "unauthorized", Unauthorized), (404, "unknown_job", NotFound),
    (413, "body_too_large", PayloadTooLarge), (429, "too_many_jobs", ServiceBusy),
    (503, "unavailable", ServiceBusy), (504, "timeout", JobTimeout), (500, "job_failed", JobFailed),
    (409, "cancelled", JobCancelled), (500, "internal", ServiceError)])
def test_error_mapping(status: int, code: str, kind: type[Exception]) -> None:
    body = json.dumps({"error": code, "reason": "why"}).encode()
    with pytest.raises(kind) as caught:
        decode(Response(status, {"retry-after": "3"}, body))
    assert isinstance(caught.value, ServiceError)
    assert caught.value.status == status and caught.value.code == code
    if kind is ServiceBusy:
        assert caught.value.retry_after == 3  # type: ignore[attr-defined]
    if kind is JobTimeout:
        assert isinstance(caught.value, Timeout) and isinstance(caught.value, TransportError)
    if kind is JobFailed:
        assert isinstance(caught.value, RemoteError)


def test_non_json_answer_is_still_typed() -> None:
    with pytest.raises(ServiceError) as caught:
        decode(Response(502, {}, b"<html>bad gateway</html>"))
    assert caught.value.code == "bad_response" and "bad gateway" in caught.value.reason


def test_finished_job_outcomes() -> None:
    done = job_status({"id": "a", "status": "done", "result": [1], "progress": {"done": 1, "total": 1}})
    assert done.finished and finished_result(done) == [1]
    error = {"kind": "throw", "reason": "x", "stack": []}
    failed = job_status({"id": "a", "status": "failed", "error": error})
    with pytest.raises(JobFailed) as caught:
        finished_result(failed)
    assert caught.value.kind == "throw"
    with pytest.raises(JobCancelled):
        finished_result(job_status({"id": "a", "status": "cancelled"}))
    with pytest.raises(JobTimeout):
        finished_result(job_status({"id": "a", "status": "timeout", "timeout": 5}))
    assert not job_status({"id": "a", "status": "running"}).finished


def test_retry_delays_grow_and_are_capped() -> None:
    policy = RetryPolicy(retries=10, backoff=0.1, max_delay=1.0)
    for attempt in range(10):
        delay = policy.delay(attempt)
        assert 0.5 * min(1.0, 0.1 * 2 ** attempt) <= delay <= min(1.0, 0.1 * 2 ** attempt)


def test_client_refuses_bad_urls() -> None:
    for url in ("ftp://x", "127.0.0.1:80", "http://"):
        with pytest.raises(UsageError):
            Client(url)


def _parse(data: bytes, *, split: bool) -> tuple[Response, bool]:
    async def main() -> tuple[Response, bool]:
        reader = asyncio.StreamReader()
        if split:
            for i in range(len(data)):
                reader.feed_data(data[i:i + 1])
        else:
            reader.feed_data(data)
        reader.feed_eof()
        return await _read_response(reader)
    return asyncio.run(main())


@pytest.mark.parametrize("split", [False, True])
def test_read_response(split: bool) -> None:
    response, keep = _parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}", split=split)
    assert (response.status, response.body, response.headers["x-a"], keep) == (200, b"{}", "b", True)
    chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    response, keep = _parse(chunked, split=split)
    assert (response.status, response.body) == (404, b"abcde")
    response, keep = _parse(b"HTTP/1.0 200 OK\r\n\r\nuntil close", split=split)
    assert (response.body, keep) == (b"until close", False)
    with pytest.raises(ProtocolError):
        _parse(b"SPDY/9 what\r\n\r\n", split=split)
