"""What the blocking and the asyncio clients share: everything but the I/O.

Building request bodies, reading answers into results or typed errors, the retry
schedule, and the job-status record live here once, so ``Client`` and ``AsyncClient``
differ only in how bytes move (the httpx pattern).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import UsageError
from ._errors import (
    BadRequest,
    Forbidden,
    JobCancelled,
    JobFailed,
    JobLost,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    ResultDropped,
    ResultTooLarge,
    ServiceBusy,
    ServiceError,
    TlsFailed,
    Unauthorized,
)

log = logging.getLogger("beambridge.compute")

#: Called with (done, total) items as a background job makes progress.
ProgressCallback = Callable[[int, int], Any]

USER_AGENT = "beambridge-compute/0.1"
DEFAULT_JOB_TIMEOUT = 60.0
LONG_POLL = 5.0
#: shorter long-polls while someone watches progress
PROGRESS_POLL = 0.5
#: how long ``Job.result()`` without a timeout keeps trying a service that went away (a
#: restart); a job the service accepted is recorded and runs again when it is back
OUTAGE_TIMEOUT = 60.0
#: bodies up to this size are sent without first asking the service for its limit
SMALL_BODY = 64 * 1024

_OPS = ("call", "map", "filter", "fold", "mapreduce", "sort")


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP exchange to make: method, path (with query) and JSON body bytes."""

    method: str
    path: str
    body: bytes | None = None
    #: how long to wait for the answer once sent (seconds)
    read_timeout: float = 30.0

    @property
    def idempotent(self) -> bool:
        return self.method in ("GET", "DELETE", "HEAD")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A background job as the service last reported it."""

    id: str
    status: str  # running, done, failed, cancelled, timeout
    done: int
    total: int
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status != "running"


@dataclass(frozen=True, slots=True)
class JobFunction:
    """One function a job may name, as ``GET /functions`` lists it: the allow-list is the
    operator's, so a client asks the service instead of guessing."""

    name: str  # "module:function"
    arity: int
    doc: str | None = None
    reads_files: bool = False

    @property
    def signature(self) -> str:
        """``module:function/arity``, the way Erlang names a function."""
        return f"{self.name}/{self.arity}"

    @property
    def summary(self) -> str:
        """The doc's first line ("" when the module documents nothing)."""
        return (self.doc or "").strip().partition("\n")[0]


def job_functions(payload: dict[str, Any]) -> list[JobFunction]:
    found = []
    for entry in payload.get("functions") or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            doc = entry.get("doc")
            found.append(JobFunction(entry["name"], int(entry.get("arity", 0)),
                                     doc if isinstance(doc, str) else None,
                                     entry.get("reads_files") is True))
    return found


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries for transport failures only: connection refused/reset/lost.

    A request that may have reached the service (a POST whose answer was lost) is never
    sent twice, since a job could run twice; connection failures before sending are always
    safe to retry. Delays grow exponentially with jitter, capped at ``max_delay``.
    """

    retries: int = 3
    backoff: float = 0.1
    max_delay: float = 2.0

    def delay(self, attempt: int) -> float:
        base = min(self.max_delay, self.backoff * (1 << min(attempt, 30)))
        return base * (0.5 + random.random() / 2)


class TransportFailure(Exception):
    """Internal: a transport error, with whether the request may have been delivered."""

    def __init__(self, error: BaseException, *, sent: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.sent = sent


class BaseClient:
    """Configuration and pure logic shared by the two clients.

    An ``https://`` URL is verified with ``cafile`` (the CA that signed the service's
    certificate), or the given ``ssl_context``, or else the system's trusted CAs. A token is
    never sent over plain ``http://`` to a host that is not loopback (anyone on the path
    could read it) unless ``allow_plain_http`` says the network is trusted.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, *,
                 job_timeout: float = DEFAULT_JOB_TIMEOUT, retries: int = 3, backoff: float = 0.1,
                 cafile: str | os.PathLike[str] | None = None, ssl_context: ssl.SSLContext | None = None,
                 allow_plain_http: bool = False) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"compute service URL must look like http(s)://host:port, got {url!r}")
        if timeout <= 0 or job_timeout <= 0:
            raise UsageError("timeouts must be positive")
        self.url = url.rstrip("/")
        self.host: str = parts.hostname
        self.port: int = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.job_timeout = job_timeout
        self.retry = RetryPolicy(retries=retries, backoff=backoff)
        self.ssl_context = tls_context(url, parts.scheme, cafile, ssl_context)
        if parts.scheme == "http" and token and not allow_plain_http and not is_loopback(self.host):
            raise UsageError(
                f"refusing to send the token over plain http to {self.host}: anyone on the path could "
                "read it. Use the service's https:// URL (it serves HTTPS with tls_certfile and "
                "tls_keyfile), or pass allow_plain_http=True (--insecure-plain-http) on a trusted network")

    def tls_failed(self, error: ssl.SSLError) -> TlsFailed:
        """The typed error for a failed TLS handshake, naming its cause and the fix."""
        return TlsFailed(self.url, tls_reason(error))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- requests ---------------------------------------------------------------------

    def headers(self, method: str, body: bytes | None) -> dict[str, str]:
        headers = {"Host": f"{self.host}:{self.port}", "User-Agent": USER_AGENT,
                   "Accept": "application/json"}
        if body is not None or method in ("POST", "DELETE"):
            # The service refuses POST and DELETE in any other type (browsers can't fake it).
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(body or b""))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def target(self, path: str) -> str:
        return self._prefix + path

    def get_request(self, path: str) -> Request:
        return Request("GET", path, None, self.timeout)

    def job_request(self, op: str, *, background: bool, **spec: Any) -> Request:
        """``POST /jobs``; a synchronous job's answer may take the whole job timeout."""
        job_timeout = spec.pop("timeout", None) or self.job_timeout
        body = build_spec(op, timeout=job_timeout, background=background, **spec)
        read_timeout = self.timeout if background else job_timeout + self.timeout
        return Request("POST", "/jobs", body, read_timeout)

    def poll_request(self, job_id: str, wait: float) -> Request:
        quoted = urllib.parse.quote(job_id, safe="")
        return Request("GET", f"/jobs/{quoted}?wait={int(wait * 1000)}", None, wait + self.timeout)

    def too_large(self, request: Request, health: dict[str, Any]) -> PayloadTooLarge | None:
        """The error for a body over the limit the service advertises (checked before it is
        sent: the service closes the connection on an oversized body, which would otherwise
        surface as a lost connection)."""
        limit = (health.get("limits") or {}).get("max_body")
        size = len(request.body or b"")
        if isinstance(limit, int) and size > limit:
            return PayloadTooLarge(413, "body_too_large", f"the request body is {size} bytes, over the "
                                   f"service's limit of {limit} bytes", {"max_body": limit})
        return None

    def cluster_request(self, finished: int) -> Request:
        """``GET /cluster``: what the dashboard shows (``finished``: how many ended jobs, <= 200)."""
        if not isinstance(finished, int) or finished < 0:
            raise UsageError(f"finished must be a non-negative integer, got {finished!r}")
        return Request("GET", f"/cluster?finished={finished}", None, self.timeout)

    def cancel_request(self, job_id: str) -> Request:
        return Request("DELETE", f"/jobs/{urllib.parse.quote(job_id, safe='')}", None, self.timeout)


def is_loopback(host: str) -> bool:
    """A name or address that never leaves this machine (no lookup: a name could lie)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(url: str, scheme: str, cafile: str | os.PathLike[str] | None,
                context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The context that verifies an https service (None for http, where asking for
    verification is a mistake worth naming: the URL was meant to be https)."""
    if scheme == "http":
        if cafile is not None or context is not None:
            raise UsageError(f"cafile/ssl_context verify an HTTPS service, but {url!r} is plain http: "
                             "use its https:// URL")
        return None
    if cafile is not None and context is not None:
        raise UsageError("pass cafile or ssl_context, not both (load the CA into the context instead)")
    if context is not None:
        return context
    try:
        return ssl.create_default_context(cafile=os.fspath(cafile) if cafile is not None else None)
    except (OSError, ssl.SSLError) as error:
        raise UsageError(f"cannot load the CA file {cafile}: {error}") from error


def tls_reason(error: ssl.SSLError) -> str:
    """What went wrong in a TLS handshake, in words that point at the fix."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = str(error.verify_message or error.reason or error)
        if "mismatch" in detail:
            hint = "the certificate is not for this host: connect by a name or address it lists"
        elif "issuer" in detail or "self-signed" in detail or "self signed" in detail:
            hint = "pass cafile= (--cafile) the CA that signed the service's certificate"
        else:
            hint = "the service's certificate was refused"
        return f"certificate verify failed: {detail} ({hint})"
    reason = str(error.reason or error)
    if isinstance(error, ssl.SSLEOFError) or "EOF" in reason or reason in (
            "WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST",
            "UNKNOWN_PROTOCOL"):
        # A plain HTTP server answers a ClientHello with garbage, or closes.
        return f"the service does not speak TLS ({reason}): is its URL http://?"
    return f"TLS handshake failed: {reason}"


def build_spec(op: str, *, timeout: float, background: bool, fun: str | None = None,
               items: Iterable[Any] | None = None, args: Sequence[Any] = (), init: Any = None,
               fuse: str | None = None, map: str | None = None, reduce: str | None = None,
               chunk: int | None = None, processes: int | None = None,
               nodes: str | Sequence[str] | None = None, ttl: float | None = None) -> bytes:
    """The JSON body of ``POST /jobs``; checks what can be checked before sending."""
    if op not in _OPS:
        raise UsageError(f"op must be one of {', '.join(_OPS)}, got {op!r}")
    spec: dict[str, Any] = {"op": op, "timeout": max(1, int(timeout * 1000))}
    if background:
        spec["async"] = True
    for name, value in (("fun", fun), ("fuse", fuse), ("map", map), ("reduce", reduce)):
        if value is not None:
            if not isinstance(value, str) or value.count(":") != 1:
                raise UsageError(f"{name} must name a job function as 'module:function', got {value!r}")
            spec[name] = value
    if op == "call":
        spec["args"] = list(args)
    else:
        if items is None:
            raise UsageError(f"{op} needs items")
        spec["items"] = list(items)
    if op == "fold":
        spec["init"] = init
    for name, number in (("chunk", chunk), ("processes", processes)):
        if number is not None:
            if not isinstance(number, int) or number <= 0:
                raise UsageError(f"{name} must be a positive integer, got {number!r}")
            spec[name] = number
    if nodes is not None:
        spec["nodes"] = nodes if isinstance(nodes, str) else list(nodes)
    if ttl is not None:
        spec["ttl"] = ttl
    try:
        return json.dumps(spec, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise UsageError(f"job arguments must be JSON values: {error}") from error


# -- answers ------------------------------------------------------------------------------

def decode(response: Response) -> dict[str, Any]:
    """The JSON object of a 2xx answer, or the typed error for any other."""
    try:
        payload = json.loads(response.body) if response.body else {}
    except ValueError:
        payload = {"error": "bad_response", "reason": response.body[:200].decode("utf-8", "replace")}
    if not isinstance(payload, dict):
        payload = {"error": "bad_response", "reason": "the answer is not a JSON object"}
    if 200 <= response.status < 300:
        return payload
    raise error_for(response.status, payload, response.headers)


def error_for(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> ServiceError:
    code = str(body.get("error", "error"))
    reason = str(body.get("reason", ""))
    if status == 400:
        return BadRequest(status, code, reason, body)
    if status == 401:
        return Unauthorized(status, code, reason, body)
    if status == 403:
        return Forbidden(status, code, reason, body)
    if status == 410:
        return ResultDropped(status, code, reason, body)
    if status == 404:
        return NotFound(status, code, reason, body)
    if status == 413:
        return PayloadTooLarge(status, code, reason, body)
    if status in (429, 503):
        retry_after = (headers or {}).get("retry-after")
        if retry_after and retry_after.isdigit():
            body = {**body, "retry_after": int(retry_after)}
        return ServiceBusy(status, code, reason, body)
    if status == 504:
        return JobTimeout(status, code, reason, body)
    if code == "job_failed":
        return JobFailed(status, body)
    if code == "result_too_large":
        return ResultTooLarge(status, code, reason, body)
    if code == "cancelled":
        return JobCancelled(status, code, reason, body)
    return ServiceError(status, code, reason, body)


def text_of(response: Response) -> str:
    """The text of a 2xx answer that is not JSON (``/metrics``), or the typed error."""
    if 200 <= response.status < 300:
        return response.body.decode("utf-8", "replace")
    decode(response)
    raise AssertionError("decode raises for a non-2xx answer")


def sync_result(payload: dict[str, Any]) -> Any:
    return payload.get("result")


def job_status(payload: dict[str, Any]) -> JobStatus:
    progress = payload.get("progress") or {}
    return JobStatus(id=str(payload.get("id", "")), status=str(payload.get("status", "unknown")),
                     done=int(progress.get("done", 0)), total=int(progress.get("total", 0)), raw=payload)


def finished_result(status: JobStatus) -> Any:
    """The result of a finished job, or its outcome as a typed error."""
    raw = status.raw
    if status.status == "done":
        return raw.get("result")
    if status.status == "failed":
        error = raw.get("error") or {}
        raise JobFailed(500, {"error": "job_failed", **error})
    if status.status == "timeout":
        raise JobTimeout(504, "timeout", f"job {status.id} ran out of its {raw.get('timeout')} ms", raw)
    if status.status == "cancelled":
        raise JobCancelled(409, "cancelled", f"job {status.id} was cancelled", raw)
    if status.status == "too_large":
        raise ResultTooLarge(500, "result_too_large", str(raw.get("reason", "")), raw)
    if status.status == "lost":
        raise JobLost(500, "lost", str(raw.get("reason", "")), raw)
    raise ServiceError(500, "bad_status", f"job {status.id} has unknown status {status.status!r}", raw)
