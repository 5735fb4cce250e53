"""The compiled decoder under AddressSanitizer: no crash, no leak, no read past the buffer.

Builds ``_cterm.c`` with ``-fsanitize=address`` into a temporary folder, then runs
``asan_fuzz.py`` against that build for a bounded time with libasan preloaded into the venv's
Python (PYTHONMALLOC=malloc so every object is a malloc block ASan can guard). Leak reports whose
allocation stack passes through the codec fail the test; CPython's own exit-time leftovers don't.
Set ``BEAMBRIDGE_ASAN_SECONDS`` to fuzz longer (default 20; ``make fuzz`` runs it for 10 minutes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "src" / "beambridge" / "term" / "_cterm.c"
SECONDS = float(os.environ.get("BEAMBRIDGE_ASAN_SECONDS", "20"))


def _libasan() -> str | None:
    if shutil.which("gcc") is None:
        return None
    found = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = found.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.timeout(SECONDS + 120)
def test_compiled_decoder_under_address_sanitizer(tmp_path: Path) -> None:
    why = ("sanitizes the compiled codec; this run forces the pure one"
           if os.environ.get("BEAMBRIDGE_PURE_PYTHON", "") not in ("", "0") else
           "needs gcc with libasan" if _libasan() is None else None)
    if why is not None:
        if os.environ.get("BEAMBRIDGE_ASAN_REQUIRED"):  # ``make fuzz``: a skip is a failure
            pytest.fail(why)
        pytest.skip(why)
    module = tmp_path / "_cterm_asan.so"
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer",
         "-I", include, str(SOURCE), "-o", str(module)],
        check=True, timeout=120)
    log = tmp_path / "asan"
    env = dict(os.environ, LD_PRELOAD=str(_libasan()), PYTHONMALLOC="malloc",
               ASAN_OPTIONS=f"detect_leaks=1:log_path={log}:abort_on_error=0:exitcode=23",
               LSAN_OPTIONS="report_objects=0")
    env.pop("BEAMBRIDGE_PURE_PYTHON", None)
    run = subprocess.run([sys.executable, str(HERE / "asan_fuzz.py"), str(module), str(SECONDS)],
                         env=env, capture_output=True, text=True, timeout=SECONDS + 100)
    reports = "".join(p.read_text(errors="replace") for p in tmp_path.glob("asan*"))
    errors = [block for block in reports.split("\n\n") if "ERROR: AddressSanitizer" in block]
    assert not errors, "\n\n".join(errors)[:20000]
    # A leak whose allocation stack runs through the codec is ours; the rest is the interpreter's.
    ours = [block for block in reports.split("\n\n")
            if "leak of" in block and ("_cterm.c" in block or "_cterm_asan.so" in block)]
    assert not ours, "\n\n".join(ours)[:20000]
    assert "inputs decoded" in run.stdout, (run.returncode, run.stdout[-2000:], run.stderr[-4000:])
