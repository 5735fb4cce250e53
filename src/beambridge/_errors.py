"""The exception tree, in one place.

::

    Error                       every error beambridge raises
    ├── UsageError              the caller asked for something impossible (also a ValueError)
    │   └── EncodeError         a Python value has no Erlang form (also a TypeError); names the path
    ├── ProtocolError           the other side sent bytes that break a protocol
    │   └── DecodeError         malformed External Term Format; carries the offset and the reason
    ├── TransportError          a connection could not be made, was lost, or timed out
    │   ├── ConnectionLost
    │   └── Timeout             (also a TimeoutError)
    └── RemoteError             Erlang raised, threw or exited; keeps what Erlang said

Later layers add their own leaves under these families, so ``except beambridge.Error`` is always
enough, and ``except beambridge.TransportError`` tells "retry may help" apart from the rest.
"""

from __future__ import annotations

from typing import Any


class Error(Exception):
    """Base of every exception raised by beambridge."""


class UsageError(Error, ValueError):
    """The caller asked for something that cannot be done (wrong argument, wrong state)."""


class EncodeError(UsageError, TypeError):
    """A Python value has no Erlang form under the chosen mapping.

    ``path`` locates the offending value inside the term, outermost first: an index into a list or
    tuple, ``("key", k)`` for a map key, ``("value", k)`` for a map value.
    """

    def __init__(self, reason: str, value: Any = None, path: tuple[Any, ...] = ()) -> None:
        self.reason = reason
        self.value = value
        self.path = path
        super().__init__(reason)

    def at(self, step: Any) -> EncodeError:
        """Return the same error one level further out (``step`` prepended to the path)."""
        return EncodeError(self.reason, self.value, (step, *self.path))

    def __str__(self) -> str:
        where = "".join(_format_step(s) for s in self.path) or "<top>"
        return f"at {where}: {self.reason}"


def _format_step(step: Any) -> str:
    if isinstance(step, tuple) and len(step) == 2 and step[0] in ("key", "value"):
        return f"{{{step[0]} {step[1]!r}}}"
    return f"[{step!r}]"


class ProtocolError(Error):
    """The peer sent something that breaks the protocol."""


class DecodeError(ProtocolError, ValueError):
    """Malformed or refused External Term Format input.

    ``offset`` is the byte position (in the input as given; inside the decompressed data for a
    compressed term, which ``compressed`` says) where decoding stopped, ``reason`` says why.
    """

    def __init__(self, reason: str, offset: int, *, compressed: bool = False) -> None:
        self.reason = reason
        self.offset = offset
        self.compressed = compressed
        super().__init__(reason, offset)

    def __str__(self) -> str:
        where = "decompressed offset" if self.compressed else "offset"
        return f"{self.reason} (at {where} {self.offset})"


class TransportError(Error):
    """A connection could not be made, broke, or a wait ran out of time."""


class ConnectionLost(TransportError, ConnectionError):
    """The connection closed before the operation completed."""


class Timeout(TransportError, TimeoutError):
    """An operation did not complete within its timeout."""


class RemoteError(Error):
    """Erlang code raised, threw or exited; ``kind``, ``reason`` and ``stack`` keep what it said."""

    def __init__(self, kind: str, reason: Any, stack: Any = None) -> None:
        self.kind = kind
        self.reason = reason
        self.stack = stack
        super().__init__(kind, reason)

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason!r}"
