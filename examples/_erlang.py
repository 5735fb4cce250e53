"""Shared by the examples: a private loopback EPMD, an Erlang node with beambridge_web (Mnesia
on disc), the receiver as its own process, and a gunicorn server; all stopped by pid.

Each piece starts only once the one before it is ready (EPMD answers a NAMES request, the
Erlang node has its Mnesia table, the receiver is registered), so a normal start logs no
errors. Every child runs in its own session: Ctrl-C in the terminal reaches this process
only (Erlang would otherwise print its BREAK menu), and this process stops them all, on
Ctrl-C, SIGTERM or SIGHUP alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from beambridge import Error, otp  # noqa: E402
from beambridge.node import epmd_names  # noqa: E402

#: how long each piece may take to be ready, in seconds (a loaded machine is slow to boot erl)
START_TIMEOUT = 60.0
#: how long each piece may take to stop after SIGTERM before it is killed
STOP_TIMEOUT = 15.0

# The Erlang node's start: the store in $EXAMPLE_MNESIA_DIR (bbw_store:setup/1 waits for the
# table), the echo server, then the ready file; a failure is printed and ends the node.
_ERL_START = """
case bbw_store:setup(os:getenv("EXAMPLE_MNESIA_DIR")) of
    {ok, _} -> ok;
    StoreError -> io:format(standard_error, "bbw_store:setup failed: ~p~n", [StoreError]), halt(1)
end,
case bbw_examples:echo_start() of
    ok -> ok;
    EchoError -> io:format(standard_error, "bbw_examples:echo_start failed: ~p~n", [EchoError]), halt(1)
end,
ok = file:write_file(os:getenv("EXAMPLE_READY_FILE"), <<"ready">>).
"""


class Stop(Exception):
    """SIGTERM or SIGHUP: stop everything, as Ctrl-C does."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Children:
    """The processes we started, by name; a start that fails names the one that exited."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, what: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # Own session: the terminal's Ctrl-C goes to us alone, and we stop them in order.
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((what, proc))
        return proc

    def wait_for(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited (status {proc.returncode}) while waiting for "
                                       f"{what}; its messages are above")
            with contextlib.suppress(OSError, Error):
                if ready():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{what} not ready after {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """SIGTERM to each, newest first (gunicorn's whole process group: master and workers),
        waiting for each before the next; SIGKILL for one that outstays STOP_TIMEOUT."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # its own group: it leads a session
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)


def _check_free(port: int) -> None:
    """A taken --port fails here: the readiness probe could take whatever answers there for us."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is free
        try:
            s.bind(("127.0.0.1", port))
        except OSError as error:
            raise RuntimeError(f"port {port} on 127.0.0.1 is taken ({error.strerror}): pick another "
                               "with --port, or leave --port out for a free one") from None


def _stop_signal(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


@contextlib.contextmanager
def stack(app: str, *, workers: int = 2, data_dir: Path | None = None, port: int = 0,
          extra_path: Path | None = None) -> Iterator[dict[str, str]]:
    """Everything an example needs; yields the settings (and ``URL``)."""
    # Ctrl-C raises KeyboardInterrupt even when the shell started us with SIGINT ignored (a
    # background job); SIGTERM and SIGHUP stop us the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_signal)
    signal.signal(signal.SIGHUP, _stop_signal)
    ebin = otp.build_erlang_app("beambridge_web")
    runtime = otp.default_runtime()
    cookie = "example_" + secrets.token_hex(4)
    epmd_port, http_port = free_port(), port or free_port()
    if port:
        _check_free(port)
    # Names need only be unique on this run's own EPMD, and Mnesia's folder (--mnesia-dir)
    # belongs to the node name that made it: the same names every run.
    erl, receiver = "example_erl@127.0.0.1", "example_receiver@127.0.0.1"
    scratch = Path(tempfile.mkdtemp(prefix="bb_example_"))
    data = data_dir or scratch / "mnesia"
    settings = {
        "BEAMBRIDGE_ERLANG_NODE": erl, "BEAMBRIDGE_COOKIE": cookie,
        "BEAMBRIDGE_EPMD_PORT": str(epmd_port), "BEAMBRIDGE_NODE_NAME": "example_web@127.0.0.1",
        "EXAMPLE_RECEIVER": receiver, "EXAMPLE_MNESIA_DIR": str(data.resolve()),
        "URL": f"http://127.0.0.1:{http_port}",
    }
    env = dict(os.environ, **settings, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT / "examples"), str(extra_path or "")) if p))
    ready_file = scratch / "erlang_ready"
    children = _Children()
    try:
        children.start("epmd", [str(runtime.tool("epmd")), "-port", str(epmd_port), "-address", "127.0.0.1"],
                       env)
        # A NAMES request, not a bare connect: EPMD logs "got partial packet" for the latter.
        children.wait_for("EPMD", lambda: epmd_names(port=epmd_port, timeout=1.0) is not None)
        children.start("the Erlang node", [
            str(runtime.erl), "-noinput", "+Bi", "-start_epmd", "false", "-name", erl, "-setcookie", cookie,
            "-kernel", "inet_dist_use_interface", "{127,0,0,1}", "-kernel", "logger_level", "warning",
            "-pa", str(ebin), "-eval", _ERL_START,
        ], runtime.environ({**env, "ERL_EPMD_PORT": str(epmd_port), "EXAMPLE_READY_FILE": str(ready_file),
                            "ERL_CRASH_DUMP_SECONDS": "0"}))  # no erl_crash.dump left in the cwd
        children.wait_for("the Erlang node and its Mnesia table", ready_file.exists)
        children.start("the receiver", [
            sys.executable, "-m", "beambridge", "receiver", "--name", receiver, "--cookie", cookie,
            "--epmd-port", str(epmd_port), "example_handlers:handle"], env)
        short = receiver.partition("@")[0]
        children.wait_for("the receiver", lambda: short in dict(epmd_names(port=epmd_port, timeout=1.0)))
        children.start("gunicorn", [
            str(Path(sys.executable).parent / "gunicorn"), "-w", str(workers), "--threads", "4",
            "-b", f"127.0.0.1:{http_port}", "-c", str(ROOT / "examples" / "gunicorn_conf.py"), app,
        ], env)
        children.wait_for("the web server", lambda: _answers(settings["URL"] + "/"))
        yield settings
    finally:
        # Stopping is bounded (STOP_TIMEOUT each): a second Ctrl-C must not cut it short.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        children.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bool(response.status == 200)


def smoke(url: str, paths: list[tuple[str, str, bytes | None]]) -> bool:
    """GET/PUT a few pages and print what came back (the examples' --smoke); all 2xx?"""
    ok = True
    for method, path, data in paths:
        request = urllib.request.Request(url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                print(f"{method} {path} -> {response.status}: {response.read().decode().strip()}")
        except urllib.error.HTTPError as error:
            print(f"{method} {path} -> {error.code}: {error.read().decode().strip()}")
            ok = False
    return ok


SMOKE = [("GET", "/", None), ("GET", "/hello", None), ("GET", "/add?a=40&b=2", None),
         ("PUT", "/kv/colour", b"blue"), ("GET", "/kv/colour", None), ("GET", "/shout?text=hey", None),
         ("GET", "/ewgi/page?x=1", None)]


def main(app: str, here: Path, description: str) -> int:
    """The examples' command line: serve until Ctrl-C/SIGTERM, or ``--smoke`` and exit."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="make a few requests, print the answers, exit")
    parser.add_argument("--port", type=int, default=0, help="HTTP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--mnesia-dir", type=Path, metavar="DIR",
                        help="keep the Mnesia table in DIR between runs (default: a temporary folder)")
    args = parser.parse_args()
    try:
        with stack(app, extra_path=here, port=args.port, data_dir=args.mnesia_dir) as settings:
            if args.smoke:
                return 0 if smoke(settings["URL"], SMOKE) else 1
            print(f"serving on {settings['URL']} (Erlang node {settings['BEAMBRIDGE_ERLANG_NODE']}, "
                  f"Mnesia in {settings['EXAMPLE_MNESIA_DIR']}); Ctrl-C stops everything\n"
                  f"an Erlang shell on that node: ERL_EPMD_PORT={settings['BEAMBRIDGE_EPMD_PORT']} erl "
                  f"-name me@127.0.0.1 -setcookie {settings['BEAMBRIDGE_COOKIE']} "
                  f"-remsh {settings['BEAMBRIDGE_ERLANG_NODE']}", flush=True)
            while True:
                time.sleep(3600)
    except (KeyboardInterrupt, Stop):
        print("stopped", flush=True)
        return 0
    except (RuntimeError, Error) as error:  # Error: no Erlang runtime, a build that failed
        print(f"example failed to start: {error}", file=sys.stderr, flush=True)
        return 1
