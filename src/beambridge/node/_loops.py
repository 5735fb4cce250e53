"""Which event loop a ``BlockingNode``'s thread runs: uvloop when it is installed, else asyncio's.

A call's cost in this process is mostly the loop's own work (a loop turn, a transport write, a
callback hand-off), and uvloop does that work in C; asyncpg and uvicorn make the same choice.
``BEAMBRIDGE_LOOP`` (``auto``, ``asyncio``, ``uvloop``) picks where the code does not.
"""

from __future__ import annotations

import asyncio
import os

from .._errors import UsageError

LOOPS = ("auto", "asyncio", "uvloop")


def check_loop(kind: str) -> str:
    """``kind``, if it names a loop this module makes."""
    if kind not in LOOPS:
        raise UsageError(f"loop {kind!r}: expected one of {', '.join(LOOPS)}")
    return kind


def new_event_loop(kind: str | None = None) -> asyncio.AbstractEventLoop:
    """A new loop of ``kind`` (default ``$BEAMBRIDGE_LOOP``, else ``auto``: uvloop if importable)."""
    kind = check_loop(kind or os.environ.get("BEAMBRIDGE_LOOP") or "auto")
    if kind == "asyncio":
        return asyncio.SelectorEventLoop()
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise UsageError("loop 'uvloop' needs uvloop: pip install 'beambridge[fast]'") from None
        return asyncio.new_event_loop()  # asyncio's, or what an installed policy makes
    return uvloop.new_event_loop()

