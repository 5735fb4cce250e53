"""The EWGI bridge: a WSGI application whose every request is answered by Erlang.

Each HTTP request goes over rpc as a plain term (a map with atom keys and binary values)::

    #{method => <<"GET">>, path => <<"/a/b">>, query => <<"x=1">>,
      headers => [{<<"content-type">>, <<"text/plain">>}, ...],   % names lower-cased
      body => <<...>>, scheme => <<"http">>, server_name => <<"localhost">>,
      server_port => 8000, remote_addr => <<"127.0.0.1">>}

and Erlang answers ``{Status, Headers, Body}``: ``Status`` an integer (or ``<<"200 OK">>``),
``Headers`` a list of ``{Name, Value}`` (binaries, strings or atoms), ``Body`` iodata. By default
the bridge calls ``bbw_ewgi:serve(Handler, Request)`` (``erlang/beambridge_web``), which runs
an EWGI-style handler module; ``module``/``function`` call any function of the same shape
directly. Erlang failures become 502/503/504 (``beambridge.web.http_status``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from .._errors import Error, ProtocolError
from ..term import Atom
from . import _default
from .wsgi import error_response

__all__ = ["EwgiBridge", "request_term", "response_parts"]

log = logging.getLogger("beambridge.web.ewgi")

_A = Atom


def request_term(environ: dict[str, Any], *, max_body: int = 16 << 20) -> dict[Atom, Any]:
    """The request as the plain term sent to Erlang (see the module docstring)."""
    headers: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.replace("_", "-").lower()
        else:
            continue
        if value:
            headers.append((name.encode("latin-1"), str(value).encode("latin-1")))
    headers.sort()
    length = environ.get("CONTENT_LENGTH") or "0"
    try:
        size = min(int(length), max_body)
    except ValueError:
        size = 0
    body = environ["wsgi.input"].read(size) if size > 0 else b""
    path = environ.get("PATH_INFO", "") or "/"
    script = environ.get("SCRIPT_NAME", "")
    return {
        _A("method"): environ.get("REQUEST_METHOD", "GET").encode("latin-1"),
        _A("path"): (script + path).encode("latin-1"),
        _A("query"): environ.get("QUERY_STRING", "").encode("latin-1"),
        _A("headers"): headers,
        _A("body"): body,
        _A("scheme"): environ.get("wsgi.url_scheme", "http").encode("latin-1"),
        _A("server_name"): str(environ.get("SERVER_NAME", "")).encode("latin-1"),
        _A("server_port"): int(environ.get("SERVER_PORT") or 0),
        _A("remote_addr"): str(environ.get("REMOTE_ADDR", "")).encode("latin-1"),
    }


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):  # Atom, or str under a text mapping
        return str(value)
    if isinstance(value, list) and all(isinstance(c, int) for c in value):
        return bytes(value).decode("latin-1")
    raise ProtocolError(f"not a header name or value: {value!r}")


def _iodata(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bytes):
        out.append(value)
    elif isinstance(value, str):
        out.append(value.encode())
    elif isinstance(value, int) and 0 <= value < 256:
        out.append(bytes((value,)))
    elif isinstance(value, list):
        for item in value:
            _iodata(item, out)
    else:
        raise ProtocolError(f"not iodata: {value!r}")


def response_parts(answer: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    """``{Status, Headers, Body}`` from Erlang -> ``(status line, headers, body bytes)``."""
    if not (isinstance(answer, tuple) and len(answer) == 3):
        raise ProtocolError(f"Erlang answered {answer!r}, not {{Status, Headers, Body}}")
    status, headers, body = answer
    if isinstance(status, int) and not isinstance(status, bool):
        try:
            line = f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            line = f"{status} Unknown"
    else:
        line = _text(status)
    if not isinstance(headers, list):
        raise ProtocolError(f"headers must be a list, not {headers!r}")
    pairs = []
    for item in headers:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ProtocolError(f"a header is {{Name, Value}}, not {item!r}")
        pairs.append((_text(item[0]), _text(item[1])))
    chunks: list[bytes] = []
    _iodata(body, chunks)
    data = b"".join(chunks)
    if not any(name.lower() == "content-length" for name, _ in pairs):
        pairs.append(("Content-Length", str(len(data))))
    return line, pairs, data


class EwgiBridge:
    """WSGI app: every request -> ``rpc(node, module, function, [Handler?, Request])``.

    ``handler``: the EWGI-style Erlang module served through ``bbw_ewgi:serve/2`` (default
    route); or pass ``module`` and ``function`` to call ``Module:Function(Request)`` directly.
    ``node``: the Erlang node (default: the configured one); ``timeout`` seconds per request.
    """

    def __init__(self, handler: str | None = None, *, module: str | None = None,
                 function: str | None = None, node: str | None = None,
                 timeout: float | None = None,
                 rpc: Callable[..., Any] | None = None) -> None:
        if (handler is None) == (module is None):
            raise ValueError("give an EWGI handler module, or module= and function=, not both")
        self.handler = handler
        self.module = module or "bbw_ewgi"
        self.function = function or ("serve" if handler is not None else "handle")
        self.node = node
        self.timeout = timeout
        self._rpc = rpc or _default.rpc

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            request = request_term(environ)
            args: list[Any] = [request] if self.handler is None else [_A(self.handler), request]
            answer = self._rpc(self.module, self.function, args, node=self.node,
                               timeout=self.timeout)
            status, headers, body = response_parts(answer)
        except Error as error:
            log.warning("%s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), error)
            status, headers, body = error_response(error)
        start_response(status, headers)
        return [body]
