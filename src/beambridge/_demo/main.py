"""The main job (``beambridge demo``, ``make demo``): the mission end to end on this machine.

A local cluster (a private EPMD, the compute service, two Erlang worker nodes), a receiver,
and a Flask app under gunicorn whose views reach Erlang along both roads. Then one small
request, a big computation: the longest Collatz chain below a bound, on the cluster through
the web app, beside the same Python in one process and in a ``multiprocessing`` pool on the
same cores, answers checked equal. Everything started here is stopped here, on success, on
Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from .. import otp
from .._errors import Timeout, TransportError
from ..compute import Service
from ..node import epmd_names
from ..term import Atom
from ..web import Receiver
from . import collatz

Out = Callable[[str], None]


def _say(text: str) -> None:
    print(text, flush=True)  # piped (make demo | tee, a test) as promptly as on a terminal


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(ready: Callable[[], bool], what: str, timeout: float,
           alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited while starting")
        with contextlib.suppress(OSError, TransportError):
            if ready():
                return
        time.sleep(0.1)
    raise Timeout(f"{what} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C does, so every ``with`` below stops what it started."""
    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one unwinding, not a second mid-cleanup
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _process(command: list[str], **options: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own session (a terminal's Ctrl-C is ours to handle), stopped with its
    whole process group (gunicorn's workers too) by its pid."""
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True, **options)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def _shout(message: Any) -> Any:
    """The receiver's handler: Erlang sends ``{shout, Text}``, Python answers."""
    if isinstance(message, tuple) and len(message) == 2 and message[0] == Atom("shout"):
        return bytes(message[1]).upper() + b"!"
    return (Atom("unknown"), message)


def _get(url: str, body: Any = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{url}: {error.code} {error.read().decode(errors='replace')}") from None


def _bar(done: int, total: int, width: int = 40) -> str:
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} parts"


def _run_job(web: str, below: int, out: Out, tty: bool, limit: float = 600.0
             ) -> tuple[list[int], float]:
    """Start the job through the web app and follow its progress bar to the end (at most
    ``limit`` seconds: the service's own job timeout ends it well before)."""
    started = time.perf_counter()
    job = _get(web + "/api/collatz", {"below": below})
    shown = -1
    while True:
        if time.perf_counter() - started > limit:
            raise Timeout(f"the cluster's job did not end within {limit:.0f} s")
        state = _get(f"{web}/api/jobs/{job['id']}")
        if tty:
            sys.stdout.write("\r  " + _bar(state["done"], state["total"]))
            sys.stdout.flush()
        elif state["done"] * 4 // max(state["total"], 1) > shown:
            shown = state["done"] * 4 // max(state["total"], 1)
            out("  " + _bar(state["done"], state["total"]))
        if state["status"] != "running":
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if tty:
        sys.stdout.write("\n")
    if state["status"] != "done":
        raise RuntimeError(f"the cluster's job ended {state['status']}: {state.get('reason')}")
    return list(state["answer"]), elapsed


def run(below: int = 1_000_000, *, serve: bool = False, out: Out = _say) -> int:
    """The demo; 0 when every road answered and the three answers agree."""
    try:
        with _terminate_as_exit():
            return _main(below, serve, out)
    except KeyboardInterrupt:
        out("\ninterrupted: everything started was stopped")
        return 130
    except SystemExit as stop:
        out("\nterminated: everything started was stopped")
        return int(stop.code or 0)


def _main(below: int, serve: bool, out: Out) -> int:
    cores = os.cpu_count() or 1
    runtime = otp.default_runtime()
    suffix = secrets.token_hex(3)
    epmd_port, http_port = _free_port(), _free_port()
    web = f"http://127.0.0.1:{http_port}"
    tty = sys.stdout.isatty()
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        out(f"starting a local cluster on {runtime} (private EPMD on port {epmd_port}) ...")
        epmd = stack.enter_context(_process(
            [str(runtime.tool("epmd")), "-port", str(epmd_port), "-address", "127.0.0.1"]))
        _until(lambda: epmd_names(port=epmd_port, timeout=1) == [], "epmd", 10, lambda: epmd.poll() is None)
        service = stack.enter_context(Service(local_nodes=2, epmd_port=epmd_port))
        workers = [n["name"] for n in service.client().nodes() if n.get("role") == "local"]
        receiver_name = f"bbdemo_rx_{suffix}@127.0.0.1"
        stack.enter_context(Receiver(receiver_name, _shout, cookie=service.cookie,
                                     epmd_port=epmd_port))
        env = dict(os.environ, BEAMBRIDGE_ERLANG_NODE=workers[0], BEAMBRIDGE_COOKIE=service.cookie,
                   BEAMBRIDGE_EPMD_PORT=str(epmd_port), BEAMBRIDGE_NODE_NAME=f"bbdemo_web_{suffix}@127.0.0.1",
                   DEMO_SERVICE_URL=service.url, DEMO_SERVICE_TOKEN=service.token or "",
                   DEMO_RECEIVER=receiver_name)
        if not service.token:
            del env["DEMO_SERVICE_TOKEN"]
        gunicorn = stack.enter_context(_process(
            [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{http_port}",
             "-c", "python:beambridge._demo.gunicorn_conf", "beambridge._demo.webapp:app"],
            env=env))
        _until(lambda: urllib.request.urlopen(web + "/", timeout=5).status == 200, "the web app", 30,
               lambda: gunicorn.poll() is None)
        out(f"up in {time.perf_counter() - t0:.1f} s: compute service {service.node} at {service.url}, "
            f"workers {', '.join(workers)}, receiver {receiver_name}, "
            f"web app {web} (gunicorn, 2 workers)\n")

        first = _get(web + "/api/rpc")
        answer = _get(web + "/api/rpc")  # by the same worker, likely: its node is connected now
        out(f"node road, rpc:   web worker {answer['web_worker_pid']}'s node {answer['python_node']}\n"
            f"                  ran {answer['call']} on {answer['erlang_node']} -> "
            f"{answer['answer']} in {answer['ms']} ms (a first call, connecting too: {first['ms']} ms)")
        answer = _get(web + "/api/shout?text=hello+from+python")
        out(f"node road, back:  {answer['via']} sent {{shout, <<\"{answer['sent']}\">>}} to the "
            f"receiver, the Python handler answered {answer['answer']!r}")
        out(f"HTTP+JSON road:   POST /api/collatz {{\"below\": {below}}}: which start below {below:,} "
            "has the longest Collatz chain?")
        on_cluster, cluster_time = _run_job(web, below, out, tty)
        out(f"  the cluster says {on_cluster[0]:,} ({on_cluster[1]} steps) in {cluster_time:.2f} s\n")

        out(f"the same Python code, in one process and in a multiprocessing pool of {cores} ...")
        started = time.perf_counter()
        alone = collatz.in_one_process(below)
        alone_time = time.perf_counter() - started
        started = time.perf_counter()
        pooled = collatz.in_processes(below, cores)
        pool_time = time.perf_counter() - started

        same = on_cluster == alone == pooled
        out(f"\n  Erlang cluster (HTTP+JSON, 2 worker nodes)  {cluster_time:7.2f} s")
        out(f"  Python, multiprocessing on {cores} cores        {pool_time:7.2f} s   "
            f"{pool_time / cluster_time:5.1f}x the cluster's time")
        out(f"  Python, one process                         {alone_time:7.2f} s   "
            f"{alone_time / cluster_time:5.1f}x")
        out(f"  answers {'equal' if same else 'DIFFER'}: {on_cluster} {alone} {pooled}")
        per_core = alone_time / (cluster_time * cores)
        out(f"\nSame algorithm on the same {cores} cores. A pool only divides CPython's time by the "
            f"cores; the\ncluster runs the loop as BEAM's JIT-compiled code, ~{per_core:.0f}x CPython's "
            "speed per core (HTTP included),\nand grows by a machine's cores with each worker host.")
        if serve and same:
            out(f"\nserving {web} (open it in a browser); Ctrl-C stops everything")
            while gunicorn.poll() is None:
                time.sleep(0.5)
    out("everything started was stopped")
    return 0 if same else 1
