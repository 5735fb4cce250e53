"""The examples as a new user runs them: one command each, a quiet start, JSON answers (400s
included), and Ctrl-C or SIGTERM stops every process they started.

Each run gets its own session (as a terminal gives a command), its output goes to a file, and
every process the test finds under it is recorded by pid and start time, checked gone within
a bounded wait, and killed by that pid if it outlives the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: what a normal start and stop must not print: Erlang failures from requests that came too
#: early, EPMD's complaint about a bare-connect probe, Erlang's BREAK menu, tracebacks
ALARMS = ("noconnection", "node_not_running", "no_exists", "case_clause", "partial packet",
          "request failed", "BREAK:", "Traceback", "ERROR REPORT", "CRASH REPORT", "[ERROR]")

#: (pid, start time): a pid alone could be reused by the time we look again
Proc = tuple[int, int]


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a live process, None for one that is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    state, ppid, start = fields[0], int(fields[1]), int(fields[19])
    return None if state in ("Z", "X") else (ppid, state, start)


def _descendants(root: int) -> dict[Proc, str]:
    """Every live process under ``root``, with its command line."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            starts[int(entry.name)] = stat[2]
    found: dict[Proc, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            found[(pid, starts[pid])] = command.replace(b"\0", b" ").decode(errors="replace")
        todo += children.get(pid, [])
    return found


def _alive(proc: Proc) -> bool:
    stat = _stat(proc[0])
    return stat is not None and stat[2] == proc[1]


def _wait_until(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout} s")
        time.sleep(0.1)


class Run:
    """``run.py`` in its own session, its output in a file."""

    def __init__(self, example: str, log: Path, *args: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "examples" / example / "run.py"), *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True)
        self.started: dict[Proc, str] = {}

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop_all(self) -> None:
        """Whatever is still alive, killed by pid (after a failed assertion)."""
        if self.proc.poll() is None:
            self.started.update(_descendants(self.proc.pid))
            self.proc.kill()
        for proc in self.started:
            if _alive(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc[0], signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@contextlib.contextmanager
def running(example: str, log: Path, *args: str) -> Iterator[Run]:
    run = Run(example, log, *args)
    try:
        yield run
    finally:
        run.stop_all()


def _fetch(url: str) -> tuple[int, str, Any]:
    """(status, content type, decoded JSON) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], json.loads(error.read())


def _assert_quiet(output: str) -> None:
    alarms = [alarm for alarm in ALARMS if alarm in output]
    assert not alarms, f"{alarms} in the output:\n{output[-4000:]}"


@pytest.mark.erlang
@pytest.mark.timeout(120)
@pytest.mark.parametrize("example", ["flask_app", "django_project"])
def test_example_smoke(example: str, tmp_path: Path) -> None:
    with running(example, tmp_path / "out.log", "--smoke") as run:
        assert run.proc.wait(100) == 0, run.output[-4000:]
    lines = [line for line in run.output.splitlines() if " -> " in line]
    assert len(lines) == 7 and all(" -> 20" in line for line in lines), lines
    assert "hello world !" in run.output and "blue" in run.output
    shout = next(line for line in lines if "/shout" in line)
    assert json.loads(shout.split(": ", 1)[1]) == {"answer": "HEY"}
    _assert_quiet(run.output)


@pytest.mark.erlang
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
@pytest.mark.parametrize("example", ["flask_app", "django_project"])
def test_example_serves_then_stops_everything(example: str, how: str, tmp_path: Path) -> None:
    with running(example, tmp_path / "out.log") as run:
        _wait_until(lambda: "serving on" in run.output or run.proc.poll() is not None,
                    "no 'serving on' line", 60)
        assert run.proc.poll() is None, run.output[-4000:]
        url = re.search(r"serving on (http://\S+)", run.output)
        assert url is not None, run.output
        base = url.group(1)

        # Every process it started: EPMD, erl (and its erl_child_setup), the receiver, the
        # gunicorn master and its two workers (forked once the master runs: wait for them).
        def gunicorns() -> list[str]:
            run.started = _descendants(run.proc.pid)
            return [cmd for cmd in run.started.values() if "gunicorn" in cmd]

        _wait_until(lambda: len(gunicorns()) == 3, f"gunicorn master and 2 workers: {gunicorns()}", 30)
        commands = " | ".join(run.started.values())
        for part in ("epmd -port", "beam.smp", "beambridge receiver"):
            assert part in commands, commands

        assert _fetch(base + "/shout?text=hey") == (200, "application/json", {"answer": "HEY"})
        assert _fetch(base + "/add?a=40&b=2")[::2] == (200, {"sum": 42})
        status, kind, bad = _fetch(base + "/add?a=x&b=2")
        assert (status, kind) == (400, "application/json") and "'x'" in bad["error"], bad
        status, kind, missing = _fetch(base + "/add?a=1")
        assert (status, kind) == (400, "application/json") and "b is missing" in missing["error"], missing

        if how == "SIGTERM":
            run.proc.send_signal(signal.SIGTERM)
        else:  # what a terminal sends: SIGINT to the foreground process group
            os.killpg(run.proc.pid, signal.SIGINT)
        assert run.proc.wait(60) == 0, run.output[-4000:]
        _wait_until(lambda: not any(_alive(p) for p in run.started),
                    f"still running: {[cmd for p, cmd in run.started.items() if _alive(p)]}", 15)
        assert "stopped" in run.output
        _assert_quiet(run.output)
