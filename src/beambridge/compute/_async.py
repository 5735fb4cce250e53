"""The asyncio twin of ``Client``, over asyncio streams (a minimal HTTP/1.1 exchange, TLS
for https URLs: the service always answers with Content-Length). Makes no assumption about which loop
runs it beyond "the current one"; connections are not shared across loops."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .._errors import ConnectionLost, ProtocolError, Timeout
from ._base import (
    LONG_POLL,
    OUTAGE_TIMEOUT,
    PROGRESS_POLL,
    SMALL_BODY,
    BaseClient,
    JobFunction,
    JobStatus,
    ProgressCallback,
    Request,
    Response,
    TransportFailure,
    decode,
    finished_result,
    job_functions,
    job_status,
    log,
    sync_result,
    text_of,
)
from ._errors import TlsFailed

_MAX_HEADER = 64 * 1024
_MAX_BODY = 1 << 30

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class AsyncClient(BaseClient):
    """Asyncio client of a beambridge compute service: the same calls as ``Client``,
    awaited."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, **options: Any) -> None:
        super().__init__(url, token, timeout, **options)
        self._idle: list[Stream] = []
        self._health: dict[str, Any] | None = None

    async def health(self) -> dict[str, Any]:
        return decode(await self._send(self.get_request("/health")))

    async def nodes(self) -> list[dict[str, Any]]:
        return list(decode(await self._send(self.get_request("/nodes"))).get("nodes", []))

    async def functions(self) -> list[JobFunction]:
        return job_functions(decode(await self._send(self.get_request("/functions"))))

    async def cluster(self, finished: int = 50) -> dict[str, Any]:
        return decode(await self._send(self.cluster_request(finished)))

    async def metrics(self) -> str:
        return text_of(await self._send(self.get_request("/metrics")))

    async def call(self, fun: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._run("call", fun=fun, args=args, timeout=timeout)

    async def map(self, fun: str, items: Iterable[Any], *, chunk: int | None = None,
                  processes: int | None = None, nodes: str | Sequence[str] | None = None,
                  timeout: float | None = None) -> list[Any]:
        return list(await self._run("map", fun=fun, items=items, chunk=chunk, processes=processes,
                                    nodes=nodes, timeout=timeout))

    async def filter(self, fun: str, items: Iterable[Any], **options: Any) -> list[Any]:
        return list(await self._run("filter", fun=fun, items=items, **options))

    async def fold(self, fun: str, items: Iterable[Any], init: Any, *, fuse: str | None = None,
                   **options: Any) -> Any:
        return await self._run("fold", fun=fun, items=items, init=init, fuse=fuse, **options)

    async def mapreduce(self, map: str, items: Iterable[Any], reduce: str | None = None,
                        **options: Any) -> dict[str, Any]:
        return dict(await self._run("mapreduce", map=map, items=items, reduce=reduce, **options))

    async def sort(self, items: Iterable[Any], fun: str | None = None, **options: Any) -> list[Any]:
        return list(await self._run("sort", fun=fun, items=items, **options))

    async def submit(self, op: str, *, progress: ProgressCallback | None = None, **spec: Any) -> AsyncJob:
        payload = decode(await self._send(self.job_request(op, background=True, **spec)))
        return AsyncJob(self, str(payload["id"]), progress)

    def job(self, job_id: str, progress: ProgressCallback | None = None) -> AsyncJob:
        return AsyncJob(self, job_id, progress)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- transport ----------------------------------------------------------------------

    async def _run(self, op: str, **spec: Any) -> Any:
        spec = {k: v for k, v in spec.items() if v is not None}
        return sync_result(decode(await self._send(self.job_request(op, background=False, **spec))))

    async def _send(self, request: Request) -> Response:
        if request.body is not None and len(request.body) > SMALL_BODY:
            if self._health is None:
                self._health = await self.health()
            refused = self.too_large(request, self._health)
            if refused is not None:
                raise refused
        attempt = 0
        while True:
            try:
                return await self._exchange(request, reuse=True)
            except TransportFailure as failure:
                if attempt >= self.retry.retries or (failure.sent and not request.idempotent):
                    error = failure.error
                    if isinstance(error, TimeoutError):
                        raise Timeout(f"the compute service did not answer in time: {error}") from error
                    raise ConnectionLost(f"compute service unreachable: {error}") from error
                delay = self.retry.delay(attempt)
                log.info("compute %s %s failed (%s); retry in %.2f s", request.method, request.path,
                         failure.error, delay)
                await asyncio.sleep(delay)
                attempt += 1

    async def _exchange(self, request: Request, *, reuse: bool) -> Response:
        stream = self._idle.pop() if reuse and self._idle else None
        reused = stream is not None
        sent = False
        try:
            if stream is None:
                stream = await self._connect()
            reader, writer = stream
            head = [f"{request.method} {self.target(request.path)} HTTP/1.1"]
            head += [f"{k}: {v}" for k, v in self.headers(request.method, request.body).items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (request.body or b""))
            await writer.drain()
            sent = True
            async with asyncio.timeout(request.read_timeout):
                response, keep = await _read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            if stream is not None:
                stream[1].close()
            if isinstance(error, asyncio.IncompleteReadError) and self.ssl_context is None \
                    and error.partial.startswith(b"\x15\x03"):  # a TLS alert for our plain request
                raise TlsFailed(self.url, "the service speaks TLS: use its https:// URL") from error
            if reused:
                return await self._exchange(request, reuse=False)
            raise TransportFailure(error, sent=sent) from error
        except (OSError, TimeoutError) as error:
            if stream is not None:
                stream[1].close()
            raise TransportFailure(error, sent=sent) from error
        if keep:
            self._idle.append(stream)
        else:
            writer.close()
        return response

    async def _connect(self) -> Stream:
        async with asyncio.timeout(self.timeout):
            if self.ssl_context is None:
                return await asyncio.open_connection(self.host, self.port)
            try:
                return await asyncio.open_connection(self.host, self.port, ssl=self.ssl_context,
                                                     server_hostname=self.host,
                                                     ssl_handshake_timeout=self.timeout)
            except ssl.SSLError as error:  # before anything was sent: say why, never retry
                raise self.tls_failed(error) from error


async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    """Status line, headers, and a Content-Length (or chunked, or until-close) body."""
    status_line = await reader.readuntil(b"\r\n")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad HTTP status line {status_line[:80]!r}")
    headers: dict[str, str] = {}
    size = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size += len(line)
        if size > _MAX_HEADER:
            raise ProtocolError("HTTP headers too long")
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > _MAX_BODY:
            raise ProtocolError("HTTP body too large")
        body = await reader.readexactly(length)
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            chunk_size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if chunk_size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunks.append(await reader.readexactly(chunk_size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    else:
        body = await reader.read()
        keep = False
    return Response(int(parts[1]), headers, body), keep


class AsyncJob:
    """The asyncio twin of ``Job``."""

    def __init__(self, client: AsyncClient, job_id: str, progress: ProgressCallback | None = None) -> None:
        self.client = client
        self.id = job_id
        self._progress = progress
        self._seen: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r})"

    async def status(self) -> JobStatus:
        return await self._poll(0.0)

    async def result(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        outage: float | None = None
        while True:
            poll = LONG_POLL if self._progress is None else PROGRESS_POLL
            wait = poll if deadline is None else min(poll, deadline - time.monotonic())
            try:
                status = await self._poll(max(0.0, wait))
            except ConnectionLost:  # a restarting service: see Job.result
                now = time.monotonic()
                outage = now if outage is None else outage
                if (deadline is not None and now >= deadline) or (
                        deadline is None and now - outage > OUTAGE_TIMEOUT):
                    raise
                await asyncio.sleep(min(1.0, self.client.retry.max_delay))
                continue
            outage = None
            if status.finished:
                return finished_result(status)
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"job {self.id} still running after {timeout} s")

    async def cancel(self) -> JobStatus:
        return job_status(decode(await self.client._send(self.client.cancel_request(self.id))))

    async def _poll(self, wait: float) -> JobStatus:
        status = job_status(decode(await self.client._send(self.client.poll_request(self.id, wait))))
        seen = (status.done, status.total)
        if self._progress is not None and seen != self._seen:
            self._seen = seen
            self._progress(*seen)
        return status
