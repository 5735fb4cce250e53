"""The command line: ``new`` writes a project that builds and passes its EUnit tests and
whose job runs on a real service; ``serve`` starts, answers and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beambridge import UsageError
from beambridge.compute import Client, Service, ServiceFailed
from beambridge.compute._cli import main

pytestmark = pytest.mark.erlang


def test_new_project_builds_tests_and_serves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "wordy", "--dir", str(tmp_path)]) == 0
    assert "created" in capsys.readouterr().out
    project = tmp_path / "wordy"
    assert (project / "src" / "wordy_jobs.erl").exists()
    assert shutil.which("make"), "make is needed to build the generated project"
    done = subprocess.run(["make", "-C", str(project), "test"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"All 3 tests passed", done.stdout + done.stderr)
    # Its config works as is (relative code path), with our port and worker count.
    with Service(config_file=project / "beambridge.json", config={"port": 0, "local_nodes": 1}) as svc:
        client = svc.client()
        assert client.call("wordy_jobs:greet", "Ada") == "Hello, Ada!"
        texts = ["a bb ccc", "dd e", "fff ggg hhhh"]
        got = client.mapreduce("wordy_jobs:word_lengths", texts, "wordy_jobs:add_counts", chunk=1)
        assert got == {"1": 2, "2": 2, "3": 3, "4": 1}


def test_new_refuses_bad_names(tmp_path: Path) -> None:
    from beambridge.compute._skeleton import create
    for bad in ("Bad", "9lives", "has-dash", ""):
        with pytest.raises(UsageError):
            create(bad, tmp_path)
    create("fine", tmp_path)
    with pytest.raises(UsageError):
        create("fine", tmp_path)


def test_serve_starts_answers_and_stops(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "beambridge.compute", "serve", "--port", "0", "--local-nodes", "1",
               "--token", "tok"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"serving (http://\S+) .*1 workers", line)
        assert match, line
        client = Client(match.group(1), token="tok")
        assert client.call("bbc_sample_jobs:add", 1, 2) == 3
        workers = [n["os_pid"] for n in client.nodes() if n["role"] != "service"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "stopped" in proc.stdout.read()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_submit_prints_result_with_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Service() as svc:
        items = tmp_path / "items.json"
        items.write_text(json.dumps(list(range(10))))
        assert main(["submit", "map", "bbc_sample_jobs:square", f"@{items}", "--url", svc.url,
                     "--chunk", "2"]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out) == [x * x for x in range(10)]
        assert "10/10" in err
        assert main(["submit", "call", "bbc_sample_jobs:fail", "[1]", "--url", svc.url]) == 1
        assert "job_failed_on_purpose" in capsys.readouterr().err


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _shell(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "beambridge", "compute", *args],
                          capture_output=True, text=True, timeout=120)


def test_bad_json_arguments_are_one_line_usage_errors(tmp_path: Path) -> None:
    done = _shell("submit", "map", "bbc_sample_jobs:square", "not json", "--url", "http://127.0.0.1:9")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("beambridge compute: DATA must be JSON (or @FILE to read it from "
                                   "a file); 'not json' is not: Expecting value: line 1 column 1 "
                                   "(char 0)"), done.stderr
    bad = tmp_path / "items.json"
    bad.write_text("[1,")
    done = _shell("submit", "map", "bbc_sample_jobs:square", f"@{bad}")
    assert done.returncode == 2 and "DATA must be JSON (or @FILE" in done.stderr
    assert f"{bad} is not:" in done.stderr and done.stderr.count("\n") == 1
    done = _shell("submit", "map", "bbc_sample_jobs:square", f"@{tmp_path / 'missing.json'}")
    assert done.returncode == 2 and "DATA: cannot read" in done.stderr and "Traceback" not in done.stderr
    done = _shell("submit", "fold", "bbc_sample_jobs:add", "[1]", "--init", "{x")
    assert done.returncode == 2 and done.stderr.startswith("beambridge compute: --init must be JSON")
    assert done.stderr.count("\n") == 1, done.stderr


def test_serve_on_a_busy_port_names_the_flag(tmp_path: Path) -> None:
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _shell("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (f"beambridge compute: port {port} is in use (another "
                                       "service?): choose another with --port, or --port 0 for "
                                       "any free one")
        # The Python API says it in its own terms, and keeps the port for callers.
        service = Service(config={"port": port})
        try:
            with pytest.raises(ServiceFailed, match=r"in use .*port=0") as info:
                service.start()
        finally:
            service.stop()
        assert info.value.port_in_use == port
