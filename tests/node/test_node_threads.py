"""The blocking API's direct path: calling threads write requests and messages themselves and
wait on their own slot (no hop to the loop thread). These tests check what that must keep: order
per sender, timeouts that still kill the remote process, errors when the peer or the node goes
away mid-call, many threads at once, and messages queued behind large writes."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time

import pytest

from beambridge import Atom, Timeout
from beambridge.node import BlockingNode, MailboxClosed, NoConnection, _peer

from .conftest import COOKIE, ErlNode, unique, wait_until

pytestmark = pytest.mark.erlang
A = Atom


def _join_all(threads: list[threading.Thread], timeout: float = 120) -> None:
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.1))
    assert not any(t.is_alive() for t in threads), "a thread is stuck"


def test_many_threads_rpc_and_messages(py: BlockingNode, erl: ErlNode) -> None:
    errors: list[BaseException] = []
    echo = unique("echo")
    py.rpc(erl.name, "bb_test", "start_echo", [A(echo)])

    def worker(n: int) -> None:
        try:
            with py.mailbox() as mb:
                for i in range(60):
                    assert py.rpc(erl.name, "lists", "reverse", [[n, i]]) == [i, n]
                    mb.send((echo, erl.name), (mb.pid, (n, i)))
                    assert mb.receive(timeout=10) == (n, i)
        except BaseException as error:  # collected for the main thread
            errors.append(error)

    _join_all([threading.Thread(target=worker, args=(n,)) for n in range(16)])
    assert not errors, errors[:3]


def test_order_per_sender_kept_behind_large_writes(py: BlockingNode, erl: ErlNode) -> None:
    """Small messages from one mailbox arrive in order while other threads push megabytes on the
    same connection (some small ones then queue behind bytes the socket did not take yet)."""
    sink = unique("sink")
    py.rpc(erl.name, "bb_test", "collect", [A(sink), 0])
    stop = threading.Event()
    errors: list[BaseException] = []

    def bulk() -> None:
        try:
            while not stop.is_set():
                assert py.rpc(erl.name, "erlang", "byte_size", [b"x" * (2 << 20)], timeout=60) == 2 << 20
        except BaseException as error:
            errors.append(error)

    def ordered(tag: int) -> None:
        try:
            with py.mailbox() as mb:
                for i in range(300):
                    mb.send((sink, erl.name), (tag, i))
        except BaseException as error:
            errors.append(error)

    pushers = [threading.Thread(target=bulk) for _ in range(2)]
    for t in pushers:
        t.start()
    try:
        _join_all([threading.Thread(target=ordered, args=(tag,)) for tag in range(4)])
    finally:
        stop.set()
        for t in pushers:
            t.join(120)
    assert not errors, errors[:3]
    with py.mailbox() as mb:
        mb.send((sink, erl.name), (A("get"), mb.pid))
        tag_, got = mb.receive(timeout=30)
    assert tag_ == A("collected")
    for tag in range(4):
        assert [i for t, i in got if t == tag] == list(range(300))


def test_timeout_kills_the_remote_process(py: BlockingNode, erl: ErlNode) -> None:
    name = unique("sleeper")
    with pytest.raises(Timeout):
        py.rpc(erl.name, "bb_test", "register_and_sleep", [A(name), 20000], timeout=0.5)
    deadline = time.monotonic() + 10
    while py.rpc(erl.name, "erlang", "whereis", [A(name)]) is not None:
        assert time.monotonic() < deadline, "the timed-out call's process still runs"
        time.sleep(0.05)
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)  # the connection is fine


def test_threads_mid_call_when_the_peer_dies(py: BlockingNode, fresh_erl: ErlNode) -> None:
    assert py.rpc(fresh_erl.name, "erlang", "node") == A(fresh_erl.name)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            py.rpc(fresh_erl.name, "timer", "sleep", [30000], timeout=60)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    fresh_erl.stop()
    for t in threads:
        t.join(20)
    assert len(errors) == 8 and all(isinstance(e, NoConnection) for e in errors), errors
    fresh_erl.start()
    assert py.rpc(fresh_erl.name, "erlang", "node") == A(fresh_erl.name)


def test_close_wakes_blocked_callers_and_receivers(epmd_port: int, erl: ErlNode) -> None:
    node = BlockingNode(unique("py") + "@127.0.0.1", COOKIE, epmd_port=epmd_port)
    node.rpc(erl.name, "erlang", "node")
    mb = node.mailbox()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            node.rpc(erl.name, "timer", "sleep", [30000], timeout=60)
        except BaseException as error:
            errors.append(error)

    def receive() -> None:
        try:
            mb.receive(timeout=60)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(3)] + [threading.Thread(target=receive)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    node.close()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert sorted(type(e).__name__ for e in errors) == sorted(
        ["NoConnection"] * 3 + [MailboxClosed.__name__]), errors


def test_receive_timeout_keeps_a_late_message(py: BlockingNode, erl: ErlNode) -> None:
    """A receive that gives up just as a message lands loses nothing: it returns it or the
    next receive does."""
    with py.mailbox() as mb:
        got: list[object] = []
        for i in range(40):
            py.rpc(erl.name, "bb_test", "send_after", [1, mb.pid, i])
            with contextlib.suppress(Timeout):
                got.append(mb.receive(timeout=0.001))
        deadline = time.monotonic() + 10
        while len(got) < 40 and time.monotonic() < deadline:
            got.append(mb.receive(timeout=5))
        assert sorted(got) == list(range(40))  # type: ignore[type-var]


# ------------------------------------------------------------------ a caller reading for itself

def test_messages_sent_before_the_reply_are_delivered_first(py: BlockingNode, erl: ErlNode) -> None:
    """What the remote function sent before it returned is in the mailbox when rpc returns, also
    when the calling thread read the reply from the socket itself."""
    with py.mailbox() as mb:
        for i in range(50):
            assert py.rpc(erl.name, "erlang", "send", [mb.pid, i]) == i
            assert mb._mailbox.receive_nowait() == i


def test_an_idle_reader_does_not_hold_up_other_traffic(py: BlockingNode, erl: ErlNode) -> None:
    """A thread that read its own replies and then went off to do other work must not keep
    messages to other mailboxes (or other callers' replies) waiting."""
    ready = threading.Event()
    release = threading.Event()

    def caller() -> None:
        for _ in range(20):
            py.rpc(erl.name, "erlang", "node")
        ready.set()
        release.wait(30)  # busy elsewhere, no further calls

    t = threading.Thread(target=caller)
    t.start()
    try:
        assert ready.wait(30)
        with py.mailbox() as mb:
            for i in range(5):
                py.rpc(erl.name, "bb_test", "send_after", [10, mb.pid, i])
                assert mb.receive(timeout=5) == i
        errors: list[BaseException] = []

        def other() -> None:
            try:
                for i in range(20):
                    assert py.rpc(erl.name, "erlang", "abs", [-i]) == i
            except BaseException as error:
                errors.append(error)

        _join_all([threading.Thread(target=other) for _ in range(3)], 60)
        assert not errors, errors
    finally:
        release.set()
        t.join(30)


def test_async_calls_and_erlang_calling_python_while_threads_read(py: BlockingNode, erl: ErlNode) -> None:
    """Async rpcs on the loop, Erlang calling exposed Python functions, and blocking callers
    that read the socket themselves, all at once on one connection."""
    import asyncio

    py.expose("pyt", {"twice": lambda x: 2 * x})
    stop = threading.Event()
    errors: list[BaseException] = []

    def blocking() -> None:
        try:
            i = 0
            while not stop.is_set():
                assert py.rpc(erl.name, "lists", "reverse", [[i, 1]]) == [1, i]
                i += 1
        except BaseException as error:
            errors.append(error)

    async def async_calls() -> None:
        node = py.node
        for _ in range(100):
            results = await asyncio.gather(*(node.rpc(erl.name, "erlang", "abs", [-j]) for j in range(8)))
            assert results == list(range(8))

    threads = [threading.Thread(target=blocking) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        future = asyncio.run_coroutine_threadsafe(async_calls(), py.loop)
        for i in range(30):
            got = py.rpc(erl.name, "bb_test", "erpc_py", [A(py.name), A("pyt"), A("twice"), [i]])
            assert got == (A("ok"), 2 * i)
        future.result(60)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]


def test_blocking_receive_reading_its_connection_keeps_order_and_other_senders(
        py: BlockingNode, erl: ErlNode) -> None:
    """A blocking receive reads the connection its mailbox last sent on for a moment: messages
    it reads there are delivered in order with the signals it hands to the loop, and messages
    from elsewhere (a local thread, the loop) still reach it."""
    echo = unique("echo")
    py.rpc(erl.name, "bb_test", "start_echo", [A(echo)])
    with py.mailbox() as mb:
        for i in range(200):  # request/response on one connection: the receive reads it itself
            mb.send((echo, erl.name), (mb.pid, i))
            assert mb.receive(timeout=10) == i
        # messages and exit signals (trapped: messages, applied on the loop) keep their order
        for _ in range(5):
            assert py.rpc(erl.name, "bb_test", "burst", [mb.pid, 100]) == A("ok")
            got = [mb.receive(timeout=10) for _ in range(200)]
            expected = [m for i in range(1, 101) for m in ((A("msg"), i), (A("sig"), i))]
            assert [g if g[0] == A("msg") else g[2] for g in got] == expected
        # while it waits (and reads the Erlang connection), a local sender still reaches it
        mb.send((echo, erl.name), (mb.pid, A("late")))
        sender = threading.Timer(0.3, lambda: py.send(mb.pid, A("local")))
        sender.start()
        try:
            assert mb.receive(timeout=10, match=lambda m: m == A("local")) == A("local")
        finally:
            sender.join(10)
        assert mb.receive(timeout=10) == A("late")  # the echo came first, and waited in the queue
        # an Erlang message that comes well after the read window: the loop delivers it
        py.rpc(erl.name, "bb_test", "send_after", [200, mb.pid, A("after")])
        assert mb.receive(timeout=10) == A("after")
        with pytest.raises(Timeout):
            mb.receive(timeout=0.05)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_direct_path_on_either_loop(loop: str, epmd_port: int, erl: ErlNode) -> None:
    """Both loops give threads a duplicate of the transport's descriptor, and a connection that
    goes down, from either end, really ends: the duplicate is closed with it (else the peer
    would see the connection open until its tick timeout) and none is left. A duplicate on
    asyncio's loop too: a thread spins on it with the GIL given up (``node/_wait.py``), and
    only the node closes it, under the peer's rlock, where asyncio closes its own socket
    whenever it likes (its number could then be another connection's mid-spin)."""
    pytest.importorskip(loop)
    name = unique("loops") + "@127.0.0.1"
    with BlockingNode(unique("watch") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as watch:
        def connected_to_erl() -> bool:
            return A(name) in watch.rpc(erl.name, "erlang", "nodes", [A("connected")])

        for round_ in range(4):
            before = _open_fds()
            with BlockingNode(name, COOKIE, epmd_port=epmd_port, loop=loop) as py:
                assert type(py.loop).__module__.split(".")[0] == loop
                for i in range(3):  # the other end drops us; the next call connects again
                    assert py.rpc(erl.name, "lists", "reverse", [[i, round_]]) == [round_, i]
                    peer = py.node._peers[A(erl.name)]
                    assert peer.sock is not None and peer.sock is peer.dup
                    assert peer.sock.fileno() != peer.transport.get_extra_info("socket").fileno()
                    assert watch.rpc(erl.name, "erlang", "disconnect_node", [A(name)]) is True
                    assert wait_until(lambda: A(erl.name) not in py.node._peers, 10)
                    if peer.dup is not None:  # closed on the loop's next turn
                        assert wait_until(lambda peer=peer: peer.dup is None, 10)
                assert py.rpc(erl.name, "erlang", "node", []) == A(erl.name)
                assert connected_to_erl()
                node = py.node
            # closed here: Erlang sees the connection end now, not at its tick timeout
            assert not node._dup_peers and all(p.dup is None for p in node._peers.values())
            assert wait_until(lambda: not connected_to_erl(), 10)
            if round_:  # the first round warms up what a loop keeps for the process
                assert _open_fds() == before


def test_loop_names_checked() -> None:
    from beambridge import UsageError

    with pytest.raises(UsageError, match="expected one of auto, asyncio, uvloop"):
        BlockingNode("x@127.0.0.1", COOKIE, loop="trio")


def test_the_worker_pool_promises_only_free_threads() -> None:
    """A job queued while every thread is busy is taken by the next thread done with its own,
    and that thread is not counted idle meanwhile: ``submit_now`` (what a connection's reader
    asks for) says no until a thread is really free, and then runs at once."""
    from beambridge.node._workers import Workers

    pool = Workers(1)
    first, second = threading.Event(), threading.Event()
    running = [threading.Event(), threading.Event()]
    try:
        pool.submit(lambda: (running[0].set(), first.wait(10)))
        assert running[0].wait(10)
        pool.submit(lambda: (running[1].set(), second.wait(10)))  # waits: the thread is busy
        assert pool.backlog()
        assert not pool.submit_now(lambda: None)
        first.set()
        assert running[1].wait(10)  # the same thread took the waiting job
        assert not pool.backlog()
        assert not pool.submit_now(lambda: None)  # still busy with it
        second.set()
        assert wait_until(lambda: pool._idle == 1, 10)
        ran = threading.Event()
        assert pool.submit_now(ran.set) and ran.wait(10)
    finally:
        first.set()
        second.set()
        pool.close()


def test_a_connection_without_a_duplicate_says_so_and_goes_through_the_loop(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # out of descriptors: no duplicate for threads to read, said once, and no socket handed out
    def no_more(fd: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    class Shown:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def get_extra_info(self, name: str) -> object:
            return self.sock if name == "socket" else None

    a, b = socket.socketpair()
    try:
        monkeypatch.setattr(_peer.os, "dup", no_more)
        with caplog.at_level("WARNING", logger="beambridge.node"):
            assert _peer._plain_socket(Shown(a)) == (None, None)  # type: ignore[arg-type]
        assert "through the loop thread" in caplog.text and "Too many open files" in caplog.text
    finally:
        a.close()
        b.close()
