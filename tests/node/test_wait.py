"""The node's spin for its socket's next bytes (``node/_wait.py``): the compiled one, which gives
the GIL up for the whole spin, and its pure-Python twin answer alike on a real socket pair, for
bytes waiting, bytes arriving during the spin, nothing, the end of the stream and a closed
socket; the run that should use the compiled one does; and the compiled one, built with
AddressSanitizer, reads and frees nothing it should not."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from beambridge.node import _wait

from .._asan import environ, findings, libasan

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


@pytest.mark.skipif(not FORCED_PURE, reason="only BEAMBRIDGE_PURE_PYTHON=1 forces the pure spin")
def test_a_forced_pure_run_uses_the_pure_spin() -> None:
    assert _wait.IMPLEMENTATION == "pure"
    assert _wait.recv_within is _wait._recv_within_pure


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_bytes_already_there_come_back_at_once_up_to_size(
        spin: Spin, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.sendall(b"0123456789")
    assert spin(a, 0.0, 4) == b"0123"  # one try, at most size
    assert spin(a, 1.0, 1 << 18) == b"456789"


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_nothing_within_the_time_is_none_and_takes_nothing(
        spin: Spin, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    assert spin(a, 0.0, 16) is None
    assert spin(a, 0.002, 16) is None
    b.sendall(b"later")
    assert spin(a, 1.0, 16) == b"later"  # nothing read or lost meanwhile


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
def test_one_spin_lets_another_thread_run_and_returns_what_it_sent(
        spin: Spin, pair: tuple[socket.socket, socket.socket]) -> None:
    # the sender needs the GIL while the spin runs: a spin that held it all along would see
    # nothing for its whole second (the pure one gives it up at each try)
    a, b = pair
    sender = threading.Timer(0.01, b.sendall, args=(b"reply",))
    sender.start()
    try:
        assert spin(a, 1.0, 64) == b"reply"
    finally:
        sender.cancel()
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
def test_bad_arguments_are_value_errors_and_the_bounds_are_taken(
        spin: Spin, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    for size in (0, -1, (1 << 24) + 1, 1 << 70):
        with pytest.raises(ValueError, match="size"):
            spin(a, 0.0, size)
    for seconds in (1.5, float("inf"), float("nan")):  # a spin no signal stops is kept short
        with pytest.raises(ValueError, match="seconds"):
            spin(a, seconds, 64)
    b.sendall(b"ab")
    assert spin(a, 1.0, 1) == b"a"
    assert spin(a, -1.0, 1 << 24) == b"b"  # below zero: one try
    a.settimeout(0.5)  # CPython's own wait would come first: refused, not waited on
    with pytest.raises(ValueError, match="timeout"):
        spin(a, 0.0, 64)


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_a_closed_socket_is_a_bad_descriptor(
        spin: Spin, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    a.close()  # fileno() is now -1
    with pytest.raises(OSError) as closed:
        spin(a, 0.0, 64)
    assert closed.value.errno == errno.EBADF


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_a_reset_connection_is_its_error_not_nothing(spin: Spin) -> None:
    # a peer that closes with SO_LINGER 0 sends a TCP reset: recv() itself fails
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname(), timeout=10)
        b, _ = server.accept()
    try:
        a.setblocking(False)
        a.sendall(b"unread")
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.close()
        error = None
        for _ in range(100):  # the reset is in flight for a moment
            try:
                if spin(a, 0.05, 64) is not None:
                    break
            except OSError as failed:
                error = failed
                break
        assert isinstance(error, ConnectionResetError), error
    finally:
        a.close()


@pytest.mark.parametrize("spin", IMPLEMENTATIONS)
def test_a_blocking_socket_is_not_blocked_on(spin: Spin) -> None:
    a, b = socket.socketpair()  # blocking: every try is MSG_DONTWAIT all the same
    try:
        assert spin(a, 0.001, 16) is None
        b.sendall(b"x")
        assert spin(a, 1.0, 16) == b"x"
    finally:
        a.close()
        b.close()


# Every case above, and many reads of random sizes into buffers of random sizes, against a build
# of _cwait.c under AddressSanitizer (libasan preloaded; PYTHONMALLOC=malloc so the bytes objects
# are malloc blocks ASan guards).
_ASAN_SCRIPT = r"""
import importlib.util, random, socket, sys
spec = importlib.util.spec_from_file_location("_cwait", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
recv_within = module.recv_within
rng = random.Random(7)
a, b = socket.socketpair()
a.setblocking(False)
for _ in range(3000):
    sent = rng.randbytes(rng.randrange(1, 5000))
    b.sendall(sent)
    got = b""
    while len(got) < len(sent):
        part = recv_within(a, 1.0, rng.randrange(1, 6000))
        assert part, part
        got += part
    assert got == sent
    assert recv_within(a, 0.0, rng.randrange(1, 64)) is None
for bad in (0, -1, (1 << 24) + 1):
    try:
        recv_within(a, 0.0, bad)
    except ValueError:
        pass
    else:
        raise AssertionError(bad)
for seconds in (1.5, float("nan"), float("inf")):
    try:
        recv_within(a, seconds, 64)
    except ValueError:
        pass
    else:
        raise AssertionError(seconds)
a.settimeout(0.5)
try:
    recv_within(a, 0.0, 64)
except ValueError:
    pass
else:
    raise AssertionError("a socket with a timeout")
a.setblocking(False)
for wrong in ((a, 0.0), (a, "x", 1), ("x", 0.0, 1)):
    try:
        recv_within(*wrong)
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(wrong)
b.sendall(b"end")
b.shutdown(socket.SHUT_WR)
assert recv_within(a, 1.0, 64) == b"end" and recv_within(a, 1.0, 64) == b""
a.close()
try:
    recv_within(a, 0.0, 64)
except OSError:
    pass
else:
    raise AssertionError("a closed socket read")
b.close()
print("asan spin: ok")
"""


@pytest.mark.skipif(FORCED_PURE, reason="sanitizes the compiled spin; the default run did")
def test_the_compiled_spin_under_address_sanitizer(tmp_path: Path) -> None:
    library = libasan()
    if library is None:
        pytest.skip("needs gcc with libasan")
    source = Path(__file__).resolve().parents[2] / "src" / "beambridge" / "node" / "_cwait.c"
    module = tmp_path / "_cwait_asan.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-std=c99", "-Wall", "-Werror",
                    "-fsanitize=address", "-fno-omit-frame-pointer",
                    "-I", sysconfig.get_paths()["include"], str(source), "-o", str(module)],
                   check=True, timeout=120)
    script = tmp_path / "spin.py"
    script.write_text(_ASAN_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(module)],
                         env=environ(library, tmp_path), capture_output=True, text=True, timeout=120)
    found = findings(tmp_path, "_cwait.c", "_cwait_asan.so")
    assert not found, "\n\n".join(found)[:20000]
    assert "asan spin: ok" in run.stdout, (run.returncode, run.stdout[-2000:], run.stderr[-4000:])
