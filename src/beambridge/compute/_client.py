"""The blocking client, over the standard library's http.client (no dependency needed:
the service speaks HTTP/1.1, or HTTPS, with JSON bodies and Content-Length)."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .._errors import ConnectionLost, Timeout
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


class Client(BaseClient):
    """Blocking client of a beambridge compute service; thread-safe (a small pool of
    keep-alive connections). ``timeout`` bounds every network wait; ``job_timeout`` is
    the time a job may run on the service unless a call says otherwise; ``cafile`` or
    ``ssl_context`` verify an https service (see ``BaseClient``)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, **options: Any) -> None:
        super().__init__(url, token, timeout, **options)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._health: dict[str, Any] | None = None

    # -- plain calls ------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return decode(self._send(self.get_request("/health")))

    def nodes(self) -> list[dict[str, Any]]:
        nodes = decode(self._send(self.get_request("/nodes"))).get("nodes", [])
        return list(nodes)

    def functions(self) -> list[JobFunction]:
        """The job functions this service allows (its ``job_modules``), with their docs."""
        return job_functions(decode(self._send(self.get_request("/functions"))))

    def cluster(self, finished: int = 50) -> dict[str, Any]:
        """The dashboard's view (``GET /cluster``): ``nodes``, this client's ``running`` jobs
        with progress and its last ``finished`` ended ones, ``throughput`` buckets."""
        return decode(self._send(self.cluster_request(finished)))

    def metrics(self) -> str:
        """The service's metrics in the Prometheus text format (``GET /metrics``)."""
        return text_of(self._send(self.get_request("/metrics")))

    def call(self, fun: str, *args: Any, timeout: float | None = None) -> Any:
        """Run ``module:function(*args)`` on the service and return its result."""
        return self._run("call", fun=fun, args=args, timeout=timeout)

    def map(self, fun: str, items: Iterable[Any], *, chunk: int | None = None,
            processes: int | None = None, nodes: str | Sequence[str] | None = None,
            timeout: float | None = None) -> list[Any]:
        """``[fun(x) for x in items]`` across the cluster, in order."""
        return list(self._run("map", fun=fun, items=items, chunk=chunk, processes=processes,
                              nodes=nodes, timeout=timeout))

    def filter(self, fun: str, items: Iterable[Any], **options: Any) -> list[Any]:
        return list(self._run("filter", fun=fun, items=items, **options))

    def fold(self, fun: str, items: Iterable[Any], init: Any, *, fuse: str | None = None,
             **options: Any) -> Any:
        """Fold chunks with ``fun(item, acc)`` from ``init``, then fuse chunk results."""
        return self._run("fold", fun=fun, items=items, init=init, fuse=fuse, **options)

    def mapreduce(self, map: str, items: Iterable[Any], reduce: str | None = None,
                  **options: Any) -> dict[str, Any]:
        """``map(item)`` gives key/value pairs; with ``reduce(key, values)`` (re-reducible)
        the answer is ``{key: value}``, without it ``{key: [values...]}``."""
        return dict(self._run("mapreduce", map=map, items=items, reduce=reduce, **options))

    def sort(self, items: Iterable[Any], fun: str | None = None, **options: Any) -> list[Any]:
        return list(self._run("sort", fun=fun, items=items, **options))

    def submit(self, op: str, *, progress: ProgressCallback | None = None, **spec: Any) -> Job:
        """Start a background job (same fields as the calls above) and return its handle."""
        payload = decode(self._send(self.job_request(op, background=True, **spec)))
        return Job(self, str(payload["id"]), progress)

    def job(self, job_id: str, progress: ProgressCallback | None = None) -> Job:
        """A handle on a job submitted earlier (by id)."""
        return Job(self, job_id, progress)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------

    def _run(self, op: str, **spec: Any) -> Any:
        spec = {k: v for k, v in spec.items() if v is not None}
        return sync_result(decode(self._send(self.job_request(op, background=False, **spec))))

    def _send(self, request: Request) -> Response:
        if request.body is not None and len(request.body) > SMALL_BODY:
            if self._health is None:
                self._health = self.health()
            refused = self.too_large(request, self._health)
            if refused is not None:
                raise refused
        attempt = 0
        while True:
            try:
                return self._exchange(request)
            except TransportFailure as failure:
                if attempt >= self.retry.retries or (failure.sent and not request.idempotent):
                    raise _public(failure) from failure.error
                delay = self.retry.delay(attempt)
                log.info("compute %s %s failed (%s); retry in %.2f s", request.method, request.path,
                         failure.error, delay)
                time.sleep(delay)
                attempt += 1

    def _exchange(self, request: Request) -> Response:
        reused = True
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            reused = False
            conn = self._connection()
        sent = False
        try:
            if conn.sock is None:
                try:
                    conn.connect()
                except ssl.SSLError as error:  # before anything was sent: say why, never retry
                    conn.close()
                    raise self.tls_failed(error) from error
            assert conn.sock is not None
            conn.sock.settimeout(request.read_timeout)
            conn.request(request.method, self.target(request.path), body=request.body,
                         headers=self.headers(request.method, request.body))
            sent = True
            answer = conn.getresponse()
            body = answer.read()
            response = Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, body)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
            conn.close()
            if reused:  # a keep-alive connection the server had closed: the request never arrived
                return self._exchange_fresh(request)
            raise TransportFailure(error, sent=sent) from error
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            if self.ssl_context is None and _tls_answer(error):
                raise TlsFailed(self.url, "the service speaks TLS: use its https:// URL") from error
            raise TransportFailure(error, sent=sent) from error
        if answer.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        return response

    def _connection(self) -> http.client.HTTPConnection:
        if self.ssl_context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                           context=self.ssl_context)

    def _exchange_fresh(self, request: Request) -> Response:
        with self._lock:
            stale, self._idle = self._idle, []
        for conn in stale:
            conn.close()
        return self._exchange(request)


def _tls_answer(error: BaseException) -> bool:
    """A plain-HTTP request answered with a TLS record (an alert: 0x15, version 3.x)."""
    line = getattr(error, "line", "") if isinstance(error, http.client.BadStatusLine) else ""
    return str(line).startswith("\x15\x03")


def _public(failure: TransportFailure) -> Exception:
    error = failure.error
    if isinstance(error, socket.timeout | TimeoutError):
        return Timeout(f"the compute service did not answer in time: {error}")
    return ConnectionLost(f"compute service unreachable: {error}")


class Job:
    """A background job on the service: poll it, wait for it, cancel it."""

    def __init__(self, client: Client, job_id: str, progress: ProgressCallback | None = None) -> None:
        self.client = client
        self.id = job_id
        self._progress = progress
        self._seen: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> JobStatus:
        return self._poll(0.0)

    def result(self, timeout: float | None = None) -> Any:
        """Wait (long-polling) until the job ends and return its result; raises the job's
        failure as a typed error, or ``Timeout`` if ``timeout`` seconds pass first (the job
        keeps running: cancel it if it is no longer wanted). A service that goes away
        meanwhile (a restart) is waited for within ``timeout``, else up to a minute."""
        deadline = None if timeout is None else time.monotonic() + timeout
        outage: float | None = None  # when the service stopped answering
        while True:
            poll = LONG_POLL if self._progress is None else PROGRESS_POLL
            wait = poll if deadline is None else min(poll, deadline - time.monotonic())
            try:
                status = self._poll(max(0.0, wait))
            except ConnectionLost:
                # A restarting service: the job is recorded and runs again when it is back.
                now = time.monotonic()
                outage = now if outage is None else outage
                if (deadline is not None and now >= deadline) or (
                        deadline is None and now - outage > OUTAGE_TIMEOUT):
                    raise
                time.sleep(min(1.0, self.client.retry.max_delay))
                continue
            outage = None
            if status.finished:
                return finished_result(status)
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"job {self.id} still running after {timeout} s")

    def cancel(self) -> JobStatus:
        """Stop the job (its processes on every node go too); a finished job is dropped."""
        return job_status(decode(self.client._send(self.client.cancel_request(self.id))))

    def _poll(self, wait: float) -> JobStatus:
        status = job_status(decode(self.client._send(self.client.poll_request(self.id, wait))))
        seen = (status.done, status.total)
        if self._progress is not None and seen != self._seen:
            self._seen = seen
            self._progress(*seen)
        return status
