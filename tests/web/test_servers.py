"""Real servers: gunicorn (2 workers, threads) and uWSGI (2 processes, a mule) in front of a
real Erlang node, which is stopped and restarted during the run."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from beambridge import Atom
from beambridge.web import uwsgi_mule

from .conftest import VENV_BIN, Server, free_port, http_get, http_json, server_env, unique

pytestmark = pytest.mark.erlang
A = Atom


def _exercise(server: Server, erl, workers: int) -> None:
    port = server.port
    # requests reach Erlang; every worker has its own node with its own name
    seen = {}
    deadline = time.monotonic() + 20
    with ThreadPoolExecutor(8) as pool:
        while len(seen) < workers and time.monotonic() < deadline:
            # concurrent requests that hold their worker a moment, so that every worker serves
            for answer in pool.map(lambda _: http_json(port, "/rpc?hold=150"), range(8)):
                assert answer["erlang"] == erl.name
                seen[answer["pid"]] = answer["node"]
    assert len(seen) == workers, seen
    assert len(set(seen.values())) == workers
    for pid, name in seen.items():
        assert f"_{pid}_" in name
    # the plugin's classic example, through the compat layer
    assert http_get(port, "/hello")[2] == b"hello world !"
    # the EWGI bridge: an Erlang handler answers the request
    status, headers, body = http_get(port, "/ewgi/hi?x=1", data=b"payload", method="POST")
    assert status == 200, body
    assert body.decode() == f"hello from {erl.name}: POST /ewgi/hi q=x=1 body=payload\n"
    assert headers["x-erlang-node"] == erl.name
    assert http_get(port, "/ewgi/missing")[0] == 404
    # many concurrent requests on threaded workers share each worker's node
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: http_json(port, f"/add?a={i}&b=1")["sum"], range(120)))
    assert results == [i + 1 for i in range(120)]
    # an rpc timeout answers 504 within the timeout
    started = time.monotonic()
    status, _, body = http_get(port, "/slow?ms=3000&timeout=0.5")
    assert status == 504 and b"Timeout" in body
    assert time.monotonic() - started < 2.0


def _outage(server: Server, erl) -> None:
    port = server.port
    erl.stop()
    for _ in range(6):  # whichever worker answers: a clear 503, fast, and the worker lives on
        started = time.monotonic()
        status, headers, body = http_get(port, "/rpc")
        assert status == 503, body
        assert headers.get("Retry-After") == "1" and b"NoConnection" in body
        assert time.monotonic() - started < 3.5
        assert http_get(port, "/const")[0] == 200
    status, _, body = http_get(port, "/ewgi/x")
    assert status == 503, body
    erl.start()
    for _ in range(10):  # every worker recovers on its next request
        answer = http_json(port, "/rpc")
        assert answer["erlang"] == erl.name


def test_gunicorn_two_workers(fresh_erl, web_epmd: int, tmp_path: Path) -> None:
    port = free_port()
    env = server_env(fresh_erl.name, web_epmd)
    server = Server([str(VENV_BIN / "gunicorn"), "-w", "2", "--threads", "4", "-b", f"127.0.0.1:{port}",
                     "-c", "tests/web/apps/gunicorn_conf.py", "--graceful-timeout", "5",
                     "tests.web.apps.plain:app"], port, env, tmp_path / "gunicorn.log")
    try:
        _exercise(server, fresh_erl, 2)
        assert http_json(server.port, "/rpc")["uwsgi_hook"] is False
        _outage(server, fresh_erl)
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()


def test_uwsgi_processes_and_mule(fresh_erl, web_epmd: int, tmp_path: Path) -> None:
    port = free_port()
    receiver = unique("mule") + "@127.0.0.1"
    log = tmp_path / "mule.txt"
    env = server_env(fresh_erl.name, web_epmd, BEAMBRIDGE_RECEIVER_NAME=receiver,
                     BEAMBRIDGE_RECEIVER_HANDLER="tests.web.apps.handlers:handle",
                     BB_RECEIVER_LOG=str(log))
    server = Server([str(VENV_BIN / "uwsgi"), "--http-socket", f"127.0.0.1:{port}", "--master",
                     "--processes", "2", "--threads", "2", "--enable-threads", "--die-on-term",
                     "--home", sys.prefix, "--module", "tests.web.apps.plain:app",
                     f"--mule={uwsgi_mule.__file__}", "--need-app", "--disable-logging"],
                    port, env, tmp_path / "uwsgi.log")
    try:
        _exercise(server, fresh_erl, 2)
        assert http_json(port, "/rpc")["uwsgi_hook"] is True  # register_uwsgi_postfork() took
        # the mule's receiver gets messages sent from Erlang and answers pids
        answer = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answer = _ask(fresh_erl, receiver, port)
            if answer is not None:
                break
            time.sleep(0.2)
        assert answer is not None, server.output()
        assert answer[0] == "got" and answer[1] == "hi"
        _outage(server, fresh_erl)
    finally:
        server.stop()
    assert log.read_text().count("b'hi'") >= 1
    assert "Traceback" not in server.output(), server.output()


def _ask(erl, receiver: str, port: int):
    """Erlang sends {self(), <<"hi">>} to the mule's node; what came back, or None."""
    from beambridge import web
    from beambridge.web import WebSettings

    from .conftest import COOKIE

    web.configure(WebSettings(node_name=unique("asker"), erlang_node=erl.name, cookie=COOKIE,
                              epmd_port=erl.epmd_port))
    try:
        result = web.rpc("bbw_examples", "request", [(A("x"), A(receiver)), b"hi", 1000])
    finally:
        web.close_node()
    if result == A("timeout"):
        return None
    got, message, _ = result[1]
    return (str(got), message.decode())


def test_json_helper_sanity() -> None:
    assert json.loads("[1]") == [1]
