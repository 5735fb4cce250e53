"""The examples run with one command each (``--smoke``) and every page answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.erlang
@pytest.mark.timeout(120)
@pytest.mark.parametrize("example", ["flask_app", "django_project"])
def test_example_smoke(example: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / example / "run.py"), "--smoke"],
                          capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if " -> " in line]
    assert len(lines) == 7 and all(" -> 20" in line for line in lines), lines
    assert "hello world !" in done.stdout and "blue" in done.stdout and "b'HEY'" in done.stdout
