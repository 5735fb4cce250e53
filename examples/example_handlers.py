"""The receiver's handler in the examples: Erlang sends {Pid, Request}; the answer goes back."""

from __future__ import annotations

import logging
from typing import Any

from beambridge.term import Atom

log = logging.getLogger("example.receiver")


def handle(message: Any) -> Any:
    log.warning("receiver got %r", message)
    if isinstance(message, bytes):
        return (Atom("upper"), message.upper())
    return (Atom("seen"), message)
