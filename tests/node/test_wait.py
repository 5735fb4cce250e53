"""The node's spin for its socket's next bytes (``node/_wait.py``): the compiled one, which gives
the GIL up for the whole spin, and its pure-Python twin answer alike on a real socket pair, for
bytes waiting, bytes arriving during the spin, nothing, the end of the stream and a closed
socket; and the run that should use the compiled one does."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from beambridge.node import _wait

FORCED_PURE = os.environ.get("BEAMBRIDGE_PURE_PYTHON", "") not in ("", "0")

try:
    from beambridge.node._cwait import recv_within as compiled  # type: ignore[import-not-found]
except ImportError:
    compiled = None

IMPLEMENTATIONS = [pytest.param(_wait._recv_within_pure, id="pure"), pytest.param(
    compiled, id="compiled", marks=pytest.mark.skipif(
        compiled is None, reason="the compiled spin (node/_cwait.c) is not built"))]

Spin = Callable[[socket.socket, float, int], "bytes | None"]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)  # as the node's own duplicate of a connection's socket
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(FORCED_PURE, reason="BEAMBRIDGE_PURE_PYTHON forces the pure spin")
def test_the_default_run_uses_the_compiled_spin() -> None:
    # the node/_cwait extension is built with the codec's (make setup); without it the GIL-free
    # spin is silently gone
    assert _wait.IMPLEMENTATION == "compiled"


def test_a_forced_pure_run_uses_the_pure_spin() -> None:
    if FORCED_PURE:
        assert _wait.IMPLEMENTATION == "pure"
        assert _wait.recv_within is _wait._recv_within_pure


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_bytes_already_there_come_back_at_once_up_to_size(
        spin: Spin, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.sendall(b"0123456789")
    assert spin(a, 0.0, 4) == b"0123"  # one try, at most size
    assert spin(a, 5.0, 1 << 18) == b"456789"


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_nothing_within_the_time_is_none_and_takes_nothing(
        spin: Spin, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    assert spin(a, 0.0, 16) is None
    assert spin(a, 0.002, 16) is None
    b.sendall(b"later")
    assert spin(a, 5.0, 16) == b"later"  # nothing read or lost meanwhile


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_bytes_sent_during_the_spin_are_what_it_returns(
        spin: Spin, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    started = threading.Event()

    def send_soon() -> None:
        started.wait(10)
        b.sendall(b"reply")

    sender = threading.Thread(target=send_soon)
    sender.start()
    try:
        started.set()
        got = None
        for _ in range(200):  # each spin up to 50 ms; the sender's thread needs the GIL once
            got = spin(a, 0.05, 64)
            if got is not None:
                break
        assert got == b"reply"
    finally:
        sender.join(10)


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_the_end_of_the_stream_is_empty_bytes(
        spin: Spin, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.sendall(b"last")
    b.shutdown(socket.SHUT_WR)
    assert spin(a, 1.0, 64) == b"last"
    assert spin(a, 1.0, 64) == b""


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_a_closed_socket_and_a_bad_size_are_errors(
        spin: Spin, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    with pytest.raises(ValueError):
        spin(a, 0.0, 0)
    with pytest.raises(ValueError):
        spin(a, 0.0, (1 << 24) + 1)
    a.close()  # fileno() is now -1
    with pytest.raises(OSError) as closed:
        spin(a, 0.0, 64)
    assert not isinstance(closed.value, BlockingIOError)


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_a_blocking_socket_is_not_blocked_on(spin: Spin) -> None:
    a, b = socket.socketpair()  # blocking: every try is MSG_DONTWAIT all the same
    try:
        assert spin(a, 0.001, 16) is None
        b.sendall(b"x")
        assert spin(a, 5.0, 16) == b"x"
    finally:
        a.close()
        b.close()
