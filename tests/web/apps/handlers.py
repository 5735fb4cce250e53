"""Receiver handlers used by the tests (the receiver runs them in its own process)."""

from __future__ import annotations

import os
from typing import Any

from beambridge.term import Atom


def handle(message: Any) -> Any:
    """Logs what it got (to $BB_RECEIVER_LOG), answers ``{got, Message, OsPid}``; raises on ``boom``."""
    log = os.environ.get("BB_RECEIVER_LOG")
    if log:
        with open(log, "a") as f:
            f.write(repr(message) + "\n")
    if message == Atom("boom"):
        raise RuntimeError("boom, as asked")
    return (Atom("got"), message, os.getpid())
