"""Where a part has a compiled twin (the term codec, the node's spin for socket bytes), which one
runs: the compiled one when it was built, unless ``BEAMBRIDGE_PURE_PYTHON=1`` forces every
pure-Python twin at once (the test suite's second run, a platform whose build is suspect)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def compiled(name: str) -> ModuleType | None:
    """The compiled module ``name`` (absolute), or None: not built, or the pure twins forced."""
    if os.environ.get("BEAMBRIDGE_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
