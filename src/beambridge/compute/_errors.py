"""Errors of the compute client, as leaves of beambridge's tree.

::

    Error
    ├── UsageError
    │   ├── BadRequest          400: the service refused the request (reason says why)
    │   │   └── PayloadTooLarge 413: the body is over the service's limit
    │   ├── Unauthorized        401: missing or wrong bearer token
    │   ├── Forbidden           403: refused by a rule (data_roots, Origin); reason names it
    │   └── NotFound            404: unknown job id (or expired), job function or endpoint
    ├── TransportError
    │   ├── TlsFailed           TLS with the service failed: its certificate did not verify
    │   │                       (unknown CA, expired, another name) or one side is not TLS
    │   └── Timeout
    │       └── JobTimeout      504, or a job that ran out of its time
    ├── RemoteError
    │   └── JobFailed           the job's Erlang code raised: kind, reason, stack, term
    └── ServiceError            every answer above carries status, code and reason
        ├── ServiceBusy         429/503: too many jobs in flight (or this client's share);
        │                       retry_after seconds
        ├── JobCancelled        the job was cancelled before it finished
        ├── ResultTooLarge      the job's result alone is over the service's result budget
        ├── ResultDropped       410: the result was dropped to keep within that budget
        └── JobLost             the service restarted and could not run the job again

Only transport failures are retried by the clients (``TlsFailed`` is not: a certificate
does not verify on a second try); every ``ServiceError`` is final.
"""

from __future__ import annotations

from typing import Any

from .._errors import Error, RemoteError, Timeout, TransportError, UsageError


class TlsFailed(TransportError):
    """TLS with the service failed: ``reason`` names the cause (certificate verify failed,
    hostname mismatch, not a TLS service, an http:// URL for an HTTPS service). A failed
    handshake sent nothing, the token included; a plain request that got a TLS answer went out
    in clear, which with a token only happens to loopback or with ``allow_plain_http``."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"TLS with {url} failed: {reason}")


class ServiceError(Error):
    """The service answered with an error; ``status``, ``code`` and ``reason`` say which."""

    def __init__(self, status: int, code: str, reason: str, body: dict[str, Any] | None = None) -> None:
        self.status = status
        self.code = code
        self.reason = reason
        self.body = body or {}
        Exception.__init__(self, status, code, reason)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.reason}"


class BadRequest(ServiceError, UsageError):
    """The request was malformed or named something invalid (400)."""


class PayloadTooLarge(BadRequest):
    """The request body is over the service's size limit (413)."""


class Unauthorized(ServiceError, UsageError):
    """The service requires a bearer token and got none or a wrong one (401)."""


class Forbidden(ServiceError, UsageError):
    """A rule of the service refuses the request (403), e.g. a path outside its data roots."""


class NotFound(ServiceError, UsageError):
    """Unknown job id (never existed or expired), job function, or endpoint (404)."""


class ServiceBusy(ServiceError):
    """The service runs its limit of jobs (429) or cannot take work now (503)."""

    @property
    def retry_after(self) -> float:
        value = self.body.get("retry_after", 1)
        return float(value) if isinstance(value, int | float) else 1.0


class JobTimeout(ServiceError, Timeout):
    """The job did not finish within its time limit; the service stopped it."""


class JobCancelled(ServiceError):
    """The job was cancelled (``DELETE /jobs/ID``) before it finished."""


class ResultTooLarge(ServiceError):
    """The job finished, but its result alone is over the service's ``max_result_bytes``."""


class ResultDropped(ServiceError):
    """The job finished, but its result was dropped to keep finished results within the
    service's ``max_result_bytes`` (410): fetch results sooner, or raise the budget."""


class JobLost(ServiceError):
    """The service restarted after accepting the job and could not run it again."""


class JobFailed(ServiceError, RemoteError):
    """The job's Erlang code raised. ``kind`` is error/throw/exit, ``reason`` the Erlang
    reason as text, ``term`` its JSON rendering, ``stack`` the remote stack as dicts
    (module, function, arity, file, line)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        ServiceError.__init__(self, status, "job_failed", str(body.get("reason", "")), body)
        self.kind = str(body.get("kind", "error"))
        self.term = body.get("term")
        stack = body.get("stack")
        self.stack: list[dict[str, Any]] = stack if isinstance(stack, list) else []

    def __str__(self) -> str:
        where = ""
        if self.stack:
            top = self.stack[0]
            where = f" in {top.get('module')}:{top.get('function')}/{top.get('arity')}"
            if "line" in top:
                where += f" ({top.get('file')}:{top['line']})"
        return f"job raised {self.kind}: {self.reason}{where}"
