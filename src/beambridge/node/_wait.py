"""A node's short spin for its socket's next bytes: compiled (``_cwait``, the GIL given up for
the whole spin) or pure Python (a loop of non-blocking reads, the GIL held but for each read).

Both answer alike; the compiled one is used when built, unless ``BEAMBRIDGE_PURE_PYTHON=1``,
as for the term codec. The spin is worth its CPU where a reply is microseconds away (BEAM's
schedulers spin before they sleep for the same reason); in Python it kept every other thread of
the process, the caller the reply wakes among them, waiting for the GIL.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable

from .._twins import compiled

__all__ = ["IMPLEMENTATION", "recv_within"]


def _recv_within_pure(sock: socket.socket, seconds: float, size: int) -> bytes | None:
    """What ``sock`` has within ``seconds`` (at most 1; one try when 0 or less), at most
    ``size`` bytes (1..16 MiB); ``b""`` at the end of the stream, None when nothing came;
    OSError for a failed read (a closed socket's among them), ValueError for bad arguments or
    a socket with a timeout. Blocking or not, every try is MSG_DONTWAIT."""
    if sock.fileno() < 0:  # first, as the compiled twin, which needs the descriptor first
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    if not seconds <= 1.0:  # NaN too: the compiled twin's spin, which no signal stops, is short
        raise ValueError("recv_within: seconds must be at most 1")
    if not 0 < size <= 1 << 24:
        raise ValueError("recv_within: size must be 1..16 MiB")
    timeout = sock.gettimeout()
    if timeout is not None and timeout > 0:  # CPython would wait for it in its own poll first
        raise ValueError("recv_within: the socket must have no timeout (non-blocking, or "
                         "blocking without one)")
    until = time.perf_counter() + seconds
    recv, flags = sock.recv, socket.MSG_DONTWAIT
    while True:
        try:
            return recv(size, flags)
        except (BlockingIOError, InterruptedError):
            if time.perf_counter() >= until:
                return None


_cwait = compiled("beambridge.node._cwait")
recv_within: Callable[[socket.socket, float, int], bytes | None] = (
    _recv_within_pure if _cwait is None else _cwait.recv_within)
IMPLEMENTATION = "pure" if _cwait is None else "compiled"
