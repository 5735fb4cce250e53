"""Keeps bench/codec_bench.py from rotting: one quick run (tiny batches, no timing asserted).

Peers that are not installed are left out by the benchmark itself; without Erlang the BEAM
column is skipped (``--no-beam``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from beambridge import otp

ROOT = Path(__file__).resolve().parents[2]
PAYLOADS = ("rpc tuple", "10k ints", "map 1k bin keys", "1 MB binary", "1k maps x5", "docs bin keys",
            "docs nested")


@pytest.mark.timeout(60)
def test_codec_bench_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--only", "codec", "--quick",
               "--json", str(out)]
    if not otp.find_runtimes():
        command.append("--no-beam")
    done = subprocess.run(command, capture_output=True, text=True, timeout=50, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ENCODE" in done.stdout and "DECODE" in done.stdout
    report = json.loads(out.read_text())
    ours = [c for c in report["cells"] if c["library"].startswith("beambridge")]
    assert {(c["op"], c["payload"]) for c in ours} == {
        (op, p) for op in ("encode", "decode") for p in PAYLOADS}
    # beambridge must get every payload right (BEAM checks its bytes); speed is not asserted.
    assert all(c["us"] is not None for c in ours), [c["failure"] for c in ours if c["failure"]]
    for release, payloads in report["beam"].items():
        assert set(payloads) == set(PAYLOADS), release
