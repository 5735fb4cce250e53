"""beambridge.web.metrics: the node's counters for Prometheus, under gunicorn with two workers in
multiprocess mode, in Django's view (its own process), after node restarts, and without
prometheus_client installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import COOKIE, ROOT, VENV_BIN, Server, free_port, http_get, server_env, unique

pytestmark = pytest.mark.erlang

Labels = tuple[tuple[str, str], ...]


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample name: [(labels, value), ...]}`` of a scrape, read by prometheus_client's parser."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def total(scrape: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in scrape.get(name, []) if all(got.get(k) == w for k, w in labels.items()))


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, headers, body = http_get(port, "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    return parse(body.decode())


def wait_for(check, timeout: float, what: str):
    """``check()`` until it returns a true value (bounded), else fail with its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer[0] or time.monotonic() > deadline:
            assert answer[0], f"{what}: {answer[1]}"
            return answer[1]
        time.sleep(0.1)


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 30) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def spread_rpcs(port: int) -> tuple[dict[int, str], int]:
    """rpcs held a moment, concurrently, until both workers served some: ``({pid: node}, count)``."""
    pids: dict[int, str] = {}
    made = 0
    deadline = time.monotonic() + 15
    with ThreadPoolExecutor(8) as pool:
        while (len(pids) < 2 or made < 40) and time.monotonic() < deadline:
            for status, _, body in pool.map(lambda _: http_get(port, "/rpc?hold=40"), range(8)):
                assert status == 200, body
                answer = json.loads(body)
                assert answer["sync_thread"], answer  # started in the worker, before any scrape
                pids[answer["pid"]] = answer["node"]
                made += 1
    assert len(pids) == 2, pids
    return pids, made


def start_gunicorn(node: str, web_epmd: int, tmp_path: Path, sync_interval: str
                   ) -> tuple[Path, int, Server]:
    """The Flask metrics app under gunicorn (2 workers, 4 threads each) in multiprocess mode:
    ``(its PROMETHEUS_MULTIPROC_DIR, its port, the server)``."""
    prom = tmp_path / "prom"
    prom.mkdir()
    port = free_port()
    env = server_env(node, web_epmd, PROMETHEUS_MULTIPROC_DIR=str(prom), BB_SYNC_INTERVAL=sync_interval)
    server = Server([str(VENV_BIN / "gunicorn"), "-w", "2", "--threads", "4", "-b", f"127.0.0.1:{port}",
                     "-c", "tests/web/apps/gunicorn_metrics_conf.py", "--graceful-timeout", "5",
                     "tests.web.apps.flask_metrics:app"], port, env, tmp_path / "gunicorn.log")
    return prom, port, server


# ---------------------------------------------------------------- gunicorn, two workers

def test_gunicorn_two_workers_multiprocess(erl, web_epmd: int, tmp_path: Path) -> None:
    prom, port, server = start_gunicorn(erl.name, web_epmd, tmp_path, sync_interval="0.3")
    try:
        pids, made = spread_rpcs(port)
        errors, timeouts = 3, 2
        for _ in range(errors):
            assert http_get(port, "/error")[0] == 502
        for _ in range(timeouts):
            assert http_get(port, "/timeout")[0] == 504

        def counted() -> tuple[bool, object]:
            got = scrape(port)
            outcomes = {o: total(got, "beambridge_node_rpc_total", peer=erl.name, outcome=o)
                        for o in ("ok", "error", "timeout")}
            return outcomes == {"ok": made, "error": errors, "timeout": timeouts}, (outcomes, got)

        _, got = wait_for(counted, 10, f"{made} ok rpcs, {errors} errors, {timeouts} timeouts")
        assert total(got, "beambridge_node_rpc_seconds_total", peer=erl.name) >= made * 0.04
        assert total(got, "beambridge_node_connects_total", peer=erl.name) == 2
        assert total(got, "beambridge_node_messages_total", peer=erl.name, direction="out") >= made
        assert total(got, "beambridge_node_messages_total", peer=erl.name, direction="in") >= made
        assert total(got, "beambridge_node_bytes_total", peer=erl.name, direction="out") > 0
        assert total(got, "beambridge_node_bytes_total", peer=erl.name, direction="in") > 0
        assert total(got, "beambridge_node_rpc_seconds_max", peer=erl.name) >= 0.2  # a timed-out one
        assert total(got, "beambridge_node_connections_up", peer=erl.name) == 2
        opened = {(labels["pid"], labels["node"]) for labels, v in got["beambridge_node_open"] if v == 1}
        assert opened == {(str(pid), node) for pid, node in pids.items()}

        # one worker fewer: its live gauges leave, its counts stay in the sums
        os.kill(server.proc.pid, signal.SIGTTOU)

        def one_left() -> tuple[bool, object]:
            got = scrape(port)
            pids_left = {labels["pid"] for labels, _ in got.get("beambridge_node_open", [])}
            return (len(pids_left) == 1
                    and total(got, "beambridge_node_connections_up", peer=erl.name) == 1), got

        got = wait_for(one_left, 10, "one worker's gauges after SIGTTOU")
        assert total(got, "beambridge_node_rpc_total", peer=erl.name) == made + errors + timeouts
        assert [p for p in prom.iterdir() if p.name.startswith("gauge_live")]  # the living one's
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()


def test_gunicorn_worker_exit_pushes_last_counts(erl, web_epmd: int, tmp_path: Path) -> None:
    """No timer tick in the test's time (60 s): what a scrape sees of the worker that left was
    pushed by its exit hook."""
    prom, port, server = start_gunicorn(erl.name, web_epmd, tmp_path, sync_interval="60")
    try:
        _, made = spread_rpcs(port)
        os.kill(server.proc.pid, signal.SIGTTOU)
        # the leaving worker pushed its counts (its files are the only ones: nobody synced yet)
        # and then marked itself dead (its gauge files removed)
        files = wait_for(lambda: ([p.name.split("_")[0] for p in prom.iterdir()] == ["counter"],
                                  sorted(prom.iterdir())), 10, "the leaving worker's last counts")
        assert files
        got = scrape(port)  # answered by the worker left, which syncs itself first
        assert total(got, "beambridge_node_rpc_total", peer=erl.name, outcome="ok") == made
        assert len(got["beambridge_node_open"]) == 1
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()


# ---------------------------------------------------------------- uWSGI, two processes

def test_uwsgi_two_processes_multiprocess(erl, web_epmd: int, tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    port = free_port()
    env = server_env(erl.name, web_epmd, PROMETHEUS_MULTIPROC_DIR=str(prom), BB_SYNC_INTERVAL="0.3")
    server = Server([str(VENV_BIN / "uwsgi"), "--http-socket", f"127.0.0.1:{port}", "--master",
                     "--processes", "2", "--threads", "2", "--enable-threads", "--die-on-term",
                     "--home", sys.prefix, "--module", "tests.web.apps.uwsgi_metrics:app",
                     "--need-app", "--disable-logging"], port, env, tmp_path / "uwsgi.log")
    try:
        pids, made = spread_rpcs(port)

        def both() -> tuple[bool, object]:  # each worker's own timer pushed its counts
            got = scrape(port)
            opened = {labels["pid"] for labels, v in got.get("beambridge_node_open", []) if v == 1}
            return (total(got, "beambridge_node_rpc_total", peer=erl.name, outcome="ok") == made
                    and opened == {str(p) for p in pids}), got

        wait_for(both, 10, f"{made} ok rpcs from both workers")
        gone = min(pids)
        os.kill(gone, signal.SIGHUP)  # uWSGI reloads that worker gracefully (the master respawns it)

        def left() -> tuple[bool, object]:
            got = scrape(port)
            opened = {labels["pid"] for labels, _ in got.get("beambridge_node_open", [])}
            return str(gone) not in opened, got

        got = wait_for(left, 10, f"worker {gone}'s gauges after its reload")
        assert total(got, "beambridge_node_rpc_total", peer=erl.name, outcome="ok") == made
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()


# ---------------------------------------------------------------- Django, one process

def test_django_view_single_process(erl, web_epmd: int) -> None:
    env = server_env(erl.name, web_epmd, BB_RPCS="3")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = json.loads(run_python("from tests.web.apps import django_metrics; django_metrics.main()", env))
    assert out["status"] == 200 and out["content_type"].startswith("text/plain")
    assert not [n for n in parse(out["before"]) if n.startswith("beambridge_node")]
    assert out["opened_by_scrape"] is False  # the scrape opened no node
    got = parse(out["after"])
    assert total(got, "beambridge_node_rpc_total", peer=erl.name, outcome="ok") == 3
    assert total(got, "beambridge_node_rpc_total", peer=erl.name, outcome="error") == 0
    assert total(got, "beambridge_node_connections_up", peer=erl.name) == 1
    assert total(got, "beambridge_node_connects_total", peer=erl.name) == 1
    assert [labels["node"] for labels, _ in got["beambridge_node_open"]] == [out["node"]]
    assert "process_cpu_seconds_total" in got  # prometheus_client's default registry, too


# ---------------------------------------------------------------- the WSGI app, in this process

@pytest.mark.skipif(bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")), reason="needs one-process mode")
def test_wsgi_app_in_process(web_settings, erl) -> None:
    from beambridge import RemoteError, web
    from beambridge.web.metrics import metrics_app

    def get(accept: str = "") -> tuple[str, str]:
        answers: list[tuple[str, dict[str, str]]] = []
        body = b"".join(metrics_app({"HTTP_ACCEPT": accept} if accept else {},
                                    lambda status, headers: answers.append((status, dict(headers)))))
        assert answers[0][0] == "200 OK"
        assert answers[0][1]["Content-Length"] == str(len(body))
        return answers[0][1]["Content-Type"], body.decode()

    web.close_node()
    assert not [n for n in parse(get()[1]) if n.startswith("beambridge_node")]
    assert web.node_if_open() is None  # a scrape opens no node
    web.rpc("erlang", "node")
    with pytest.raises(RemoteError):
        web.rpc("erlang", "error", [1])
    content_type, text = get()
    got = parse(text)
    assert content_type.startswith("text/plain")
    assert total(got, "beambridge_node_rpc_total", peer=erl.name, outcome="ok") == 1
    assert total(got, "beambridge_node_rpc_total", peer=erl.name, outcome="error") == 1
    content_type, text = get("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and text.endswith("# EOF\n")


# ---------------------------------------------------------------- the sync, in one process

SYNC = """
import json, os, time
from beambridge import web
from beambridge.web import WebSettings, metrics
from prometheus_client.parser import text_string_to_metric_families as parse

def rpc_ok():
    body, _ = metrics.render()
    return sum(s.value for f in parse(body.decode()) for s in f.samples
               if s.name == "beambridge_node_rpc_total" and s.labels["outcome"] == "ok")

def opened():
    body, _ = metrics.render()
    return {s.labels["node"]: s.value for f in parse(body.decode()) for s in f.samples
            if s.name == "beambridge_node_open"}

base = dict(erlang_node=os.environ["ERL"], cookie=os.environ["COOKIE"],
            epmd_port=int(os.environ["EPMD"]))
web.configure(WebSettings(node_name=os.environ["NAME"] + "a", **base))
for _ in range(3):
    web.rpc("erlang", "node")
first = web.get_node().name
seen = [rpc_ok()]
metrics.set_sync_interval(0.2)
web.rpc("erlang", "node")
deadline = time.monotonic() + 5
while time.monotonic() < deadline:  # the timer pushes without a scrape here
    if metrics._pusher.last.get(("beambridge_node_rpc", os.environ["ERL"], ("ok",))) == 4:
        break
    time.sleep(0.05)
seen.append(rpc_ok())
web.configure(WebSettings(node_name=os.environ["NAME"] + "b", **base))  # a new node: counts from 0
web.rpc("erlang", "node")
web.rpc("erlang", "node")
seen.append(rpc_ok())
second = web.get_node().name
print(json.dumps({"seen": seen, "opened": opened(), "first": first, "second": second,
                  "pid": os.getpid()}))
web.close_node()
"""


def test_multiprocess_sync_across_nodes(erl, web_epmd: int, tmp_path: Path) -> None:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), ERL=erl.name, COOKIE=COOKIE,
               EPMD=str(web_epmd), NAME=unique("sync"),
               PYTHONPATH=str(ROOT) + os.pathsep + str(ROOT / "src"))
    out = json.loads(run_python(SYNC, env))
    assert out["seen"] == [3, 4, 6]  # the new node's counts add to the old one's, never go back
    assert out["opened"] == {out["first"]: 0, out["second"]: 1}
    # at exit (atexit, without the hooks) its live gauges were marked dead; its counts stay
    assert [p.name for p in tmp_path.iterdir()] == [f"counter_{out['pid']}.db"]


# ---------------------------------------------------------------- without prometheus_client

MISSING = """
import json, os, sys
sys.modules["prometheus_client"] = None  # as if not installed
import beambridge
from beambridge.web import hooks
from beambridge.web.flask import Beambridge
from flask import Flask
found = {}
for what in ("metrics", "flask", "django"):
    try:
        if what == "metrics":
            import beambridge.web.metrics
        elif what == "flask":
            Beambridge(Flask("x")).metrics_view()
        else:
            import beambridge.web.django.views
    except ImportError as error:
        found[what] = [type(error).__name__, str(error), isinstance(error, beambridge.Error)]
os.environ["PROMETHEUS_MULTIPROC_DIR"] = "/nonexistent"
hooks.child_exit(None, type("W", (), {"pid": 1})())  # does nothing without prometheus_client
hooks.on_exit()
print(json.dumps(found))
"""


def test_without_prometheus_client() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + str(ROOT / "src"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    found = json.loads(run_python(MISSING, env))
    assert set(found) == {"metrics", "flask", "django"}
    for kind, text, typed in found.values():
        assert kind == "MetricsUnavailable" and typed
        assert "pip install 'beambridge[metrics]'" in text
