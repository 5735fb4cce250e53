"""Pieces that need no server: settings checks, the HTTP status table, the plugin mapping, the
EWGI term conversions, and that ``beambridge.web`` imports no framework."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from beambridge import Atom, Pid, Timeout
from beambridge.compat import uwsgi
from beambridge.node import ErlangError, HandshakeFailed, NoConnection
from beambridge.web import SettingsError, WebSettings, check_settings, http_status
from beambridge.web.ewgi import request_term, response_parts


def test_settings_from_mapping_and_checks() -> None:
    s = WebSettings.from_mapping({"BEAMBRIDGE_ERLANG_NODE": "a@b", "BEAMBRIDGE_RPC_TIMEOUT": "2.5",
                                  "BEAMBRIDGE_EPMD_PORT": "4400", "BEAMBRIDGE_HIDDEN": "false",
                                  "BEAMBRIDGE_MAPPING": "TEXT", "OTHER": 1})
    assert (s.erlang_node, s.rpc_timeout, s.epmd_port, s.hidden, s.mapping) == (
        "a@b", 2.5, 4400, False, "text")
    problems = {p.id for p in check_settings({"BEAMBRIDGE_RPC_TIMEOUT": 0,
                                              "BEAMBRIDGE_CONNECT_TIMEOUT": True,
                                              "BEAMBRIDGE_NODE_NAME": "bad name",
                                              "BEAMBRIDGE_ERLANG_NODE": "a@b@c",
                                              "BEAMBRIDGE_EPMD_PORT": 70000,
                                              "BEAMBRIDGE_MAPPING": "latin1",
                                              "BEAMBRIDGE_TIMEOUT": 3})}
    assert problems == {"beambridge.E003", "beambridge.E004", "beambridge.E005", "beambridge.E006",
                        "beambridge.E007", "beambridge.W001"}
    with pytest.raises(SettingsError) as info:
        WebSettings.from_mapping({"BEAMBRIDGE_RPC_TIMEOUT": "soon"})
    assert isinstance(info.value, ValueError) and "BEAMBRIDGE_RPC_TIMEOUT" in str(info.value)


def test_http_status_table() -> None:
    assert http_status(NoConnection("x@y"))[0] == 503
    assert http_status(Timeout("t"))[0] == 504
    assert http_status(ErlangError(Atom("badarg")))[0] == 502
    assert http_status(HandshakeFailed("no"))[0] == 502
    assert http_status(KeyError("x"))[0] == 500


def test_plugin_mapping_round_trip() -> None:
    uwsgi.set_mapping("uwsgi")
    pid = Pid(Atom("n@h"), 1, 2, 3)
    as_python = uwsgi.from_erlang((Atom("ok"), [pid, b"bin"], {Atom("k"): 1}))
    assert as_python == ("ok", [{"node": "n@h", "id": 1, "serial": 2, "creation": 3}, b"bin"], {"k": 1})
    assert uwsgi.to_erlang(as_python) == (Atom("ok"), [pid, b"bin"], {Atom("k"): 1})
    assert uwsgi.to_erlang([uwsgi.erlist("ab"), None, True]) == [[97, 98], [], True]
    with pytest.raises(ValueError):
        uwsgi.set_mapping("latin1")


def test_ewgi_terms() -> None:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/p", "QUERY_STRING": "a=1",
               "CONTENT_LENGTH": "3", "CONTENT_TYPE": "text/plain", "HTTP_X_ONE": "1",
               "wsgi.input": io.BytesIO(b"abcdef"), "SERVER_PORT": "80"}
    term = request_term(environ)
    assert term[Atom("body")] == b"abc" and term[Atom("method")] == b"POST"
    assert (b"x-one", b"1") in term[Atom("headers")] and term[Atom("server_port")] == 80
    line, headers, body = response_parts((201, [(b"x", "y"), (Atom("z"), [49])], [b"a", [98, b"c"]]))
    assert line == "201 Created" and body == b"abc"
    assert ("x", "y") in headers and ("z", "1") in headers and ("Content-Length", "3") in headers
    with pytest.raises(Exception, match="Status, Headers, Body"):
        response_parts(Atom("oops"))


def test_web_imports_no_framework() -> None:
    code = ("import sys, beambridge, beambridge.web, beambridge.compat.uwsgi, beambridge.web.asgi; "
            "bad = [m for m in ('django', 'flask', 'gunicorn', 'uwsgi') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
