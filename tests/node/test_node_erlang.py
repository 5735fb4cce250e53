"""A beambridge node against real Erlang nodes (OTP 25 and 28): calls, messages, signals."""

from __future__ import annotations

import asyncio
import math
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from beambridge import Atom, Mapping, Pid, Timeout
from beambridge.node import (
    BlockingNode,
    ErlangError,
    ErlangExit,
    ErlangThrow,
    MailboxClosed,
    NoConnection,
    Node,
)
from beambridge.node._peer import _Peer

from .conftest import COOKIE, ErlNode, in_threads, unique, wait_until

pytestmark = pytest.mark.erlang
A = Atom


def expose_pymod(py: BlockingNode, inline: bool = False) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    def fail(text: bytes) -> None:
        raise ValueError(text.decode())

    async def slow_double(x: int) -> int:
        await asyncio.sleep(0.01)
        return 2 * x

    def throw(value: Any) -> None:
        raise ErlangThrow(value)

    async def later(x: int) -> int:
        return x + 1

    py.expose("pymod", {"add": add, "fail": fail, "slow_double": slow_double, "throw": throw,
                        "echo": lambda x: x, "awaitable": lambda x: later(x),
                        "unencodable": lambda: object()}, inline=inline)


# ------------------------------------------------------------------ Python calls Erlang

def test_rpc_results_and_typed_errors(py: BlockingNode, erl: ErlNode) -> None:
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)
    assert py.rpc(erl.name, "lists", "reverse", [list(range(10))]) == list(range(9, -1, -1))
    as_tuple = py.rpc(erl.name, "erlang", "list_to_tuple", [[1, b"b", 2.5, True, None]])
    assert as_tuple == (1, b"b", 2.5, True, None)
    with pytest.raises(ErlangError) as info:
        py.rpc(erl.name, "erlang", "error", [A("bad")])
    assert info.value.reason == A("bad") and info.value.stack
    with pytest.raises(ErlangError) as info:
        py.rpc(erl.name, "no_such_module", "f", [])
    assert info.value.reason == A("undef")
    with pytest.raises(ErlangThrow) as thrown:
        py.rpc(erl.name, "erlang", "throw", [(A("my"), 1)])
    assert thrown.value.reason == (A("my"), 1)
    with pytest.raises(ErlangExit) as exited:
        py.rpc(erl.name, "erlang", "exit", [A("gone")])
    assert exited.value.reason == A("gone")
    with pytest.raises(Timeout):
        py.rpc(erl.name, "timer", "sleep", [5000], timeout=0.3)
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)  # still fine after a timeout
    assert erl.name in py.nodes()


def test_rpc_to_unknown_node_is_noconnection(py: BlockingNode) -> None:
    with pytest.raises(NoConnection):
        py.rpc("nobody_here@127.0.0.1", "erlang", "node", [], timeout=5)


def test_ping_both_ways(py: BlockingNode, erl: ErlNode) -> None:
    assert py.ping(erl.name) is True
    assert py.ping("nobody_here@127.0.0.1") is False
    assert py.rpc(erl.name, "net_adm", "ping", [A(py.name)]) == A("pong")


def test_gen_call_and_gen_cast(py: BlockingNode, erl: ErlNode) -> None:
    name = unique("srv")
    py.rpc(erl.name, "bb_test", "start_server", [A(name)])
    assert py.gen_call((name, erl.name), (A("hello"), 1)) == (A("echo"), (A("hello"), 1))
    with py.mailbox() as mb:
        py.gen_cast((name, erl.name), (A("tell"), mb.pid, b"cast!"))
        assert mb.receive(timeout=5) == b"cast!"
    with pytest.raises(ErlangExit):
        py.gen_call((unique("none"), erl.name), A("x"), timeout=5)


# ------------------------------------------------------------------ Erlang calls Python

@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
def test_rpc_and_erpc_from_erlang(py: BlockingNode, erl: ErlNode, inline: bool) -> None:
    """The same answers whether a function runs in a thread or inline (answered at once, with
    no task: its own path)."""
    expose_pymod(py, inline)
    me = A(py.name)
    assert py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("add"), [1, 2]]) == (A("ok"), 3)
    assert py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("awaitable"), [1]]) == (A("ok"), 2)
    assert py.rpc(erl.name, "rpc", "call", [me, A("pymod"), A("awaitable"), [5]]) == 6
    kind, reason = py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("unencodable"), []])
    assert kind == A("error") and reason[1][1] == A("EncodeError")
    assert py.rpc(erl.name, "rpc", "call", [me, A("pymod"), A("add"), [1, 2]]) == 3
    assert py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("slow_double"), [21]]) == (A("ok"), 42)
    kind, reason = py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("fail"), [b"nope"]])
    assert kind == A("error")
    assert reason[0] == A("exception")
    assert reason[1] == (A("python"), A("ValueError"), b"nope")
    assert any(frame[1] == A("fail") for frame in reason[2])
    assert py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("missing"), [1]]) == (
        A("error"), (A("exception"), A("undef"), [(A("pymod"), A("missing"), [1], [])]))
    assert py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("throw"), [7]]) == (A("throw"), 7)
    badrpc = py.rpc(erl.name, "rpc", "call", [me, A("nomod"), A("f"), []])
    assert badrpc[0] == A("badrpc") and badrpc[1][1][0] == A("undef")
    # rpc:cast into Python (SPAWN_REQUEST of erpc:execute_cast)
    with py.mailbox("cast_target") as mb:
        py.expose("pymod2", {"tell": lambda: py.send("cast_target", b"told")})
        py.rpc(erl.name, "rpc", "cast", [me, A("pymod2"), A("tell"), []])
        assert mb.receive(timeout=5) == b"told"


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
def test_spawned_call_with_link_and_monitor(py: BlockingNode, erl: ErlNode, inline: bool) -> None:
    """A spawn request that links and monitors: both signals carry the call's outcome, on the
    path that makes no process (inline) and the worker thread's."""
    expose_pymod(py, inline)
    me = A(py.name)
    ret = (A("ref"), A("return"), 3)
    assert py.rpc(erl.name, "bb_test", "spawn_linked_py", [me, A("pymod"), A("add"), [1, 2]]) == (ret, ret)
    link, down = py.rpc(erl.name, "bb_test", "spawn_linked_py", [me, A("pymod"), A("unencodable"), []])
    assert link == down and link[:2] == (A("ref"), A("error")) and link[2][1] == A("EncodeError")
    link, down = py.rpc(erl.name, "bb_test", "spawn_linked_py", [me, A("pymod"), A("fail"), [b"no"]])
    assert link == down and link[2] == (A("python"), A("ValueError"), b"no")


def test_killed_thread_call_drops_its_result(py: BlockingNode, erl: ErlNode) -> None:
    """A call killed while its worker thread runs is DOWN ``killed``; the result that comes
    later is dropped, and the workers go on serving."""
    release = threading.Event()
    done = threading.Event()

    def wait() -> int:
        release.wait(10)
        done.set()
        return 1

    py.expose("pyslow", {"wait": wait})
    me = A(py.name)
    assert py.rpc(erl.name, "bb_test", "kill_py_call", [me, A("pyslow"), A("wait"), []]) == A("killed")
    release.set()
    assert done.wait(10)
    expose_pymod(py)
    assert py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("add"), [4, 5]]) == (A("ok"), 9)


def taken_by_readers(py: BlockingNode) -> list[str]:
    """The functions of the erpc calls a worker thread reading the connection started itself
    (``_take_spawn_request``), recorded as they are taken."""
    node = py.node
    take = node._take_spawn_request
    taken: list[str] = []

    def recording(peer: Any, event: Any) -> Any:
        job = take(peer, event)
        if job is not None:
            taken.append(str(event.args[2]))
        return job

    node._take_spawn_request = recording  # type: ignore[method-assign]
    return taken


def holding(release: threading.Event) -> Callable[[int], int]:
    """A function that returns its argument once ``release`` is set (20 s at most)."""
    def hold(x: int) -> int:
        release.wait(20)
        return x
    return hold


def processes_made(py: BlockingNode) -> list[int]:
    """The pid ids of the processes spawn requests make from now on (``_spawned_process``)."""
    node = py.node
    spawned = node._spawned_process
    made: list[int] = []

    def counting(event: Any, pid: Any, flags: int) -> Any:
        made.append(pid.id)
        return spawned(event, pid, flags)

    node._spawned_process = counting  # type: ignore[method-assign]
    return made


def in_background(py: BlockingNode, erl: ErlNode, function: str, args: list[Any]) -> Any:
    """``bb_test:function(*args)`` run by an Erlang process of its own, its result sent to a
    mailbox: no blocking caller of ours reads the connection while it runs (the loop does)."""
    with py.mailbox() as mb:
        tag = py.make_ref()
        started = py.rpc(erl.name, "bb_test", "in_background",
                         [mb.pid, tag, A("bb_test"), A(function), args])
        assert started == A("ok")
        got_tag, result = mb.receive(timeout=60)
        assert got_tag == tag
        return result


def test_plain_calls_run_in_the_thread_that_reads_them(py: BlockingNode, erl: ErlNode) -> None:
    """Sequential erpc calls into a plain function: a worker thread reads the connection and
    runs the calls it reads itself (no hop from the loop), every answer right and in order."""
    where: list[str] = []

    def double(x: int) -> int:
        where.append(threading.current_thread().name)
        return 2 * x

    py.expose("pyseq", {"double": double})
    taken = taken_by_readers(py)
    got = in_background(py, erl, "erpc_seq", [A(py.name), A("pyseq"), A("double"), 200])
    assert got == [(A("ok"), 2 * i) for i in range(1, 201)]
    assert set(where) == {"beambridge-call"}  # never the loop thread
    # the first call comes through the loop, which then lets a worker read; a few more may
    # while a worker is not yet reading, but most are read and run by one
    assert len(taken) >= 100, len(taken)


def test_quick_calls_a_worker_reads_are_answered_without_a_process(epmd_port: int,
                                                                   erl: ErlNode) -> None:
    """A reading worker answers a quick call with its spawn reply and its DOWN in one write: the
    call never becomes a process, leaves the loop nothing to book, and holds no place under
    ``max_processes`` once answered: sequential calls on a node with two free places all
    succeed, and the node is back to where it was after them."""
    with BlockingNode(unique("book") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as py:
        node = py.node
        assert py.ping(erl.name)
        base = len(node._procs)
        py.expose("pybook", {"double": lambda x: 2 * x})
        taken = taken_by_readers(py)
        made = processes_made(py)
        got = in_background(py, erl, "erpc_seq", [A(py.name), A("pybook"), A("double"), 200])
        assert got == [(A("ok"), 2 * i) for i in range(1, 201)]
        assert len(taken) >= 100, len(taken)
        assert len(made) <= 200 - len(taken), (len(made), len(taken))  # only the loop's made one
        assert wait_until(lambda: len(node._procs) == base and node._thread_jobs == 0, 10)
        assert not node._handbacks and not node._unseen

        node.max_processes = base + 3  # in_background's mailbox takes one
        got = in_background(py, erl, "erpc_seq", [A(py.name), A("pybook"), A("double"), 200])
        assert got == [(A("ok"), 2 * i) for i in range(1, 201)]
        assert wait_until(lambda: len(node._procs) == base and node._thread_jobs == 0, 10)


def test_an_unseen_answer_that_fails_to_encode_is_answered_by_a_process(
        py: BlockingNode, erl: ErlNode) -> None:
    """A worker's answer to an unseen call failing in an unforeseen way (not an EncodeError:
    say, out of memory) must not lose the call: it takes the process path, which answers.
    The failure is injected into the answer's encoding on the unseen path only, for every
    other call; every answer right, and nothing left behind."""
    assert py.ping(erl.name)
    node = py.node
    base = len(node._procs)
    py.expose("pyfail", {"double": lambda x: 2 * x})
    taken = taken_by_readers(py)
    answer = node._answer_unseen
    failed: list[int] = []

    def failing_sometimes(unseen: Any, outcome: Any) -> bool:
        if len(taken) % 2:
            def broken(*args: Any) -> Any:
                failed.append(1)
                raise RuntimeError("injected")
            node._answer_packets = broken  # type: ignore[method-assign]
        try:
            return answer(unseen, outcome)
        finally:
            node.__dict__.pop("_answer_packets", None)

    node._answer_unseen = failing_sometimes  # type: ignore[method-assign]
    got = in_background(py, erl, "erpc_seq", [A(py.name), A("pyfail"), A("double"), 60])
    assert got == [(A("ok"), 2 * i) for i in range(1, 61)]
    assert len(failed) >= 10, (len(failed), len(taken))
    assert wait_until(lambda: len(node._procs) == base and node._thread_jobs == 0, 10)
    assert not node._handbacks and not node._unseen


def test_an_awaitable_from_a_plain_function_a_worker_read_is_awaited_on_the_loop(
        py: BlockingNode, erl: ErlNode) -> None:
    """A plain function a reading worker runs may return an awaitable, which only the loop
    can await: the unseen call becomes a process then, from the worker (its spawn reply out
    before anything else of it), and the loop answers. Every answer right and in order, most
    calls read by a worker, and no process, job or unseen call left behind."""
    assert py.ping(erl.name)
    node = py.node
    base = len(node._procs)
    awaited: list[int] = []

    async def later(x: int) -> int:
        awaited.append(x)
        await asyncio.sleep(0)
        return x + 1

    py.expose("pyawait", {"later": lambda x: later(x)})
    taken = taken_by_readers(py)
    made = processes_made(py)
    got = in_background(py, erl, "erpc_seq", [A(py.name), A("pyawait"), A("later"), 100])
    assert got == [(A("ok"), i + 1) for i in range(1, 101)]
    assert awaited == list(range(1, 101))
    assert len(taken) >= 50, len(taken)
    assert len(made) == 100  # each one awaited by a process: the worker's or the loop's
    assert wait_until(lambda: len(node._procs) == base and node._thread_jobs == 0, 10)
    assert not node._handbacks and not node._unseen


@pytest.mark.parametrize("limit", ["places", "jobs"])
def test_a_call_answered_by_a_reader_frees_its_place_before_its_reply_goes_out(
        epmd_port: int, erl: ErlNode, monkeypatch: pytest.MonkeyPatch, limit: str) -> None:
    """The caller's next request may come the moment a reading worker's reply is out, and the
    loop may read it (the watchdog takes reading back from a worker that is not reading): the
    answered call must no longer count by then, neither as a process (uncounted, or queued
    for booking) nor as a job for a thread, or a node one short of its limit refuses that
    request. Worker threads are held up here right after each answer they write, so that the
    loop reads the next request; with one free place, or one free job (the others taken, as
    by killed calls whose functions still run), all calls succeed."""
    with BlockingNode(unique("early") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as py:
        node = py.node
        assert py.ping(erl.name)
        base = len(node._procs)
        py.expose("pyearly", {"double": lambda x: 2 * x})
        taken = taken_by_readers(py)
        lingered: list[int] = []
        write = _Peer.write_from_thread

        def write_then_linger(peer: _Peer, data: bytes, *more: bytes) -> bool:
            sent = write(peer, data, *more)
            if threading.current_thread().name == "beambridge-call":
                lingered.append(1)
                time.sleep(0.01)  # several watchdog looks: the loop reads the next request
            return sent

        monkeypatch.setattr(_Peer, "write_from_thread", write_then_linger)
        if limit == "places":
            node.max_processes = base + 2  # in_background's mailbox takes one: one place left
            others = 0
        else:
            node.max_processes = base + 100
            others = node.max_processes - 1  # jobs still running: one job left
        with node._jobs_lock:
            node._thread_jobs += others
        try:
            got = in_background(py, erl, "erpc_seq", [A(py.name), A("pyearly"), A("double"), 40])
        finally:
            with node._jobs_lock:
                node._thread_jobs -= others
        assert got == [(A("ok"), 2 * i) for i in range(1, 41)]
        # worker threads answered most (readers some: how many depends on timing, as a reader
        # refuses a call while an answered one is not booked yet; the loop's workers the
        # others), each call freeing its place and its job before its write
        assert len(lingered) >= 30, (len(lingered), len(taken))
        assert wait_until(lambda: len(node._procs) == base and node._thread_jobs == 0, 10)


def test_a_slow_call_a_reader_ran_is_booked_once_it_returns(py: BlockingNode, erl: ErlNode) -> None:
    """A plain function slower than the watchdog (``_OWNER_IDLE``, 2 ms): the loop takes reading
    back from the worker that read its call while the function still runs, so no later look
    at the reader books that call; the worker leaving (``_worker_left``) must, once the
    function returned. Sequential calls: every answer right and in order, many run by a
    reading worker, and nothing left behind after them (table back to its size, no job
    counted, no booking pending), also with only a few free places. Slow calls alternate
    between a reader and the loop, which books a reader's call before it starts the next, so
    only a last call depends on the worker leaving: each round ends with quick calls that
    keep a worker reading, and then a slow one that it reads."""
    assert py.ping(erl.name)
    node = py.node
    base = len(node._procs)

    def triple(x: int) -> int:
        time.sleep(0.015)
        return 3 * x

    def slow_last(x: int) -> int:  # called with 1..5
        if x == 5:
            time.sleep(0.015)
        return 3 * x

    py.expose("pyslowbook", {"triple": triple, "slow_last": slow_last})
    taken = taken_by_readers(py)
    take = node._take_spawn_request
    taken_args: list[Any] = []

    def recording(peer: Any, event: Any) -> Any:
        job = take(peer, event)
        if job is not None:
            taken_args.append((str(event.args[2]), event.args[3]))
        return job

    node._take_spawn_request = recording  # type: ignore[method-assign]

    def calls(function: str, count: int) -> int:
        """How many of ``count`` sequential calls a reading worker ran."""
        before = len(taken)
        got = in_background(py, erl, "erpc_seq", [A(py.name), A("pyslowbook"), A(function), count])
        assert got == [(A("ok"), 3 * i) for i in range(1, count + 1)]
        return len(taken) - before

    def settled() -> bool:
        return len(node._procs) == base and node._thread_jobs == 0 and not node._handbacks

    def end_on_a_slow_call_a_reader_ran() -> None:
        for _ in range(5):  # a reader almost always reads the slow last call at once
            taken_args.clear()
            calls("slow_last", 5)
            if ("slow_last", [5]) in taken_args:
                break
        assert ("slow_last", [5]) in taken_args, taken_args
        assert wait_until(settled, 5), (len(node._procs) - base, node._thread_jobs,
                                        len(node._handbacks))

    by_readers = calls("triple", 30)
    assert by_readers >= 10, by_readers
    end_on_a_slow_call_a_reader_ran()

    limit = node.max_processes
    node.max_processes = base + 3  # in_background's mailbox takes one
    by_readers = calls("triple", 30)
    assert by_readers >= 10, by_readers
    # with so few places, quick calls a reader answered soon fill them until the loop's next
    # look books them, and the reader leaves the next call to the loop: places again to end
    node.max_processes = limit
    end_on_a_slow_call_a_reader_ran()


def test_the_loop_reads_the_next_request_by_polling(py: BlockingNode, erl: ErlNode,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """After answering, a BlockingNode's loop polls the socket before it sleeps: what it reads
    that way is applied as what the transport delivers (inline calls answered right and in
    order), and an end of stream read that way ends the connection. The poll is made long
    here so that every next request lands in it."""
    from beambridge.node import _connections

    polled: list[int] = []
    poll = _connections._poll_briefly

    def counting(peer: Any, seconds: float) -> bytes | None:
        data = poll(peer, seconds)
        polled.append(-1 if data is None else len(data))
        return data

    monkeypatch.setattr(_connections, "_poll_briefly", counting)
    py.node._busy_poll = 0.2
    py.expose("pypoll", {"double": lambda x: 2 * x}, inline=True)
    got = in_background(py, erl, "erpc_seq", [A(py.name), A("pypoll"), A("double"), 50])
    assert got == [(A("ok"), 2 * i) for i in range(1, 51)]
    assert sum(1 for n in polled if n > 0) >= 25, polled  # most requests came by the poll
    # Erlang drops the connection right after its answer: the poll reads the end of stream,
    # and the connection ends at once
    peer = py.node._peers[A(erl.name)]
    polled.clear()
    assert py.rpc(erl.name, "bb_test", "call_then_disconnect",
                  [A(py.name), A("pypoll"), A("double"), [1]]) == A("ok")
    assert wait_until(lambda: not peer.alive, 5)
    assert 0 in polled, polled
    assert py.rpc(erl.name, "erlang", "node", []) == A(erl.name)


def test_a_plain_call_running_in_the_reading_thread_holds_nothing_up(py: BlockingNode, erl: ErlNode) -> None:
    """A plain function that blocks in the thread that read its call: the loop takes reading
    back, so the calls made meanwhile are answered; the last of them releases the first."""
    gate = threading.Event()

    def slow() -> bool:
        return gate.wait(20)

    def quick(i: int) -> int:
        if i == 5:
            gate.set()
        return i

    py.expose("pygate", {"slow": slow, "quick": quick})
    taken = taken_by_readers(py)
    quicks, slow_result = in_background(py, erl, "gated", [A(py.name), A("pygate"), A("slow"), A("quick"), 5])
    assert quicks == [(A("ok"), i) for i in range(1, 6)]
    assert slow_result == (A("ok"), True)  # the gate opened while it waited: nothing was held up
    assert "slow" in taken


def test_a_call_killed_in_the_reading_thread_is_down_once(py: BlockingNode, erl: ErlNode) -> None:
    """A call killed while it runs in the worker that read it: its spawner sees DOWN
    ``killed`` once, the result that comes later is dropped, and no process is left."""
    started, done = threading.Event(), threading.Event()

    def wait() -> int:
        started.set()
        time.sleep(0.2)
        done.set()
        return 1

    py.expose("pykill", {"wait": wait, "warm": lambda i: i,
                         "started": lambda: A("ok") if started.wait(10) else A("no"),
                         "finished": lambda: A("ok") if done.wait(10) else A("no")})
    taken = taken_by_readers(py)
    before = len(py.node._procs)
    assert in_background(py, erl, "kill_when_running", [A(py.name), A("pykill"), A("wait"), []]) == (
        A("killed"), A("none"))
    assert "wait" in taken
    assert wait_until(lambda: len(py.node._procs) <= before, 5)


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
def test_exceptions_that_cannot_print_still_answer(py: BlockingNode, erl: ErlNode, inline: bool) -> None:
    """An exception whose ``str`` raises, and (in a thread) ``SystemExit``: the caller gets an
    error naming the exception at once, and the node keeps no process for the call."""
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    def unprintable() -> None:
        raise Unprintable()

    def leave() -> None:
        raise SystemExit(3)

    functions = {"unprintable": unprintable} if inline else {"unprintable": unprintable, "leave": leave}
    py.expose("pybad", functions, inline=inline)
    me = A(py.name)
    before = len(py.node._procs)
    for name, kind in (("unprintable", "Unprintable"), ("leave", "SystemExit")):
        if name not in functions:
            continue
        got = py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pybad"), A(name), []], timeout=15)
        assert got[0] == A("error") and got[1][:2] == (A("exception"), (A("python"), A(kind), b""))
        badrpc = py.rpc(erl.name, "rpc", "call", [me, A("pybad"), A(name), []], timeout=15)
        assert badrpc[0] == A("badrpc")
    deadline = time.monotonic() + 5
    while len(py.node._procs) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(py.node._procs) <= before


def test_many_calls_in_flight_into_python(py: BlockingNode, erl: ErlNode) -> None:
    """300 erpc calls at once into thread and inline functions: every answer right and in
    its own call (a spawn reply always before its result, whichever thread wrote the result)."""
    def double(x: int) -> int:
        if x % 50 == 0:
            raise ValueError(f"no {x}")
        return 2 * x

    py.expose("pymany", {"double": double})
    py.expose("pymany_inline", {"double": double}, inline=True)
    me = A(py.name)
    for module in ("pymany", "pymany_inline"):
        got = py.rpc(erl.name, "bb_test", "erpc_many", [me, A(module), A("double"), 300], timeout=60)
        assert len(got) == 300
        for i, answer in enumerate(got, 1):
            if i % 50 == 0:
                assert answer[0] == A("error") and answer[1][1] == (A("python"), A("ValueError"),
                                                                  f"no {i}".encode())
            else:
                assert answer == (A("ok"), 2 * i)


def test_blocking_calls_wait_for_a_bounded_pool(py: BlockingNode, erl: ErlNode) -> None:
    """A flood of calls into a blocking function costs queue entries, not threads: at most
    the pool's threads run (as many as the loop's default executor), the rest wait their turn;
    once released every call is answered, and an inline function answers meanwhile."""
    release = threading.Event()
    running: set[int] = set()
    peak = 0
    lock = threading.Lock()

    def hold(x: int) -> int:
        nonlocal peak
        with lock:
            running.add(threading.get_ident())
            peak = max(peak, len(running))
        release.wait(20)
        with lock:
            running.discard(threading.get_ident())
        return x

    py.expose("pyhold", {"hold": hold})
    expose_pymod(py, inline=True)
    me = A(py.name)
    limit = py.node._workers.limit
    result: list[Any] = []
    caller = threading.Thread(target=lambda: result.append(py.rpc(
        erl.name, "bb_test", "erpc_many", [me, A("pyhold"), A("hold"), limit * 3], timeout=60)))
    caller.start()
    deadline = time.monotonic() + 10
    while peak < limit and time.monotonic() < deadline:
        time.sleep(0.01)
    assert peak == limit
    assert py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("add"), [1, 2]]) == (A("ok"), 3)
    workers = [t for t in threading.enumerate() if t.name == "beambridge-call"]
    assert len(workers) <= limit
    release.set()
    caller.join(30)
    assert result == [[(A("ok"), i) for i in range(1, limit * 3 + 1)]]
    assert peak == limit


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
def test_old_style_rex_call_and_features(py: BlockingNode, erl: ErlNode, inline: bool) -> None:
    expose_pymod(py, inline)
    with py.mailbox() as mb:
        py.send(("rex", py.name), (mb.pid, (A("call"), A("pymod"), A("add"), [2, 3], A("user"))))
        assert mb.receive(timeout=5) == (A("rex"), 5)
        py.send(("rex", py.name), (mb.pid, A("features_request")))
        assert mb.receive(timeout=5) == (A("features_reply"), A(py.name), [A("erpc")])
    # and gen_server:call(rex) from Erlang, as rpc:block_call does
    assert py.rpc(erl.name, "rpc", "block_call", [A(py.name), A("pymod"), A("add"), [4, 5]]) == 9


def test_erl_call_reaches_exposed_function(py: BlockingNode, erl: ErlNode, epmd_port: int) -> None:
    expose_pymod(py)
    import os
    env = erl.runtime.environ({**os.environ, "ERL_EPMD_PORT": str(epmd_port)})
    out = subprocess.run([str(erl.runtime.tool("erl_call")), "-name", py.name, "-c", COOKIE,
                          "-a", "pymod add [40, 2]"], env=env, capture_output=True, timeout=30, text=True)
    assert out.stdout.strip() == "42", out.stderr


# ------------------------------------------------------------------ messages

def test_messages_both_ways(py: BlockingNode, erl: ErlNode) -> None:
    echo = unique("echo")
    py.rpc(erl.name, "bb_test", "start_echo", [A(echo)])
    with py.mailbox("inbox_" + echo) as mb:
        py.send((echo, erl.name), (mb.pid, {b"k": [1, 2, 3]}))
        assert mb.receive(timeout=5) == {b"k": [1, 2, 3]}
        mb.send((echo, erl.name), (mb.pid, A("second")))
        assert mb.receive(timeout=5) == A("second")
        # Erlang sends to our registered name and to our pid; selective receive picks one
        py.rpc(erl.name, "bb_test", "send_after", [0, (A(mb.name), A(py.name)), (A("first"), 1)])
        py.rpc(erl.name, "bb_test", "send_after", [50, mb.pid, (A("later"), 2)])
        assert mb.receive(timeout=5, match=lambda m: m[0] == A("later")) == (A("later"), 2)
        assert mb.receive(timeout=5) == (A("first"), 1)
        with pytest.raises(Timeout):
            mb.receive(timeout=0.1)


def test_mapping_text(epmd_port: int, erl: ErlNode) -> None:
    with BlockingNode(unique("pytext") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                      mapping=Mapping.TEXT) as node:
        assert node.rpc(erl.name, "erlang", "iolist_to_binary", [["héllo", " ", "wörld"]]) == "héllo wörld"


# ------------------------------------------------------------------ links, monitors, exits

def test_links_and_exit_signals_both_ways(py: BlockingNode, erl: ErlNode) -> None:
    with py.mailbox() as watcher:
        # Erlang process linked to a Python mailbox: closing the mailbox with a reason kills it
        victim_mb = py.mailbox()
        erl_linked = py.rpc(erl.name, "bb_test", "linker", [victim_mb.pid])
        assert isinstance(erl_linked, Pid)
        ref = watcher.monitor(erl_linked)
        victim_mb.close(A("boom"))
        down = watcher.receive(timeout=5)
        assert down == (A("DOWN"), ref, A("process"), erl_linked, A("boom"))

        # Python links to an Erlang process; it exits; the trapping mailbox gets ('EXIT', Pid, R)
        trapping = py.mailbox(trap_exits=True)
        erl_proc = py.rpc(erl.name, "bb_test", "linker", [watcher.pid])
        trapping.link(erl_proc)
        time.sleep(0.1)
        py.send(erl_proc, (A("exit"), A("bye")))
        assert trapping.receive(timeout=5) == (A("EXIT"), erl_proc, A("bye"))
        # (watcher was linked too, and traps exits by default)
        assert watcher.receive(timeout=5) == (A("EXIT"), erl_proc, A("bye"))

        # a non-trapping mailbox is closed by an abnormal exit signal
        plain = py.mailbox(trap_exits=False)
        erl_proc2 = py.rpc(erl.name, "bb_test", "linker", [plain.pid])
        time.sleep(0.1)
        py.send(erl_proc2, (A("exit"), A("crash")))
        with pytest.raises(MailboxClosed) as closed:
            plain.receive(timeout=5)
        assert closed.value.reason == A("crash")

        # an Erlang trapping process gets our exit, and unlink stops it
        trapper = py.rpc(erl.name, "bb_test", "trapper", [trapping.pid, watcher.pid])
        trapping.unlink(trapper)
        trapping.close(A("done"))
        with pytest.raises(Timeout):
            watcher.receive(timeout=0.3, match=lambda m: m[0] == A("forwarded"))


def test_monitors_both_ways(py: BlockingNode, erl: ErlNode) -> None:
    with py.mailbox() as mb:
        target = py.mailbox()
        erl_mon, _ref = py.rpc(erl.name, "bb_test", "monitorer", [target.pid, mb.pid])
        target.close(A("finished"))
        forwarded = mb.receive(timeout=5)
        assert forwarded[0] == A("forwarded") and forwarded[2][0] == A("DOWN")
        assert forwarded[2][4] == A("finished")
        # monitoring a name that does not exist: immediate noproc
        ref = mb.monitor((unique("ghost"), erl.name))
        down = mb.receive(timeout=5)
        assert down[:2] == (A("DOWN"), ref) and down[4] == A("noproc")
        # demonitor: no DOWN afterwards
        ref2 = mb.monitor(erl_mon)
        mb.demonitor(ref2)
        py.send(erl_mon, (A("exit"), A("quiet")))
        with pytest.raises(Timeout):
            mb.receive(timeout=0.3, match=lambda m: m[0] == A("DOWN"))


# ------------------------------------------------------------------ many threads

def test_many_threads_share_one_blocking_node(py: BlockingNode, erl: ErlNode) -> None:
    def worker(n: int) -> None:
        for i in range(30):
            assert py.rpc(erl.name, "lists", "reverse", [[n, i]]) == [i, n]
        with py.mailbox() as mb:
            py.send(mb.pid, n)
            assert mb.receive(timeout=5) == n

    errors = in_threads(worker, 8, 60)
    assert not errors, errors


# ------------------------------------------------------------------ the async API

def test_async_node(epmd_port: int, erl: ErlNode) -> None:
    async def main() -> None:
        async with Node(unique("pyasync") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as node:
            results = await asyncio.gather(*(node.rpc(erl.name, "erlang", "abs", [-i]) for i in range(64)))
            assert results == list(range(64))
            mb = node.mailbox()
            await node.send(mb.pid, 1)
            assert await mb.receive(timeout=1) == 1
        with pytest.raises(MailboxClosed):
            await mb.receive(timeout=1)

    asyncio.run(main())


def test_async_timeouts_share_a_timer_and_fire_in_order(epmd_port: int, erl: ErlNode) -> None:
    """The async ``Node``'s call timeouts are kept by tick (one timer for the first tick with
    calls due, not a timer per call): each call still times out after its own timeout, never
    before and at most a tick and a loop turn late, the shortest first; calls answered in
    time never time out; with nothing due, no timer is left."""
    async def main() -> None:
        async with Node(unique("pyticks") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as node:
            loop = asyncio.get_running_loop()

            async def timed(ms: int, timeout: float) -> tuple[str, float]:
                start = loop.time()
                try:
                    await node.rpc(erl.name, "timer", "sleep", [ms], timeout=timeout)
                    return "ok", loop.time() - start
                except Timeout:
                    return "timeout", loop.time() - start

            quick = [node.rpc(erl.name, "erlang", "abs", [-i], timeout=0.2) for i in range(50)]
            got = await asyncio.gather(timed(3000, 0.3), timed(3000, 0.1), timed(10, 5.0), *quick)
            (kind1, took1), (kind2, took2), (kind3, _) = got[:3]
            assert kind1 == "timeout" and 0.3 <= took1 < 0.3 + 0.25, (kind1, took1)
            assert kind2 == "timeout" and 0.1 <= took2 < took1, (kind2, took2)
            assert kind3 == "ok"
            assert got[3:] == list(range(50))
            await asyncio.sleep(0.3)  # past the quick calls' deadlines: nothing fires for them
            assert not node._due and node._due_timer is None
            assert node.stats()["totals"]["rpc_timeouts"] == 2
            assert await node.rpc(erl.name, "erlang", "node", timeout=1) == A(erl.name)

    asyncio.run(main())


def test_async_timeouts_survive_a_failing_one_sustained_traffic_and_odd_values(
        epmd_port: int, erl: ErlNode) -> None:
    """The timeouts by tick, under what could break them: a call whose callback raises when it
    times out (logged; the other calls of its tick and later ones still time out); thousands
    of sequential calls with long timeouts (the heap holds a tick once, not once per call);
    ``timeout=inf`` (no timeout) and NaN (refused before anything is sent or kept)."""
    async def main() -> None:
        async with Node(unique("pytickodd") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as node:
            def raising(ok: bool, value: Any) -> None:
                raise RuntimeError("a callback that fails")

            node.begin_rpc(erl.name, "timer", "sleep", [3000], 0.1, raising)
            same_tick = node.rpc(erl.name, "timer", "sleep", [3000], timeout=0.1)
            later = node.rpc(erl.name, "timer", "sleep", [3000], timeout=0.4)
            for pending in (same_tick, later):
                with pytest.raises(Timeout):
                    await pending

            for i in range(2000):
                assert await node.rpc(erl.name, "erlang", "abs", [-i], timeout=30) == i
            assert len(node._due_ticks) == len(node._due_queued) <= 400, len(node._due_ticks)

            assert await node.rpc(erl.name, "erlang", "node", timeout=math.inf) == A(erl.name)
            with pytest.raises(ValueError):
                await node.rpc(erl.name, "erlang", "node", timeout=math.nan)
            assert not node._calls

    asyncio.run(main())


def test_async_long_timeouts_leave_no_ticks_behind(epmd_port: int, erl: ErlNode) -> None:
    """Answered calls with long timeouts, each in a tick of its own: the heap of ticks holds
    about the ticks that still have calls, not one for every call made in the last hour."""
    async def main() -> None:
        async with Node(unique("pyticklong") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as node:
            for i in range(3000):
                assert await node.rpc(erl.name, "erlang", "abs", [-i], timeout=3600 + i * 0.005) == i
            assert not node._due
            assert len(node._due_ticks) == len(node._due_queued) <= 200, len(node._due_ticks)

    asyncio.run(main())


def test_a_call_a_worker_runs_unseen_counts_against_max_processes(epmd_port: int,
                                                                  erl: ErlNode) -> None:
    """A reading worker runs the first of many calls in flight before it is a process
    (``_Unseen``); the loop, which takes the others, must count it as one. The watchdog is kept
    from making it a process here (``_see_unseen``), which it does after 2-4 ms, so that the
    loop's count is tested whenever its read comes: the calls past the limit are refused, the
    others answered, and the node never holds more than ``max_processes``."""
    limit = 12
    with BlockingNode(unique("unseen") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                      max_processes=limit) as py:
        release = threading.Event()
        hold = holding(release)
        py.expose("pyunseen", {"hold": hold, "warm": lambda x: x})
        node = py.node
        assert py.ping(erl.name)
        free = limit - len(node._procs) - 1  # in_background's mailbox takes one
        taken = taken_by_readers(py)
        node._see_unseen = lambda peer, everything: None  # type: ignore[method-assign]
        out: list[Any] = []
        caller = threading.Thread(target=lambda: out.append(in_background(
            py, erl, "warm_many", [A(py.name), A("pyunseen"), A("hold"), free + 3])))
        caller.start()
        try:
            assert wait_until(lambda: len(node._procs) + len(node._unseen) == limit, 20)
            assert "hold" in taken and len(node._unseen) == 1  # the first held call: a worker's
            time.sleep(0.1)
            assert len(node._procs) + len(node._unseen) == limit
        finally:
            release.set()
            caller.join(30)
        refused = (A("error"), (A("erpc"), A("system_limit")))
        assert out == [[(A("ok"), i) for i in range(1, free + 1)] + [refused] * 3]
        assert wait_until(lambda: not node._unseen and node._thread_jobs == 0, 10)


def test_process_limit_refuses_and_serves_on(epmd_port: int, erl: ErlNode) -> None:
    """Past ``max_processes`` a spawn request gets ``system_limit`` at once (as a full BEAM
    process table answers it) and an old-style rpc call ``{badrpc, {'EXIT', {system_limit, _}}}``;
    meanwhile calls out of Python and the calls already accepted go on, and once those end the
    node takes calls again."""
    limit = 16
    with BlockingNode(unique("limit") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                      max_processes=limit) as py:
        release = threading.Event()
        hold = holding(release)
        py.expose("pyhold", {"hold": hold})
        expose_pymod(py, inline=True)
        me = A(py.name)
        assert py.ping(erl.name)
        base = len(py.node._procs)  # the node's own processes count, as BEAM's do
        free = limit - base
        assert free > 0

        def held_calls(how: str, n: int) -> tuple[threading.Thread, list[Any]]:
            out: list[Any] = []
            caller = threading.Thread(target=lambda: out.append(py.rpc(
                erl.name, "bb_test", how, [me, A("pyhold"), A("hold"), n], timeout=60)))
            caller.start()
            return caller, out

        caller, out = held_calls("erpc_many", free + 5)
        assert wait_until(lambda: len(py.node._procs) == limit, 20)
        refused = (A("error"), (A("erpc"), A("system_limit")))
        assert py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("add"), [1, 2]]) == refused
        assert py.rpc(erl.name, "lists", "reverse", [[1, 2]]) == [2, 1]  # Python's calls go on
        release.set()
        caller.join(30)
        assert out == [[(A("ok"), i) for i in range(1, free + 1)] + [refused] * 5]
        assert wait_until(lambda: len(py.node._procs) == base, 20)
        assert py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pymod"), A("add"), [1, 2]]) == (A("ok"), 3)

        # rex: as many unanswered calls as max_processes, then refusals; inline ones still answer
        release.clear()
        caller, out = held_calls("rex_many", limit + 3)
        assert wait_until(lambda: py.node._thread_jobs == limit, 20)
        assert py.rpc(erl.name, "bb_test", "call_py", [me, A("pymod"), A("add"), [2, 3]]) == 5
        release.set()
        caller.join(30)
        assert len(out) == 1 and len(out[0]) == limit + 3
        exits = [e for i, e in enumerate(out[0], 1) if e != i]  # Erlang's callers race: any 3
        assert len(exits) == 3 and all(
            e[:1] == (A("badrpc"),) and e[1][0] == A("EXIT") and e[1][1][0] == A("system_limit")
            for e in exits), exits
        assert wait_until(lambda: py.node._thread_jobs == 0, 20)
        assert py.rpc(erl.name, "bb_test", "rex_many", [me, A("pyhold"), A("hold"), 2]) == [1, 2]

        # an inline function that returns an awaitable: awaited on the loop, counted the same
        gate = asyncio.run_coroutine_threadsafe(_future(), py.loop).result(10)

        def held(x: int) -> Any:
            async def wait() -> int:
                await asyncio.shield(gate)
                return x
            return wait()

        py.expose("pyheld", {"held": held}, inline=True)
        caller = threading.Thread(target=lambda: out.append(py.rpc(
            erl.name, "bb_test", "rex_many", [me, A("pyheld"), A("held"), limit + 3], timeout=60)))
        out.clear()
        caller.start()
        assert wait_until(lambda: py.node._rex_busy == limit, 20)
        assert py.rpc(erl.name, "bb_test", "call_py", [me, A("pymod"), A("add"), [2, 3]]) == 5
        py.loop.call_soon_threadsafe(gate.set_result, None)
        caller.join(30)
        answers = out[0]
        assert sorted(a for a in answers if type(a) is int) != [] and len(answers) == limit + 3
        assert sum(1 for i, a in enumerate(answers, 1) if a == i) == limit
        assert wait_until(lambda: py.node._rex_busy == 0, 20)


async def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


def test_killed_calls_queued_for_threads_count_against_the_limit(epmd_port: int, erl: ErlNode) -> None:
    """A peer that spawns calls to a blocking function and kills each at once frees its
    processes, not the jobs they queued: those count against ``max_processes`` until a thread
    takes them, and a thread then drops them without running the function."""
    limit = 16
    with BlockingNode(unique("killq") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                      max_processes=limit) as py:
        release = threading.Event()
        ran: list[int] = []

        def hold(x: int) -> int:
            ran.append(x)
            release.wait(20)
            return x

        py.expose("pyhold", {"hold": hold})
        me = A(py.name)
        assert py.ping(erl.name)
        peak = 0
        result: list[Any] = []
        caller = threading.Thread(target=lambda: result.append(py.rpc(
            erl.name, "bb_test", "spawn_kill_many", [me, A("pyhold"), A("hold"), 3 * limit],
            timeout=60)))
        caller.start()
        deadline = time.monotonic() + 30
        while caller.is_alive() and time.monotonic() < deadline:
            peak = max(peak, py.node._thread_jobs)
            time.sleep(0.001)
        caller.join(10)
        answers = result[0]
        spawned = answers.count(A("ok"))
        assert answers.count(A("system_limit")) == 3 * limit - spawned > 0, answers
        assert peak <= limit and len(py.node._procs) < limit  # the processes are gone
        release.set()
        assert wait_until(lambda: py.node._thread_jobs == 0, 20)
        assert len(ran) <= py.node._workers.limit < spawned  # the queued ones never ran
        assert py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pyhold"), A("hold"), [7]]) == (A("ok"), 7)
