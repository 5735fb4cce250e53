"""Keeps bench/web_bench.py from rotting: one quick run; no timing asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.erlang
@pytest.mark.timeout(90)
def test_web_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "web.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "web_bench.py"), "--quick",
                           "--clients", "4", "--json", str(out)],
                          capture_output=True, text=True, timeout=80, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ratio rpc/constant" in done.stdout
    report = json.loads(out.read_text())
    assert report["results"]["/rpc"]["errors"] == 0 and report["results"]["/const"]["errors"] == 0
    assert report["ratio"] > 0
