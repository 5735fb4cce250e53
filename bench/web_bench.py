"""Requests per second through gunicorn: a view doing one Erlang rpc beside the same view
returning a constant, so the cost of the Erlang hop is a measured ratio.

    .venv/bin/python bench/web_bench.py                 # 2 workers x 4 threads, 16 clients, 5 s each
    .venv/bin/python bench/web_bench.py --quick         # 1 s each (smoke)

Starts its own loopback EPMD (free port), an Erlang node (system OTP) with beambridge_web, and
gunicorn; all stopped by pid at the end. The load generator runs in this process (threads with
keep-alive connections), so it shares the 2 cores with the server: compare the ratio, not the
absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from beambridge import otp  # noqa: E402

APP = '''
from beambridge import web
from beambridge.web import ErlangErrorMiddleware

def _app(environ, start_response):
    if environ["PATH_INFO"] == "/rpc":
        body = str(web.rpc("bbw_examples", "add", [1, 2])).encode()
    else:
        body = b"3"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

app = ErlangErrorMiddleware(_app)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def load(port: int, path: str, clients: int, seconds: float) -> tuple[float, int, list[float]]:
    """(requests/s, errors, latencies in ms) for ``clients`` keep-alive clients."""
    stop = time.monotonic() + seconds
    counts = [0] * clients
    errors = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors[i] += 1
                counts[i] += 1
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            latencies[i].append((time.perf_counter() - started) * 1000)
        conn.close()

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    elapsed = time.monotonic() - began
    flat = sorted(x for lat in latencies for x in lat)
    return sum(counts) / elapsed, sum(errors), flat


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="1 s per measurement")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds

    ebin = otp.build_erlang_app("beambridge_web")
    runtime = otp.default_runtime()
    cookie = "bench_" + secrets.token_hex(4)
    epmd_port, http_port = free_port(), free_port()
    erl_name = f"bench_erl_{secrets.token_hex(3)}@127.0.0.1"
    workdir = Path(tempfile.mkdtemp(prefix="bb_web_bench_"))
    (workdir / "bench_app.py").write_text(APP)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(epmd_port)
        env = runtime.environ({**os.environ, "ERL_EPMD_PORT": str(epmd_port)})
        procs.append(subprocess.Popen(
            [str(runtime.erl), "-noinput", "-name", erl_name, "-setcookie", cookie,
             "-kernel", "inet_dist_use_interface", "{127,0,0,1}", "-pa", str(ebin)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        server_env = dict(os.environ, BEAMBRIDGE_ERLANG_NODE=erl_name, BEAMBRIDGE_COOKIE=cookie,
                          BEAMBRIDGE_EPMD_PORT=str(epmd_port),
                          BEAMBRIDGE_NODE_NAME=f"bench_{secrets.token_hex(3)}@127.0.0.1",
                          PYTHONPATH=os.pathsep.join([str(workdir), str(ROOT / "src")]))
        gunicorn = Path(sys.executable).parent / "gunicorn"
        procs.append(subprocess.Popen(
            [str(gunicorn), "-w", str(args.workers), "--threads", str(args.threads),
             "-b", f"127.0.0.1:{http_port}", "--log-level", "warning", "bench_app:app"],
            env=server_env, cwd=str(workdir), stdin=subprocess.DEVNULL, start_new_session=True))
        wait_port(http_port)
        deadline = time.monotonic() + 30
        while True:  # Erlang up and every worker connected: warm up until /rpc answers 200s
            _, errors, _ = load(http_port, "/rpc", args.clients, 0.5)
            if errors == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the /rpc view never answered 200")
        load(http_port, "/const", args.clients, 0.5)
        results = {}
        for path in ("/const", "/rpc"):
            rps, errors, lat = load(http_port, path, args.clients, seconds)
            results[path] = {"rps": rps, "errors": errors, "p50_ms": pct(lat, 0.5),
                             "p99_ms": pct(lat, 0.99)}
        ratio = results["/rpc"]["rps"] / results["/const"]["rps"]
        print(f"gunicorn {args.workers} workers x {args.threads} threads, {args.clients} "
              f"keep-alive clients, {seconds:g} s each, OTP {runtime.release}")
        print(f"{'view':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
        for path, label in (("/const", "constant"), ("/rpc", "one rpc (erlang:add)")):
            r = results[path]
            print(f"{label:<28}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
                  f"{r['errors']:>8}")
        print(f"ratio rpc/constant: {ratio:.2f}  (Erlang hop costs {1 / ratio:.2f}x per request)")
        if args.json:
            args.json.write_text(json.dumps({"results": results, "ratio": ratio}, indent=2))
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                if proc is procs[-1] and len(procs) == 3:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, 15)
                else:
                    proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
