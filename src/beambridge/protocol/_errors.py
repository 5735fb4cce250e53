"""Errors of the distribution protocol core.

``LocalProtocolError`` means *our* caller misused the protocol object (a bug on this side);
``RemoteProtocolError`` means the peer sent bytes that break the protocol. After either, the
protocol object is in its ERROR state and refuses every further call, so a broken connection can
never be half-used. ``HandshakeFailed`` is a handshake that ended cleanly but without a connection
(the peer said ``nok``/``not_allowed``, or the cookies differ).
"""

from __future__ import annotations

from .._errors import ProtocolError, TransportError, UsageError

__all__ = ["BadCookie", "HandshakeFailed", "LocalProtocolError", "RemoteProtocolError"]


class LocalProtocolError(UsageError):
    """This side asked the protocol object for something its state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (malformed, unexpected or oversized input)."""


class HandshakeFailed(TransportError):
    """The handshake ended without a connection; ``reason`` says why (``nok``, ``not_allowed``...)."""

    def __init__(self, reason: str, detail: str = "", state: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        #: the handshake state it failed in (``await_status``...), where the protocol knows it
        self.state = state
        super().__init__(f"{reason}: {detail}" if detail else reason)


class BadCookie(HandshakeFailed):
    """The peer's challenge answer shows it holds a different cookie."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("bad_cookie", detail)
