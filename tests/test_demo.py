"""The main job (``beambridge demo``) as a user runs it: every road answers, the three answers
agree with an independent computation, and nothing it started outlives it: on success, on
SIGTERM, and on a terminal's Ctrl-C (SIGINT to its whole process group)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.erlang

MARK = "BB_DEMO_TEST_MARK"


def _marked(mark: str) -> list[int]:
    """Every live process whose environment carries ``mark``: all the demo started inherit it
    (EPMD, the service, its worker nodes, gunicorn and its workers, the pool's processes)."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    except OSError:
        return f"{pid} (gone)"


def _gone(mark: str, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _as_a_foreground_job() -> None:
    """In the child: Ctrl-C's default disposition, as a shell gives a foreground job. A job
    a shell put in the background (a CI runner's, say) inherits SIGINT ignored, and Python
    keeps it ignored: the demo then ran on through the Ctrl-C test's SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Demo:
    """``beambridge demo`` in a session of its own, its output read line by line."""

    def __init__(self, *args: str) -> None:
        self.mark = secrets.token_hex(8)
        # faulthandler: a demo that hangs is sent SIGABRT and prints where each thread is
        env = dict(os.environ, PYTHONFAULTHANDLER="1", **{MARK: self.mark})
        self.proc = subprocess.Popen([sys.executable, "-m", "beambridge", "demo", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, text=True,
                                     preexec_fn=_as_a_foreground_job)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, pattern: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no {pattern!r} in the demo's output:\n{self.output}")

    def finish(self, timeout: float = 120.0) -> int:
        code: int | None = None
        running: list[str] = []
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            running = [_command(pid) for pid in _marked(self.mark)]
            os.kill(self.proc.pid, signal.SIGABRT)  # its threads' stacks, then it ends
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            if code is None:  # its children are in sessions of their own
                for pid in _marked(self.mark):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        with pytest.raises(AssertionError):  # drain what is left
            self.until("(?!)", timeout=5)
        assert code is not None, (f"the demo did not end within {timeout} s; still running then: "
                                  f"{running}\n{self.output}")
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


#: how long the demo may take to stop: what it gives each part it started to stop (SIGTERM,
#: then SIGKILL; gunicorn and epmd 15 + 5 s, the compute service 20 + 5 + 10 s), added up
STOP_BUDGET = 120.0


def _longest_chain(below: int) -> list[int]:
    """Independent of the demo's code: chain lengths with a cache, the smallest start on a tie."""
    known = {1: 0}

    def steps(n: int) -> int:
        path = []
        while n not in known:
            path.append(n)
            n = 3 * n + 1 if n & 1 else n // 2
        total = known[n]
        for m in reversed(path):
            total += 1
            known[m] = total
        return total

    best = max(range(1, below), key=lambda n: (steps(n), -n))
    return [best, steps(best)]


def test_the_demo_answers_on_both_roads_and_the_answers_agree() -> None:
    demo = _Demo("--below", "300000")
    code = demo.finish(timeout=240)
    out = demo.output
    assert code == 0, out
    assert re.search(r"ran bbc_sample_jobs:collatz_longest\(\[1, 10001\], \[0, 0\]\) on \S+ -> "
                     r"\[6171, 261\]", out), out
    assert "the Python handler answered 'HELLO FROM PYTHON!'" in out, out
    assert "100/100 parts" in out, out
    expected = _longest_chain(300_000)
    answers = re.search(r"answers equal: (\[\d+, \d+\]) (\[\d+, \d+\]) (\[\d+, \d+\])", out)
    assert answers, out
    assert {answers.group(i) for i in (1, 2, 3)} == {str(expected)}
    for label in ("Erlang cluster", "multiprocessing on", "one process"):
        assert re.search(label + r".*\d+\.\d\d s", out), out
    assert "Traceback" not in out and "BREAK" not in out, out
    assert "everything started was stopped" in out
    assert _gone(demo.mark) == []


def test_sigterm_mid_run_stops_everything_it_started() -> None:
    demo = _Demo("--below", "5000000")
    demo.until("the same Python code")  # the cluster, the web app and the pool are all up
    time.sleep(1.0)
    started = _marked(demo.mark)
    assert len(started) >= 8, started  # epmd, service, 2 workers, gunicorn + 2, pool of >= 1
    os.kill(demo.proc.pid, signal.SIGTERM)
    code = demo.finish(timeout=STOP_BUDGET)
    assert code == 128 + signal.SIGTERM, demo.output
    assert "terminated: everything started was stopped" in demo.output
    assert "Traceback" not in demo.output, demo.output
    assert _gone(demo.mark) == []


def test_ctrl_c_at_the_terminal_stops_everything_without_a_break_menu() -> None:
    demo = _Demo("--below", "5000000")
    demo.until("HTTP[+]JSON road")
    os.killpg(demo.proc.pid, signal.SIGINT)  # a terminal sends it to the foreground group
    code = demo.finish(timeout=STOP_BUDGET)
    assert code == 130, demo.output
    assert "interrupted: everything started was stopped" in demo.output
    assert "BREAK" not in demo.output and "Traceback" not in demo.output, demo.output
    assert _gone(demo.mark) == []
