"""Real servers: gunicorn (2 workers, threads) and uWSGI (2 processes, a mule) in front of a
real Erlang node, which is stopped and restarted during the run."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from beambridge import Atom

from .conftest import VENV_BIN, Server, free_port, http_get, http_json, server_env

pytestmark = pytest.mark.erlang
A = Atom


def _exercise(server: Server, erl, workers: int) -> None:
    port = server.port
    # requests reach Erlang; every worker has its own node with its own name
    seen = {}
    for _ in range(40):
        answer = http_json(port, "/rpc")
        assert answer["erlang"] == erl.name
        seen[answer["pid"]] = answer["node"]
        if len(seen) == workers:
            break
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
        _outage(server, fresh_erl)
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()


def test_json_helper_sanity() -> None:
    assert json.loads("[1]") == [1]
