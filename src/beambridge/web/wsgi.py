"""WSGI glue: a middleware that turns Erlang failures into 502/503/504 answers.

Wrap any WSGI app (``app = ErlangErrorMiddleware(app)``): when the app raises a beambridge
transport or remote error before it starts its response, the client gets a short plain-text
answer with the status from ``beambridge.web.http_status`` (``Retry-After`` on 503) instead of a
crashed request; the worker and its node are untouched, so the next request tries again.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ._errors import describe, http_status, is_erlang_failure

__all__ = ["ErlangErrorMiddleware", "error_response"]

log = logging.getLogger("beambridge.web.wsgi")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def error_response(error: BaseException) -> tuple[str, list[tuple[str, str]], bytes]:
    """``(status line, headers, body)`` for an Erlang failure."""
    code, reason = http_status(error)
    body = (describe(error) + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if code == 503:
        headers.append(("Retry-After", "1"))
    return f"{code} {reason}", headers, body


class ErlangErrorMiddleware:
    """Answers 502/503/504 when the wrapped app fails because of Erlang."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started: list[bool] = []

        def tracking_start_response(*args: Any) -> Any:
            started.append(True)
            return start_response(*args)

        try:
            result = self.app(environ, tracking_start_response)
            if isinstance(result, (list, tuple)):
                return result
            # a generator app runs its body only when iterated: pull the first chunk here
            iterator = iter(result)
            try:
                first = next(iterator)
            except StopIteration:
                _close(result)
                return []
            return _Chain(first, iterator, result)
        except Exception as error:
            if not is_erlang_failure(error):
                raise
            status, headers, body = error_response(error)
            log.warning("%s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), error)
            if started:  # PEP 3333: replacing a started response needs exc_info
                start_response(status, headers, sys.exc_info())
            else:  # (some servers, uWSGI among them, choke on exc_info when nothing started)
                start_response(status, headers)
            return [body]


class _Chain:
    def __init__(self, first: bytes, rest: Any, original: Any) -> None:
        self._first: bytes | None = first
        self._rest = rest
        self._original = original

    def __iter__(self) -> _Chain:
        return self

    def __next__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return bytes(next(self._rest))

    def close(self) -> None:
        _close(self._original)


def _close(result: Any) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()
