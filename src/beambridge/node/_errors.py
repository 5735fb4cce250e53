"""The node's own exception leaves, under the families of ``beambridge._errors``.

::

    TransportError
    ├── EpmdUnavailable      no port mapper answered where we looked (start one, or say where)
    ├── NameTaken            EPMD already has a node of that name
    ├── ConnectionLost
    │   ├── NoConnection     the node cannot be reached, or the connection dropped mid-call
    │   └── MailboxClosed    the mailbox ended (closed, killed, or its node closed)
    └── HandshakeFailed      (from ``beambridge.protocol``) refused; ``BadCookie`` for a cookie mismatch
    RemoteError
    ├── ErlangError          ``error:Reason`` with its stack
    ├── ErlangThrow          ``throw:Value``
    └── ErlangExit           ``exit:Reason`` (or the remote process died with that reason)
"""

from __future__ import annotations

from typing import Any

from .._errors import ConnectionLost, RemoteError, TransportError
from ..protocol import BadCookie, HandshakeFailed

__all__ = [
    "BadCookie",
    "EpmdUnavailable",
    "ErlangError",
    "ErlangExit",
    "ErlangThrow",
    "HandshakeFailed",
    "MailboxClosed",
    "NameTaken",
    "NoConnection",
]


class EpmdUnavailable(TransportError):
    """No EPMD answered at the configured host and port."""


class NameTaken(TransportError):
    """EPMD refused the registration: a node with that name is already alive on the host."""


class NoConnection(ConnectionLost):
    """The node could not be reached, or its connection was lost (Erlang's ``noconnection``)."""

    def __init__(self, node: str, detail: str = "") -> None:
        self.node = node
        self.detail = detail
        super().__init__(f"noconnection to {node}" + (f": {detail}" if detail else ""))


class MailboxClosed(ConnectionLost):
    """The mailbox was closed; ``reason`` is the exit reason (an Erlang term)."""

    def __init__(self, reason: Any) -> None:
        self.reason = reason
        super().__init__(f"mailbox closed: {reason!r}")


class ErlangError(RemoteError):
    """The remote code raised ``error:Reason``; ``stack`` is Erlang's stack trace."""

    def __init__(self, reason: Any, stack: Any = None) -> None:
        super().__init__("error", reason, stack)


class ErlangThrow(RemoteError):
    """The remote code did ``throw(Value)``; ``reason`` is the value."""

    def __init__(self, reason: Any) -> None:
        super().__init__("throw", reason)


class ErlangExit(RemoteError):
    """The remote code exited (``exit(Reason)``), or the process died with ``reason``."""

    def __init__(self, reason: Any) -> None:
        super().__init__("exit", reason)
