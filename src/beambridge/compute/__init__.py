"""The HTTP+JSON road to Erlang: a client for beambridge's compute service.

The service (an OTP application on MochiWeb, in ``erlang/beambridge_compute``) runs jobs
named from an operator's allow-list of Erlang modules: a single call, or a parallel
map/filter/fold/mapreduce/sort across a cluster of worker nodes. ``Client`` and
``AsyncClient`` speak to it; ``Service`` runs one locally; ``send_to_erlang`` is the
one-line form for a web view.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .._errors import UsageError
from ._async import AsyncClient, AsyncJob
from ._base import JobFunction, JobStatus
from ._client import Client, Job
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
from ._service import Service, ServiceFailed

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "BadRequest",
    "Client",
    "Forbidden",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobFunction",
    "JobLost",
    "JobStatus",
    "JobTimeout",
    "NotFound",
    "PayloadTooLarge",
    "ResultDropped",
    "ResultTooLarge",
    "Service",
    "ServiceBusy",
    "ServiceError",
    "ServiceFailed",
    "TlsFailed",
    "Unauthorized",
    "send_to_erlang",
]

_shared: dict[tuple[str, str | None, str | None], Client] = {}
_shared_lock = threading.Lock()


def send_to_erlang(data: Any, job: str | None = None, *, url: str | None = None,
                   token: str | None = None, timeout: float | None = None,
                   cafile: str | None = None) -> Any:
    """Send ``data`` to the Erlang job function ``job`` ("module:function") and return its
    answer: the one line a web view needs. ``url``, ``job``, ``token`` and ``cafile`` (the CA
    of an https service) default to ``$BEAMBRIDGE_COMPUTE_URL`` (else http://127.0.0.1:8080),
    ``$BEAMBRIDGE_COMPUTE_JOB``, ``$BEAMBRIDGE_COMPUTE_TOKEN`` and ``$BEAMBRIDGE_COMPUTE_CAFILE``;
    one keep-alive client per url is shared by all threads."""
    job = job or os.environ.get("BEAMBRIDGE_COMPUTE_JOB")
    if not job:
        raise UsageError("send_to_erlang needs a job ('module:function') or $BEAMBRIDGE_COMPUTE_JOB")
    url = url or os.environ.get("BEAMBRIDGE_COMPUTE_URL", "http://127.0.0.1:8080")
    token = token or os.environ.get("BEAMBRIDGE_COMPUTE_TOKEN")
    if url.startswith("https:"):
        cafile = cafile or os.environ.get("BEAMBRIDGE_COMPUTE_CAFILE")
    with _shared_lock:
        client = _shared.get((url, token, cafile))
        if client is None:
            client = _shared[(url, token, cafile)] = Client(url, token=token, cafile=cafile)
    return client.call(job, data, timeout=timeout)
