"""The receiver's handler in the examples: Erlang sends {Pid, Request}; the answer goes back."""

from __future__ import annotations

import logging
from typing import Any

from beambridge.term import Atom

log = logging.getLogger("example.receiver")
# Shown at INFO, not dressed as a warning: the receiver's command line logs WARNING and up.
log.setLevel(logging.INFO)


def handle(message: Any) -> Any:
    log.info("receiver got %r", message)
    if isinstance(message, bytes):
        return (Atom("upper"), message.upper())
    return (Atom("seen"), message)
