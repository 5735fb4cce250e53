"""Shared by the examples: a private loopback EPMD, an Erlang node with beambridge_web (Mnesia
on disc in DATA_DIR), the receiver as its own process, and a gunicorn server; all stopped by pid."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from beambridge import otp  # noqa: E402
from beambridge.node import epmd_names  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout} s")


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), 0.5):
        return True


@contextlib.contextmanager
def stack(app: str, *, workers: int = 2, data_dir: Path | None = None,
          extra_path: Path | None = None) -> Iterator[dict[str, str]]:
    """Everything an example needs; yields the settings (and ``URL``)."""
    ebin = otp.build_erlang_app("beambridge_web")
    runtime = otp.default_runtime()
    cookie = "example_" + secrets.token_hex(4)
    epmd_port, http_port = free_port(), free_port()
    suffix = secrets.token_hex(3)
    erl = f"example_erl_{suffix}@127.0.0.1"
    receiver = f"example_receiver_{suffix}@127.0.0.1"
    data = data_dir or Path(tempfile.mkdtemp(prefix="bb_example_mnesia_"))
    procs: list[subprocess.Popen[bytes]] = []
    settings = {
        "BEAMBRIDGE_ERLANG_NODE": erl, "BEAMBRIDGE_COOKIE": cookie,
        "BEAMBRIDGE_EPMD_PORT": str(epmd_port), "BEAMBRIDGE_NODE_NAME": "example_web@127.0.0.1",
        "EXAMPLE_RECEIVER": receiver, "EXAMPLE_MNESIA_DIR": str(data),
        "URL": f"http://127.0.0.1:{http_port}",
    }
    env = dict(os.environ, **settings, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT / "examples"), str(extra_path or "")) if p))
    try:
        procs.append(subprocess.Popen(["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"]))
        _wait(lambda: _listening(epmd_port), "epmd")
        procs.append(subprocess.Popen(
            [str(runtime.erl), "-noinput", "-name", erl, "-setcookie", cookie,
             "-kernel", "inet_dist_use_interface", "{127,0,0,1}", "-pa", str(ebin),
             "-eval", f"bbw_store:setup(\"{data}\"), bbw_examples:echo_start()"],
            env=runtime.environ({**os.environ, "ERL_EPMD_PORT": str(epmd_port)}),
            stdin=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "beambridge", "receiver", "--name", receiver, "--cookie", cookie,
             "--epmd-port", str(epmd_port), "example_handlers:handle"], env=env))
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-w", str(workers), "--threads", "4",
             "-b", f"127.0.0.1:{http_port}", "-c", str(ROOT / "examples" / "gunicorn_conf.py"), app],
            env=env, start_new_session=True))
        _wait(lambda: _ready(settings["URL"] + "/kv/_ready"), "the web server and Mnesia")
        _wait(lambda: receiver.partition("@")[0] in [n for n, _ in epmd_names(port=epmd_port)],
              "the receiver")
        yield settings
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                if proc is procs[-1] and len(procs) == 4:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, 15)
                else:
                    proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _ready(url: str) -> bool:
    try:
        return bool(urllib.request.urlopen(url, timeout=5).status == 200)
    except urllib.error.HTTPError as error:
        return error.code == 404  # the view ran and Mnesia answered "no such key"


def smoke(url: str, paths: list[tuple[str, str, bytes | None]]) -> None:
    """GET/PUT a few pages and print what came back (the examples' --smoke)."""
    for method, path, data in paths:
        request = urllib.request.Request(url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                print(f"{method} {path} -> {response.status}: {response.read().decode().strip()}")
        except urllib.error.HTTPError as error:
            print(f"{method} {path} -> {error.code}: {error.read().decode().strip()}")
            raise


def serve(settings: dict[str, str]) -> None:
    print(f"serving on {settings['URL']} (Erlang node {settings['BEAMBRIDGE_ERLANG_NODE']}); "
          "Ctrl-C stops everything", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
