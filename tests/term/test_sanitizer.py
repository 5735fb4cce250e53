"""The compiled decoder under AddressSanitizer: no crash, no leak, no read past the buffer.

Builds ``_cterm.c`` with ``-fsanitize=address`` into a temporary folder, then runs
``asan_fuzz.py`` against that build for a bounded time with libasan preloaded into the venv's
Python (PYTHONMALLOC=malloc so every object is a malloc block ASan can guard). Leak reports whose
allocation stack passes through the codec fail the test; CPython's own exit-time leftovers don't.
Set ``BEAMBRIDGE_ASAN_SECONDS`` to fuzz longer (default 20; ``make fuzz`` runs it for 10 minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .._asan import environ, findings, libasan

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "src" / "beambridge" / "term" / "_cterm.c"
SECONDS = float(os.environ.get("BEAMBRIDGE_ASAN_SECONDS", "20"))


@pytest.mark.timeout(SECONDS + 120)
def test_compiled_decoder_under_address_sanitizer(tmp_path: Path) -> None:
    why = ("sanitizes the compiled codec; this run forces the pure one"
           if os.environ.get("BEAMBRIDGE_PURE_PYTHON", "") not in ("", "0") else
           "needs gcc with libasan" if libasan() is None else None)
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
    env = environ(str(libasan()), tmp_path)
    run = subprocess.run([sys.executable, str(HERE / "asan_fuzz.py"), str(module), str(SECONDS)],
                         env=env, capture_output=True, text=True, timeout=SECONDS + 100)
    found = findings(tmp_path, "_cterm.c", "_cterm_asan.so")
    assert not found, "\n\n".join(found)[:20000]
    assert "inputs decoded" in run.stdout, (run.returncode, run.stdout[-2000:], run.stderr[-4000:])
