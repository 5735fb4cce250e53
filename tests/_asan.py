"""AddressSanitizer runs of our C parts (the term codec, the node's spin): libasan to preload
into the venv's Python, the environment for it, and the reports that are ours."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def libasan() -> str | None:
    """gcc's libasan.so, or None without gcc or libasan."""
    if shutil.which("gcc") is None:
        return None
    found = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = found.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def environ(library: str, logs: Path) -> dict[str, str]:
    """A Python under ASan: libasan preloaded, every object a malloc block it guards
    (PYTHONMALLOC=malloc), reports written under ``logs``, leaks checked at exit."""
    env = dict(os.environ, LD_PRELOAD=library, PYTHONMALLOC="malloc",
               ASAN_OPTIONS=f"detect_leaks=1:log_path={logs / 'asan'}:abort_on_error=0:exitcode=23",
               LSAN_OPTIONS="report_objects=0")
    env.pop("BEAMBRIDGE_PURE_PYTHON", None)
    return env


def findings(logs: Path, *ours: str) -> list[str]:
    """The error reports under ``logs``, and the leak reports whose allocation stack runs
    through a file named in ``ours`` (the rest are the interpreter's own leftovers at exit)."""
    reports = "".join(p.read_text(errors="replace") for p in logs.glob("asan*"))
    blocks = reports.split("\n\n")
    return [block for block in blocks if "ERROR: AddressSanitizer" in block
            or ("leak of" in block and any(name in block for name in ours))]
