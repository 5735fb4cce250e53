"""A plain WSGI app served by gunicorn and uWSGI in the tests (configured by BEAMBRIDGE_*)."""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from beambridge import web
from beambridge.compat import uwsgi
from beambridge.web import ErlangErrorMiddleware, EwgiBridge
from beambridge.web.hooks import register_uwsgi_postfork

ewgi = EwgiBridge("bbw_hello_ewgi")
UNDER_UWSGI = register_uwsgi_postfork()  # explicit uWSGI postfork hook (False under gunicorn)


def _json(start_response: Callable[..., Any], value: Any) -> list[bytes]:
    body = json.dumps(value).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
    if path == "/const":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/rpc":
        if "hold" in query:
            web.rpc("bbw_examples", "slow", [int(query["hold"])])
        name = web.rpc("bbw_examples", "node_name")
        return _json(start_response, {"pid": os.getpid(), "erlang": str(name),
                                      "node": web.get_node().name,
                                      "threads": threading.active_count(),
                                      "uwsgi_hook": UNDER_UWSGI})
    if path == "/add":
        return _json(start_response, {"sum": web.rpc("bbw_examples", "add",
                                                     [int(query["a"]), int(query["b"])])})
    if path == "/slow":
        timeout = float(query.get("timeout", "1"))
        result = web.rpc("bbw_examples", "slow", [int(query["ms"])], timeout=timeout)
        return _json(start_response, {"result": repr(result)})
    if path == "/hello":  # the plugin's classic example, unchanged but for the import
        testnode = uwsgi.erlang_connect(os.environ["BEAMBRIDGE_ERLANG_NODE"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        answer = uwsgi.erlang_rpc(testnode, "bbw_examples", "hello", [])
        uwsgi.erlang_close(testnode)
        return [answer.encode()]
    if path.startswith("/ewgi"):
        return ewgi(environ, start_response)
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such page\n"]


app = ErlangErrorMiddleware(_app)
