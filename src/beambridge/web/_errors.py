"""What an Erlang failure means for an HTTP request, in one table.

::

    TransportError (node down, no EPMD, connection lost)   -> 503 Service Unavailable + Retry-After
    Timeout                                                 -> 504 Gateway Timeout
    RemoteError (Erlang raised, threw, exited)              -> 502 Bad Gateway
    HandshakeFailed / BadCookie                             -> 502 Bad Gateway (misconfigured)
    ProtocolError (the peer sent bad bytes)                 -> 502 Bad Gateway

A request that meets one of these gets a short plain-text answer naming the failure; the worker
and its node live on, and the next request tries again.
"""

from __future__ import annotations

from .._errors import Error, ProtocolError, RemoteError, Timeout, TransportError, UsageError
from ..node import HandshakeFailed

__all__ = ["NoErlangNode", "http_status", "is_erlang_failure"]


class NoErlangNode(UsageError):
    """No Erlang node was named for a call and none is configured (``BEAMBRIDGE_ERLANG_NODE``)."""


_REASONS = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def is_erlang_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failure of the Erlang side (not a bug in the caller)."""
    return isinstance(error, (TransportError, RemoteError, ProtocolError))


def http_status(error: BaseException) -> tuple[int, str]:
    """``(code, reason phrase)`` for an Erlang failure; ``(500, ...)`` for anything else."""
    if isinstance(error, Timeout):
        code = 504
    elif isinstance(error, HandshakeFailed):
        code = 502
    elif isinstance(error, TransportError):
        code = 503
    elif isinstance(error, (RemoteError, ProtocolError)):
        code = 502
    else:
        return 500, "Internal Server Error"
    return code, _REASONS[code]


def describe(error: BaseException) -> str:
    """One line for the response body: the error's class and message (no stack)."""
    kind = type(error).__name__
    text = str(error) if isinstance(error, Error) else "internal error"
    return f"Erlang {kind}: {text}"[:500]
