"""``beambridge top``: ``--once`` prints the cluster (nodes with load, running jobs with progress,
recent ones with reasons) for scripts, with the CLI's exit codes; the interactive view redraws in
place inside a real terminal (tmux) and quits on ``q`` or Ctrl-C, giving the terminal back."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from beambridge.cli import main as beambridge
from beambridge.compute import Client, JobFailed, Service
from beambridge.compute._top import render

pytestmark = pytest.mark.erlang

TOKEN = "top-token"


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    with Service(local_nodes=1, token=TOKEN) as service:
        yield service


def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def test_once_prints_nodes_jobs_and_failures(svc: Service, capsys: pytest.CaptureFixture[str]) -> None:
    client = svc.client()
    assert until(lambda: sum(n["status"] == "up" for n in client.nodes()) == 2, timeout=20)
    with pytest.raises(JobFailed):
        client.call("bbc_sample_jobs:fail", 5)
    job = client.submit("map", fun="bbc_sample_jobs:sleep_square", items=[[200, i] for i in range(40)],
                        chunk=1, processes=1)
    try:
        assert until(lambda: any(j["progress"]["done"] > 0 for j in client.cluster()["running"]))
        assert beambridge(["top", "--once", "--url", svc.url, "--token", TOKEN]) == 0
        out = capsys.readouterr().out
    finally:
        job.cancel()
    assert svc.node in out and "NODES (2)" in out and "worker (local)" in out
    assert re.search(r"RUNNING JOBS \(1\)\n.*\n\s+" + job.id + r"\s+map\s+bbc_sample_jobs:sleep_square\s+"
                     r"\[#*\.*\] \d+/40", out), out
    assert "bbc_sample_jobs:fail" in out and "error: {job_failed_on_purpose,5}" in out
    assert "THROUGHPUT" in out
    # The same through `beambridge compute top`.
    assert beambridge(["compute", "top", "--once", "--url", svc.url, "--token", TOKEN]) == 0
    assert "NODES (2)" in capsys.readouterr().out


def test_once_exit_codes(svc: Service, capsys: pytest.CaptureFixture[str]) -> None:
    assert beambridge(["top", "--once", "--url", svc.url]) == 1
    assert "pass --token" in capsys.readouterr().err
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert beambridge(["top", "--once", "--url", f"http://127.0.0.1:{free}"]) == 3
    assert beambridge(["top", "--once", "--url", "ftp://nowhere"]) == 2
    assert beambridge(["top", "--once", "--url", svc.url, "--token", TOKEN, "--interval", "0"]) == 2
    capsys.readouterr()


def test_render_fits_the_width_and_copes_with_sparse_answers() -> None:
    lines = render({"node": "n@h", "time": 0, "nodes": [{"name": "x" * 300, "role": "peer", "kind": "python",
                                                         "node_role": "web worker"}],
                    "running": [{"id": "a", "progress": {"done": 1, "total": 0}}], "finished": [],
                    "throughput": {"buckets": [{"done": 1, "failed": 0}, {"failed": 3}]}}, 80, None)
    assert all(len(line) <= 80 for line in lines)
    assert any("python peer (web worker)" in line for line in lines), lines
    assert render(None, 80, "refused") == ["beambridge top: refused"]


@pytest.mark.parametrize("key", ["q", "C-c"])
def test_interactive_view_in_tmux(svc: Service, key: str) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    socket_name = f"bbtop_{os.getpid()}_{secrets.token_hex(3)}"
    base = [tmux, "-L", socket_name, "-f", "/dev/null"]
    env = {**os.environ, "BEAMBRIDGE_COMPUTE_TOKEN": TOKEN}
    command = (f"{sys.executable} -m beambridge top --url {svc.url} --interval 0.3; "
               "echo top-exited-$?; sleep 30")
    subprocess.run([*base, "new-session", "-d", "-x", "150", "-y", "45", "-s", "top", command],
                   check=True, env=env, timeout=10)
    server = int(subprocess.run([*base, "display-message", "-p", "-t", "top", "#{pid}"], capture_output=True,
                                text=True, timeout=10, check=True).stdout)

    def screen() -> str:
        return subprocess.run([*base, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True,
                              timeout=10).stdout

    try:
        assert until(lambda: "NODES" in screen(), timeout=20), screen()
        client = Client(svc.url, token=TOKEN)
        job = client.submit("map", fun="bbc_sample_jobs:sleep_square", items=[[150, i] for i in range(60)],
                            chunk=1, processes=1)
        try:
            # Redrawn in place: the job shows up, then its count moves, on one screen.
            assert until(lambda: job.id in screen(), timeout=10), screen()
            counts: set[str] = set()

            def moved() -> bool:
                found = re.search(job.id + r".*?(\d+)/60", screen())
                if found:
                    counts.add(found.group(1))
                return len(counts) >= 2
            assert until(moved, timeout=10), counts
            assert screen().count("NODES") == 1 and "(q quits)" in screen()
        finally:
            job.cancel()
        assert "top-exited" not in screen()
        subprocess.run([*base, "send-keys", "-t", "top", key], check=True, timeout=10)
        # It exits 0 and gives the terminal back: the alternate screen is gone.
        assert until(lambda: "top-exited-0" in screen(), timeout=10), screen()
        assert "NODES" not in screen()
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(server, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(server, signal.SIGKILL)
