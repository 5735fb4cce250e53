"""Attacks on a node's ports, each asserting the refusal and that legitimate traffic made
meanwhile still passes: what ``expose`` offers, unfinished fragments, decompression bombs,
half-open connection floods, stalled handshakes, oversized handshake and EPMD packets."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import resource
import select
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from beambridge import Atom, Pid, Timeout
from beambridge.node import BlockingNode, EpmdUnavailable, NoConnection, _epmd_client, _threads, epmd_names
from beambridge.protocol import NEED_DATA, Connected, Connection, Role, SpawnRequest, State, StatusReceived
from beambridge.protocol import epmd as epmd_messages
from beambridge.term import encode_body, term_to_binary

from .conftest import COOKIE, ErlNode, unique, wait_until

pytestmark = pytest.mark.erlang
A = Atom


# ------------------------------------------------------------------ expose: only what is ours

def _load(path: Path, source: str) -> ModuleType:
    path.write_text(source)
    name = unique("bb_exposed")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _undef_shape(answer: Any) -> tuple[Any, Any, Any]:
    """``{badrpc, {'EXIT', {undef, [{M, F, Args, _} | _]}}}`` as (badrpc, undef, {M, F})."""
    badrpc, (exit_tag, (reason, stack)) = answer[0], answer[1]
    assert exit_tag == A("EXIT")
    return badrpc, reason, stack[0][:2]


def test_expose_a_module_offers_what_it_defines_not_what_it_imported(
        py: BlockingNode, erl: ErlNode, tmp_path: Path) -> None:
    module = _load(tmp_path / "handlers.py", (
        "from subprocess import getoutput\n"
        "from os import system as _system\n"
        "import shutil\n"
        "class Helper:\n"
        "    pass\n"
        "def double(x):\n"
        "    return 2 * x\n"
        "def _private(x):\n"
        "    return x\n"))
    py.expose("handlers", module)
    me = A(py.name)
    assert py.rpc(erl.name, "rpc", "call", [me, A("handlers"), A("double"), [21]]) == 42
    for name in ("getoutput", "_private", "Helper", "shutil", "_system"):
        answer = py.rpc(erl.name, "rpc", "call", [me, A("handlers"), A(name), [b"id"]])
        assert _undef_shape(answer) == (A("badrpc"), A("undef"), (A("handlers"), A(name))), answer
    # the same error Erlang itself gives for a function that is not there
    erlang_answer = py.rpc(erl.name, "rpc", "call", [A(erl.name), A("handlers"), A("getoutput"), []])
    assert _undef_shape(erlang_answer)[:2] == (A("badrpc"), A("undef"))


def test_expose_a_module_with_all_offers_its_list(py: BlockingNode, erl: ErlNode, tmp_path: Path) -> None:
    module = _load(tmp_path / "listed.py", (
        "from subprocess import getoutput\n"
        "from operator import neg\n"
        "__all__ = ['neg', 'triple', 'LIMIT']\n"
        "LIMIT = 3\n"
        "def triple(x):\n"
        "    return 3 * x\n"
        "def unlisted(x):\n"
        "    return x\n"))
    py.expose("listed", module)
    me = A(py.name)
    assert py.rpc(erl.name, "rpc", "call", [me, A("listed"), A("triple"), [2]]) == 6
    assert py.rpc(erl.name, "rpc", "call", [me, A("listed"), A("neg"), [5]]) == -5  # listed: re-exported
    for name in ("getoutput", "unlisted", "LIMIT"):
        answer = py.rpc(erl.name, "rpc", "call", [me, A("listed"), A(name), []])
        assert _undef_shape(answer)[1] == A("undef"), answer


def test_expose_an_object_offers_its_own_methods(py: BlockingNode, erl: ErlNode) -> None:
    class Base:
        def inherited(self) -> bytes:
            return b"base"

    class Api(Base):
        shell = subprocess.getoutput  # a function from elsewhere, assigned in the class body

        def __init__(self) -> None:
            self.run = subprocess.run  # an instance attribute that happens to be callable
            self.factor = 10

        def scale(self, x: int) -> int:
            return self.factor * x

        @staticmethod
        def static(x: int) -> int:
            return x + 1

        @classmethod
        def kind(cls) -> bytes:
            return cls.__name__.encode()

        def _hidden(self) -> None:
            raise AssertionError("never exposed")

    py.expose("api", Api())
    me = A(py.name)
    call = lambda f, args: py.rpc(erl.name, "rpc", "call", [me, A("api"), A(f), args])  # noqa: E731
    assert call("scale", [4]) == 40
    assert call("static", [4]) == 5
    assert call("kind", []) == b"Api"
    assert call("inherited", []) == b"base"
    for name in ("shell", "run", "_hidden", "__init__", "__repr__", "__reduce__", "factor"):
        assert _undef_shape(call(name, [b"id"]))[1] == A("undef"), name
    # a class itself: its static and class methods, not the plain ones (they need an instance)
    py.expose("apicls", Api)
    assert py.rpc(erl.name, "rpc", "call", [me, A("apicls"), A("static"), [1]]) == 2
    answer = py.rpc(erl.name, "rpc", "call", [me, A("apicls"), A("scale"), [1]])
    assert _undef_shape(answer)[1] == A("undef")


# ------------------------------------------------------------------ helpers for raw peers

def hostile_peer(port: int, target: str, *, source: str = "127.0.0.1") -> tuple[socket.socket, str]:
    """A connection that does a correct handshake with the cookie (our own sans-IO layer) and
    is then free to send raw bytes."""
    sock, name, _ = hostile_peer_proto(port, target, source=source)
    return sock, name


def hostile_peer_proto(port: int, target: str, *, source: str = "127.0.0.1"
                       ) -> tuple[socket.socket, str, Connection]:
    """``hostile_peer``, with the sans-IO connection to read what the node sends."""
    name = unique("hostile") + "@127.0.0.1"
    proto = Connection(Role.INITIATOR, this_node=name, cookie=COOKIE, creation=1, peer_node=target)
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(proto.start())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        event = proto.next_event()
        out = proto.data_to_send()
        if out:
            sock.sendall(out)
        if event is NEED_DATA:
            proto.receive_data(sock.recv(4096))
        elif isinstance(event, Connected):
            return sock, name, proto
    sock.close()
    raise AssertionError("hostile peer: no handshake within 10 s")


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the other side closes ``sock`` within ``timeout`` (what it sends is skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def the_rest_goes_on(py: BlockingNode, erl: ErlNode, box: Any, caplog: pytest.LogCaptureFixture,
                     logged: str) -> None:
    """After a connection ended on bad input: why is in the log, nothing more reaches ``box``,
    and the node's other connection works."""
    assert logged in caplog.text
    with pytest.raises(Timeout):
        box.receive(0.2)
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)


def legit_calls(py: BlockingNode, erl: ErlNode) -> float:
    """An Erlang node calls into ``py`` and ``py`` into it; returns the seconds both took."""
    started = time.monotonic()
    assert py.rpc(erl.name, "rpc", "call", [A(py.name), A("sec"), A("echo"), [7], 20000],
                  timeout=30) == 7
    assert py.rpc(erl.name, "erlang", "node", timeout=30) == A(erl.name)
    return time.monotonic() - started


# ------------------------------------------------------------------ replies from the wrong node

def _forged_down(sender: str, caller: Pid, ref: Any, form: str) -> bytes:
    """A MONITOR_P_EXIT to ``caller`` under ``ref``, with the exit reason erpc's
    ``execute_call`` gives a call that returned ``forged``: in the pass-through form (read by
    ``next_event``), or behind a normal header, the form the node's batched reading takes to
    its fast reply path, with the reason in the control tuple (21) or as payload (28)."""
    sent_by, reason = Pid(A(sender), 1, 0, 1), (ref, A("return"), A("forged"))
    if form == "pass-through":
        body = b"p" + term_to_binary((21, sent_by, caller, ref, reason))
    elif form == "header":
        body = b"\x83D\x00" + encode_body((21, sent_by, caller, ref, reason))
    else:
        body = b"\x83D\x00" + encode_body((28, sent_by, caller, ref)) + encode_body(reason)
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("form", ["pass-through", "header", "header-28"])
@pytest.mark.parametrize("how", ["blocking", "async"])
def test_a_reply_from_another_node_does_not_end_a_call(how: str, form: str, py: BlockingNode,
                                                       erl: ErlNode) -> None:
    """A call's reply counts only when it comes from the node the call went to: another
    cookie-holding peer that guessed a call's request id (ours are salted, but a peer sees
    some of them) and our caller pid cannot end it with a result of its own. The call
    returns its real result, and the forging connection stays up (the message is dropped)."""
    node = py.node
    assert py.ping(erl.name)
    got: list[Any] = []

    def call() -> None:
        if how == "blocking":
            got.append(py.rpc(erl.name, "timer", "sleep", [600], timeout=10))
        else:
            got.append(asyncio.run_coroutine_threadsafe(
                node.rpc(erl.name, "timer", "sleep", [600], timeout=10), py.loop).result(15))

    caller = threading.Thread(target=call)
    caller.start()
    assert wait_until(lambda: len(node._calls) == 1, 5)
    (pending,) = list(node._calls.values())
    sock, fake = hostile_peer(node.port, py.name)
    with sock:
        assert node._caller_pid is not None
        sock.sendall(_forged_down(fake, node._caller_pid, pending.tag, form))
        caller.join(15)
        assert got == [A("ok")]  # timer:sleep's own result, not the forged one
        assert not closed_by_peer(sock, 0.2)
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)


def test_a_malformed_packet_after_good_ones_in_one_read(py: BlockingNode, erl: ErlNode,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The node decodes the packets of one read in one batch: the messages before a malformed
    packet are all delivered, in order, and only then is the connection closed (a protocol
    error); the node's other connections go on."""
    box = py.mailbox(unique("box"))
    assert box.name is not None
    sock, fake = hostile_peer(py.node.port, py.name)
    sender = Pid(A(fake), 1, 0, 1)
    with sock:
        to_box = (6, sender, A(""), A(box.name))  # REG_SEND behind a normal header
        packets = b"".join(_plain_frame(to_box, (A("hello"), i)) for i in range(5))
        bad = b"\x83D\x00" + encode_body(to_box)[:-3]  # cut short
        sock.sendall(packets + struct.pack(">I", len(bad)) + bad)
        assert [box.receive(5) for _ in range(5)] == [(A("hello"), i) for i in range(5)]
        assert closed_by_peer(sock, 5)
    the_rest_goes_on(py, erl, box, caplog, "malformed")


def test_a_malformed_control_after_good_ones_counts_only_what_was_read(
        py: BlockingNode, erl: ErlNode, caplog: pytest.LogCaptureFixture) -> None:
    """A whole packet whose terms decode but whose control tuple is no control message (a
    REG_SEND of three elements) ends the batch's connection after the good messages before
    it; the node counts in only the messages it read whole, not the rest of the batch."""
    box = py.mailbox(unique("box"))
    assert box.name is not None
    sock, fake = hostile_peer(py.node.port, py.name)
    sender = Pid(A(fake), 1, 0, 1)
    with sock:
        to_box = (6, sender, A(""), A(box.name))
        packets = b"".join(_plain_frame(to_box, (A("hello"), i)) for i in range(4))
        sock.sendall(packets + _plain_frame((6, sender, A("")), A("lost"))
                     + _plain_frame(to_box, A("late")))
        assert [box.receive(5) for _ in range(4)] == [(A("hello"), i) for i in range(4)]
        assert closed_by_peer(sock, 5)
    assert "has 3 elements, not 4" in caplog.text
    with pytest.raises(Timeout):
        box.receive(0.2)  # the packet after the bad one is not delivered
    assert py.stats()["peers"][fake]["messages_in"] == 4
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)


def test_a_failing_fast_handler_that_ended_the_connection_ends_the_batch(
        py: BlockingNode, erl: ErlNode, caplog: pytest.LogCaptureFixture) -> None:
    """The loop checks that the connection is still up after a reply's fast path, whether the
    handler returned or raised: what the read held after it is for a connection that is gone."""
    box = py.mailbox(unique("box"))
    assert box.name is not None
    sock, fake = hostile_peer(py.node.port, py.name)
    sender = Pid(A(fake), 1, 0, 1)
    node = py.node
    table = dict(node._fast_paths)

    def ends_then_fails(peer: Any, control: tuple[Any, ...], payload: Any, owner: bool) -> bool:
        node._peer_down(peer, "ended by the test's handler")
        raise RuntimeError("a handler's bug")

    node._fast_paths[31] = ends_then_fails
    try:
        with sock:
            reply = b"\x83D\x00" + encode_body((31, A("x"), A("y"), 0, A("z")))
            after = (b"\x83D\x00" + encode_body((6, sender, A(""), A(box.name)))
                     + encode_body(A("after")))
            sock.sendall(b"".join(struct.pack(">I", len(p)) + p for p in (reply, after)))
            assert closed_by_peer(sock, 5)
    finally:
        node._fast_paths.clear()
        node._fast_paths.update(table)
    the_rest_goes_on(py, erl, box, caplog, "a handler's bug")


def _plain_frame(control: Any, *payload: Any) -> bytes:
    """A packet behind a normal header without atom cache references (the batch reads it)."""
    body = b"\x83D\x00" + encode_body(control) + b"".join(encode_body(p) for p in payload)
    return struct.pack(">I", len(body)) + body


# The spawn requests of an erpc call into an inline function, and near misses of that form:
# how each builds its (control, payload) from a request id and the spawner's pid, and which
# path answers it on the loop: "fast" (``Services._fast_spawn_request``), "full" (an event,
# ``_on_spawn_request``), or none, a protocol error ("malformed").
_RIGHT = ((A("erpc"), A("execute_call"), 4), [A("monitor")])
_ADD = [A("pyfast"), A("add"), [1, 2]]
_SPAWN_FORMS: dict[str, tuple[Callable[[Any, Pid], tuple[tuple[Any, ...], Any]], str]] = {
    "erpc:call": (lambda ref, me: ((29, ref, me, me, *_RIGHT), [ref, *_ADD]), "fast"),
    "linked": (lambda ref, me: ((29, ref, me, me, _RIGHT[0], [A("link"), A("monitor")]),
                                [ref, *_ADD]), "fast"),
    "failing": (lambda ref, me: ((29, ref, me, me, *_RIGHT), [ref, A("pyfast"), A("add"), [1]]),
                "fast"),
    "awaitable": (lambda ref, me: ((29, ref, me, me, *_RIGHT), [ref, A("pyfast"), A("soon"), [1]]),
                  "fast"),
    "coroutine function": (lambda ref, me: ((29, ref, me, me, *_RIGHT),
                                            [ref, A("pyfast"), A("later"), [1]]), "full"),
    "a plain function": (lambda ref, me: ((29, ref, me, me, *_RIGHT),
                                          [ref, A("pyslow"), A("add"), [1, 2]]), "full"),
    "erpc:execute_call/3": (lambda ref, me: ((29, ref, me, me, (A("erpc"), A("execute_call"), 3),
                                              _RIGHT[1]), _ADD), "full"),
    "module as a binary": (lambda ref, me: ((29, ref, me, me, (b"erpc", A("execute_call"), 4),
                                             _RIGHT[1]), [ref, *_ADD]), "malformed"),
    "arity not the payload's": (lambda ref, me: ((29, ref, me, me, (A("erpc"), A("execute_call"), 3),
                                                  _RIGHT[1]), [ref, *_ADD]), "malformed"),
    "leader an atom": (lambda ref, me: ((29, ref, me, A("gl"), *_RIGHT), [ref, *_ADD]), "malformed"),
    "options not a list": (lambda ref, me: ((29, ref, me, me, _RIGHT[0], A("monitor")), [ref, *_ADD]),
                           "malformed"),
    "mfa a list": (lambda ref, me: ((29, ref, me, me, list(_RIGHT[0]), _RIGHT[1]), [ref, *_ADD]),
                   "malformed"),
}


def _spawn_answers(py: BlockingNode, form: str) -> tuple[dict[int, list[Any]], bool]:
    """What a peer gets for a spawn request of ``form`` and a good one after it, sent in one
    write: each request's answers in order, by request (0, 1; the node's pids and the
    requests' references as placeholders), and whether the node closed the connection. Read
    until both requests are answered or the connection closed, then briefly for any extra."""
    sock, fake, proto = hostile_peer_proto(py.node.port, py.name)
    me = Pid(A(fake), 1, 0, 1)
    refs = [py.node.make_ref(), py.node.make_ref()]
    first = _SPAWN_FORMS[form][0](refs[0], me)
    good = _SPAWN_FORMS["erpc:call"][0](refs[1], me)
    answers: dict[int, list[Any]] = {0: [], 1: []}

    def answered(i: int) -> bool:  # a DOWN, or a spawn reply that refused
        return any(a[0] == "MonitorPExit" or (a[0] == "SpawnReply" and a[4] != "pid")
                   for a in answers[i])

    with sock:
        sock.sendall(_plain_frame(first[0], first[1]) + _plain_frame(good[0], good[1]))
        closed = False
        deadline = time.monotonic() + 15
        while not closed and time.monotonic() < deadline:
            event = proto.next_event()
            if event is not NEED_DATA:
                answer = (type(event).__name__,
                          *(_placeholders(getattr(event, f), refs) for f in event.__slots__))
                # a spawn reply names its request, a DOWN its monitor (the request id); an
                # EXIT only the spawner, and only the first request may link
                answers[answer[1] if answer[0] == "SpawnReply" else
                        answer[3] if answer[0] == "MonitorPExit" else 0].append(answer)
                continue
            done = answered(0) and answered(1)
            sock.settimeout(0.2 if done else max(deadline - time.monotonic(), 0.01))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if done:
                    break
                continue
            closed = not data
            proto.receive_data(data)
    return answers, closed


def _placeholders(value: Any, refs: list[Any]) -> Any:
    """``value`` with the node's pids as "pid", the peer's as "peer" and ``refs`` by index."""
    if isinstance(value, Pid):
        return "peer" if value.node.startswith("hostile") else "pid"
    if isinstance(value, tuple):
        return tuple(_placeholders(v, refs) for v in value)
    return refs.index(value) if value in refs else value


@pytest.mark.parametrize("form", list(_SPAWN_FORMS))
def test_spawn_requests_get_the_same_answers_on_the_inline_fast_path(form: str, py: BlockingNode) -> None:
    """The loop answers an erpc call of an inline function straight from the decoded control
    tuple, before any event is built. Whatever the request (a call that returns, fails or
    hands back an awaitable, a link, and near misses of that form that only the full path
    may judge), the peer gets the same answers with and without that path, the good request
    after it answered too; and only the requests of that form skip the full path."""
    async def later(x: int) -> int:
        return x + 1

    py.expose("pyfast", {"add": lambda a, b: a + b, "later": later, "soon": lambda x: later(x)},
              inline=True)
    py.expose("pyslow", {"add": lambda a, b: a + b})
    node = py.node
    full_path: list[Any] = []
    seen = node._on_spawn_request

    def spy(peer: Any, event: Any) -> None:
        full_path.append(event)
        seen(peer, event)

    node._on_spawn_request = spy  # type: ignore[method-assign]
    try:
        fast = _spawn_answers(py, form)
        took_full = len(full_path)
        table = dict(node._fast_paths)
        del node._fast_paths[29]
        try:
            full = _spawn_answers(py, form)
        finally:
            node._fast_paths.clear()
            node._fast_paths.update(table)
    finally:
        del node._on_spawn_request
    assert fast == full
    answers, closed = fast
    kind = _SPAWN_FORMS[form][1]
    good = [("SpawnReply", 1, "peer", 2, "pid", None),
            ("MonitorPExit", "pid", "peer", 1, (1, A("return"), 3))]
    if kind == "malformed":
        assert closed and answers == {0: [], 1: []}
    else:
        assert not closed and answers[1] == good
        assert answers[0][0] == ("SpawnReply", 0, "peer", 3 if form == "linked" else 2, "pid", None)
    assert took_full == (1 if kind == "full" else 0)
    assert len(full_path) == took_full + (2 if kind != "malformed" else 0)  # without the fast path
    if form == "erpc:call":
        assert answers[0] == [("SpawnReply", 0, "peer", 2, "pid", None),
                              ("MonitorPExit", "pid", "peer", 0, (0, A("return"), 3))]


def test_the_inline_fast_path_refuses_calls_past_max_processes(py: BlockingNode) -> None:
    """At its process limit the node refuses an erpc call of an inline function with
    ``system_limit`` as a full BEAM does, on the fast path too (it leaves the refusal to the
    full path), however quick the function: and takes calls again once there is room."""
    py.expose("pyfast", {"add": lambda a, b: a + b}, inline=True)
    node = py.node
    limit, table = node.max_processes, dict(node._fast_paths)
    tried: list[bool] = []

    def fast_path(*args: Any) -> bool:
        tried.append(table[29](*args))
        return tried[-1]

    node._fast_paths[29] = fast_path
    node.max_processes = len(node._procs) + len(node._unseen)  # full
    try:
        answers, closed = _spawn_answers(py, "erpc:call")
        assert tried == [False, False]  # it saw both and left them to the full path
        node.max_processes = limit
        assert not closed and answers == {i: [("SpawnReply", i, "peer", 0, A("system_limit"), None)]
                                          for i in (0, 1)}
        answers, closed = _spawn_answers(py, "erpc:call")
        assert tried == [False, False, True, True]
        assert not closed and answers[1][-1] == ("MonitorPExit", "pid", "peer", 1, (1, A("return"), 3))
    finally:
        node.max_processes = limit
        node._fast_paths.clear()
        node._fast_paths.update(table)


def test_an_inline_function_runs_on_the_loop_whoever_reads_its_call(py: BlockingNode,
                                                                    erl: ErlNode) -> None:
    """A blocking caller reading its connection hands an inline function's erpc call to the
    loop (where inline functions run): the fast path takes only calls the loop read."""
    loop_thread = py._thread  # the thread BlockingNode runs its loop on
    py.expose("pywhere", {"on_loop": lambda: threading.current_thread() is loop_thread},
              inline=True)
    me = A(py.name)
    answers = [py.rpc(erl.name, "bb_test", "erpc_py", [me, A("pywhere"), A("on_loop"), []])
               for _ in range(30)]
    assert answers == [(A("ok"), True)] * 30
    assert py.node._peers[A(erl.name)].leads > 0  # a blocking caller read the connection


def _answer_rpcs(sock: socket.socket, proto: Connection, count: int, before: bytes,
                 ready: Callable[[], bool]) -> list[Any]:
    """As the node rpcs went to: read ``count`` spawn requests, wait until ``ready()`` (a
    blocking caller reads the connection itself), then send ``before`` and the calls' answers
    (``done``), in the order they came, in one write. The requests read."""
    requests: list[Any] = []
    deadline = time.monotonic() + 10
    while len(requests) < count and time.monotonic() < deadline:
        event = proto.next_event()
        if event is NEED_DATA:
            proto.receive_data(sock.recv(65536))
        elif isinstance(event, SpawnRequest):
            requests.append(event)
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(requests) == count and ready(), "no requests, or the caller did not read"
    answers = b""
    for request in requests:
        req, caller = request.req_id, request.from_pid
        worker = Pid(A(proto.this_node), 9, 0, 1)
        answers += (_plain_frame((31, req, caller, 0, worker))
                    + _plain_frame((28, worker, caller, req), (req, A("return"), A("done"))))
    sock.sendall(before + answers)
    return requests


@pytest.fixture
def patient_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's watchdog gives a granted blocking caller 1 s, not 2 ms, to start reading
    (``_OWNER_IDLE``): on a loaded machine its thread may wake later than that, and the loop
    then reads again, which is right for the node but leaves a test that needs the caller
    reading (``_reading_caller``) waiting for it."""
    monkeypatch.setattr(_threads, "_OWNER_IDLE", 1.0)


def _reading_caller(py: BlockingNode, fake: str) -> Callable[[], bool]:
    """Whether this thread now reads the connection to ``fake`` itself; it waits until the node
    knows that connection (else an rpc there takes the loop's path)."""
    me = threading.get_ident()
    assert wait_until(lambda: A(fake) in py.node._peers, 5)

    def reading() -> bool:
        peer = py.node._peers.get(A(fake))
        return peer is not None and peer.owner == me and peer.active

    return reading


@pytest.mark.usefixtures("patient_watchdog")
@pytest.mark.parametrize("reader", ["loop", "caller"])
def test_messages_in_each_plain_form_reach_their_mailbox_in_order(
        py: BlockingNode, erl: ErlNode, caplog: pytest.LogCaptureFixture, reader: str) -> None:
    """SEND, SEND_SENDER and REG_SEND behind a normal header (the form the node's fast path
    delivers) reach the mailbox in order, read by the loop or by a blocking caller waiting for
    its rpc on that connection; the same forms with a field of the wrong type end the
    connection as a protocol error, and the node goes on."""
    box = py.mailbox(unique("box"))
    assert box.name is not None
    sock, fake, proto = hostile_peer_proto(py.node.port, py.name)
    sender = Pid(A(fake), 1, 0, 1)
    forms = [((2, A(""), box.pid), 1), ((22, sender, box.pid), 2),
             ((6, sender, A(""), A(box.name)), 3), ((22, sender, box.pid), 4)]
    messages = b"".join(_plain_frame(c, p) for c, p in forms)
    node = py.node
    delivered: list[tuple[Any, bool]] = []
    deliver = node._fast_deliver

    def spy(target: Any, message: Any, owner: bool) -> bool:
        delivered.append((message, owner))
        return deliver(target, message, owner)

    node._fast_deliver = spy  # type: ignore[method-assign]
    try:
        with sock:
            if reader == "loop":
                sock.sendall(messages)
            else:
                answering = threading.Thread(target=_answer_rpcs, args=(
                    sock, proto, 1, messages, _reading_caller(py, fake)))
                answering.start()
                assert py.rpc(fake, "m", "f", [], timeout=10) == A("done")
                answering.join(10)
            assert [box.receive(5) for _ in forms] == [1, 2, 3, 4]
            sock.sendall(_plain_frame((22, sender, 5), A("bad")))  # a "pid" that is an int
            assert closed_by_peer(sock, 5)
    finally:
        del node._fast_deliver
    # each on its fast path, and on the caller's thread when the caller read them
    assert delivered == [(m, reader == "caller") for m in (1, 2, 3, 4)]
    the_rest_goes_on(py, erl, box, caplog, "malformed control message 22")


@pytest.mark.usefixtures("patient_watchdog")
def test_a_protocol_error_read_by_a_blocking_caller_ends_the_connection(
        py: BlockingNode, erl: ErlNode, caplog: pytest.LogCaptureFixture) -> None:
    """A blocking caller reading its connection applies what came before a malformed
    message, and the connection closes at it: its rpc fails as for a lost connection."""
    box = py.mailbox(unique("box"))
    assert box.name is not None
    sock, fake, proto = hostile_peer_proto(py.node.port, py.name)
    sender = Pid(A(fake), 1, 0, 1)
    to_box = (6, sender, A(""), A(box.name))
    before = (_plain_frame(to_box, 1) + _plain_frame((6, sender, A("")), 2)
              + _plain_frame(to_box, 3))
    with sock:
        answering = threading.Thread(target=_answer_rpcs, args=(
            sock, proto, 1, before, _reading_caller(py, fake)))
        answering.start()
        with pytest.raises(NoConnection):
            py.rpc(fake, "m", "f", [], timeout=10)
        answering.join(10)
        assert closed_by_peer(sock, 5)
    assert box.receive(5) == 1
    with pytest.raises(Timeout):
        box.receive(0.2)
    assert "has 3 elements, not 4" in caplog.text
    assert py.stats()["peers"][fake]["messages_in"] == 1
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)


class _Interrupt(BaseException):
    """What is no Exception (as KeyboardInterrupt), for a test to raise inside the node."""


@pytest.mark.usefixtures("patient_watchdog")
@pytest.mark.parametrize("failure", [RuntimeError, _Interrupt], ids=["exception", "interrupt"])
def test_a_failure_applying_one_message_loses_nothing_after_it(
        py: BlockingNode, erl: ErlNode, caplog: pytest.LogCaptureFixture, failure: type) -> None:
    """A blocking caller that fails to apply one message it read (a bug) logs it, as the loop
    does, and applies the rest of the read: later messages and its own rpc's answer. One
    interrupted there (a BaseException, as Ctrl-C) hands the rest to the loop, in order."""
    box = py.mailbox(unique("box"))
    sock, fake, proto = hostile_peer_proto(py.node.port, py.name)
    node = py.node
    applies = node._owner_applies

    def failing(peer: Any, event: Any, taken: Any) -> bool:
        if getattr(event, "message", None) == A("boom"):
            raise failure("a bug applying one message")
        return applies(peer, event, taken)

    node._owner_applies = failing  # type: ignore[method-assign]
    try:
        with sock:
            # SEND_TT (a trace token) takes the full path, then the usual SEND_SENDERs
            before = (_plain_frame((12, A(""), box.pid, A("token")), A("boom"))
                      + b"".join(_plain_frame((22, Pid(A(fake), 1, 0, 1), box.pid), i)
                                 for i in (1, 2)))
            answering = threading.Thread(target=_answer_rpcs, args=(
                sock, proto, 1, before, _reading_caller(py, fake)))
            answering.start()
            if failure is _Interrupt:
                with pytest.raises(_Interrupt):
                    py.rpc(fake, "m", "f", [], timeout=10)
            else:
                assert py.rpc(fake, "m", "f", [], timeout=10) == A("done")
                assert "a bug applying one message" in caplog.text
            answering.join(10)
            assert [box.receive(5), box.receive(5)] == [1, 2]
    finally:
        del node._owner_applies
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)


@pytest.mark.usefixtures("patient_watchdog")
def test_a_blocking_caller_leaves_async_calls_replies_to_the_loop(py: BlockingNode) -> None:
    """A blocking caller reading the connection applies only blocking callers' replies: an
    async rpc's (its future is the loop's) ends on the loop thread, both answered in one read."""
    sock, fake, proto = hostile_peer_proto(py.node.port, py.name)
    node, loop = py._ensure()
    ended: list[tuple[bool, int]] = []
    end_call = node._end_call

    def spy(ids: Any, call: Any, ok: bool, value: Any) -> None:
        ended.append((call.threaded, threading.get_ident()))
        end_call(ids, call, ok, value)

    node._end_call = spy  # type: ignore[method-assign]
    try:
        with sock:
            answering = threading.Thread(target=_answer_rpcs, args=(
                sock, proto, 2, b"", _reading_caller(py, fake)))
            answering.start()
            pending = asyncio.run_coroutine_threadsafe(node.rpc(fake, "m", "async", [], timeout=10), loop)
            assert wait_until(lambda: len(node._calls) == 1, 5)  # the async request is out
            assert py.rpc(fake, "m", "blocking", [], timeout=10) == A("done")
            assert pending.result(10) == A("done")
            answering.join(10)
    finally:
        del node._end_call
    assert sorted(threaded for threaded, _ in ended) == [False, True]
    assert [ident for threaded, ident in ended if not threaded] == [py._thread.ident]


@pytest.mark.parametrize("control", [(2, A(""), A("notapid")), (6, Pid(A("x@y"), 1, 0, 1), A(""), b"name"),
                                     (6, 7, A(""), A("name")), (22, Pid(A("x@y"), 1, 0, 1), b"pid")],
                         ids=["send-to", "reg-name", "reg-from", "sender-to"])
def test_a_plain_message_with_a_wrong_field_is_a_protocol_error(
        py: BlockingNode, erl: ErlNode, caplog: pytest.LogCaptureFixture, control: Any) -> None:
    sock, _ = hostile_peer(py.node.port, py.name)
    with sock:
        sock.sendall(_plain_frame(control, A("x")))
        assert closed_by_peer(sock, 5)
    assert "malformed control message" in caplog.text
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)


# ------------------------------------------------------------------ fragments never finished

def test_unfinished_fragments_close_only_that_connection(epmd_port: int, erl: ErlNode,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with BlockingNode(unique("py") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                      max_fragmented_bytes=8 << 20) as py:
        py.expose("sec", {"echo": lambda x: x})
        legit_calls(py, erl)
        sock, fake = hostile_peer(py.node.port, py.name)
        with sock:
            assert wait_until(lambda: fake in py.nodes(), 5)
            proto = py.node._peers[A(fake)].proto
            chunk = bytes(1 << 20)
            sent = 0
            with contextlib.suppress(OSError):  # the node resets the connection mid-send
                for sequence in range(1, 64):  # 63 MiB offered, never finished
                    frame = b"\x83E" + struct.pack(">QQ", sequence, 3) + b"\x00" + chunk
                    sock.sendall(struct.pack(">I", len(frame)) + frame)
                    sent += 1
            assert closed_by_peer(sock, 10)
        assert sent < 63  # refused past 8 MiB (what socket buffers took meanwhile aside)
        assert wait_until(lambda: fake not in py.nodes(), 5)
        assert "over max_fragmented_bytes" in caplog.text
        assert proto._partial_bytes == 0 and not proto._partials  # the memory is released
        legit_calls(py, erl)  # the other connection went on


def test_defaults_let_big_messages_from_real_erlang_through(py: BlockingNode, erl: ErlNode) -> None:
    """Big messages from real Erlang arrive fragmented and decode into many objects: neither
    the fragment bounds nor the decode limits refuse them."""
    data = py.rpc(erl.name, "bb_test", "big", [100_000_000], timeout=60)
    assert len(data) == 100_000_000
    assert py.rpc(erl.name, "lists", "seq", [1, 1_000_000], timeout=60)[-1] == 1_000_000


# ------------------------------------------------------------------ decoding bounded by work

def _nils(count: int) -> bytes:
    """The body of a list of ``count`` empty lists: one byte each on the wire."""
    return b"l" + struct.pack(">I", count) + b"j" * count + b"j"


def zip_bomb_packet(sender: str) -> bytes:
    """A pass-through REG_SEND whose ~15 KB compressed payload inflates to 16M ``[]``."""
    control = term_to_binary((6, Pid(A(sender), 1, 0, 1), A(""), A("nobody")))
    inner = _nils(16_000_000)
    payload = b"\x83P" + struct.pack(">I", len(inner)) + zlib.compress(inner, 9)
    body = b"p" + control + payload
    return struct.pack(">I", len(body)) + body


def long_list_packet(sender: str) -> bytes:
    """A 'D' REG_SEND whose plain payload is a list of 11M ``[]`` (11 MB on the wire)."""
    control = term_to_binary((6, Pid(A(sender), 1, 0, 1), A(""), A("nobody")))[1:]
    body = b"\x83D\x00" + control + _nils(11_000_000)
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("packet", [zip_bomb_packet, long_list_packet], ids=["zlib", "plain"])
def test_decoding_bomb_closes_only_that_connection(
        packet: Callable[[str], bytes], epmd_port: int, erl: ErlNode, tmp_path: Path,
        record_property: Callable[[str, Any], None]) -> None:
    target = TargetNode(epmd_port, tmp_path / "target.log")
    try:
        with BlockingNode(unique("driver") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as driver:
            def call_in() -> Any:
                return driver.rpc(erl.name, "rpc", "call",
                                  [A(target.name), A("target"), A("echo"), [3], 20000], timeout=30)

            assert call_in() == 3
            sock, fake = hostile_peer(target.port, target.name)
            with sock:
                data = packet(fake)
                assert target.command("reset") == "RESET"
                base = int(target.command("rss").split()[1])
                started = time.monotonic()
                sock.sendall(data)
                assert call_in() == 3  # a real node's call made meanwhile
                took = time.monotonic() - started
                assert closed_by_peer(sock, 10)
            peak = int(target.command("rss").split()[2])
            assert fake not in target.command("nodes").split()
        grown = (peak - base) / 1024
        assert grown < 128, f"the node grew by {grown:.0f} MB"
        assert "max_terms" in target.log.read_text()
        record_property("bomb_peak_growth_mb", f"{grown:.0f}")
        print(f"\n{len(data)}-byte bomb: peak RSS +{grown:.0f} MB, call in meanwhile {took:.3f} s")
    finally:
        target.stop()


# ------------------------------------------------------------------ unauthenticated connections

TARGET = Path(__file__).with_name("target_node.py")


class TargetNode:
    """A Python node in its own process (``target_node.py``), stopped by its pid."""

    def __init__(self, epmd_port: int, log: Path, *, nofile: int | None = None,
                 **node_options: Any) -> None:
        options = {"name": unique("target") + "@127.0.0.1", "cookie": COOKIE,
                   "epmd_port": epmd_port, "nofile": nofile, "node_options": node_options}
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, str(TARGET), json.dumps(options)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True)
        line = self._line(30).split()
        if not line or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"target node did not start: {line}")
        self.name, self.port = line[1], int(line[2])

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"target node silent for {timeout} s")
        return self.proc.stdout.readline().strip()

    def command(self, text: str, timeout: float = 40) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._line(timeout)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Flood:
    """Holds ``count`` connections from ``source`` open against ``port``, sending nothing, and
    opens a new one for each the server closes (until ``stop()``)."""

    def __init__(self, port: int, count: int, source: str) -> None:
        self.port, self.count, self.source = port, count, source
        self.selector = selectors.DefaultSelector()
        self.stopping = threading.Event()
        self.opened = self.closed_by_server = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((self.source, 0))
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", self.port))
        self.selector.register(sock, selectors.EVENT_READ)
        self.opened += 1

    def _run(self) -> None:
        try:
            for _ in range(self.count):
                self._open()
            while not self.stopping.is_set():
                for key, _ in self.selector.select(0.1):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self.selector.unregister(sock)
                        sock.close()
                        self.closed_by_server += 1
                        self._open()
        finally:
            for key in list(self.selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self.selector.close()

    def __enter__(self) -> Flood:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))


def test_half_open_flood_leaves_room_for_real_nodes(
        epmd_port: int, fresh_erl: ErlNode, record_property: Callable[[str, Any], None],
        tmp_path: Path) -> None:
    _raise_nofile()
    target = TargetNode(epmd_port, tmp_path / "target.log", nofile=1024)
    try:
        with Flood(target.port, 1200, "127.0.0.2") as flood:
            assert wait_until(lambda: flood.opened >= 1200, 10)
            time.sleep(1.0)  # the node has seen them all
            fds = target.fds()
            # the node calls out (a new connection, a new file descriptor) ...
            out = target.command(f"call {fresh_erl.name} erlang node").split()
            # ... and a real Erlang node from another address calls in
            with BlockingNode(unique("driver") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as driver:
                assert driver.rpc(fresh_erl.name, "erlang", "node") == A(fresh_erl.name)
                started = time.monotonic()
                answer = driver.rpc(fresh_erl.name, "rpc", "call",
                                    [A(target.name), A("target"), A("echo"), [5], 30000], timeout=40)
                took_in = time.monotonic() - started
        assert out[:2] == ["CALL", "ok"], out
        assert answer == 5
        assert fds < 200, fds  # the flood holds at most the handshake caps' worth
        assert flood.closed_by_server > 0
        assert "max_handshakes_per_address=8" in target.log.read_text()  # logged, throttled
        record_property("flood_call_out_s", out[2])
        record_property("flood_call_in_s", f"{took_in:.3f}")
        print(f"\nhalf-open flood of {flood.opened} connections: node holds {fds} fds; "
              f"call out {out[2]} s, call in {took_in:.3f} s")
    finally:
        target.stop()


def test_stalled_handshake_closed_after_the_deadline(epmd_port: int, erl: ErlNode) -> None:
    with BlockingNode(unique("py") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                      handshake_timeout=0.5) as py:
        py.expose("sec", {"echo": lambda x: x})
        with socket.create_connection(("127.0.0.1", py.node.port), timeout=5) as silent, \
                socket.create_connection(("127.0.0.1", py.node.port), timeout=5) as half:
            half.sendall(b"\x00\x20N\x00\x00")  # a third of a name message, then nothing
            started = time.monotonic()
            legit_calls(py, erl)  # a real node is not held up meanwhile
            assert closed_by_peer(silent, 5) and closed_by_peer(half, 5)
            assert 0.4 < time.monotonic() - started < 4


def test_outgoing_handshake_has_a_deadline(epmd_port: int) -> None:
    """A "node" registered in EPMD that accepts and never answers: the caller gets
    NoConnection after handshake_timeout, not after its own (longer) timeout."""
    fake = unique("mute")
    with socket.socket() as listener, \
            BlockingNode(unique("py") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                         handshake_timeout=0.5) as py:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(("127.0.0.1", epmd_port), timeout=5) as registration:
            registration.sendall(epmd_messages.alive2_request(fake, listener.getsockname()[1]))
            assert epmd_messages.parse_alive2_reply(registration.recv(16)) is not None
            started = time.monotonic()
            with pytest.raises(NoConnection, match="handshake_timeout"):
                py.rpc(f"{fake}@127.0.0.1", "erlang", "node", [], timeout=20)
            assert time.monotonic() - started < 4


def test_oversized_handshake_packet_closed_at_once(py: BlockingNode, erl: ErlNode) -> None:
    py.expose("sec", {"echo": lambda x: x})
    with socket.create_connection(("127.0.0.1", py.node.port), timeout=5) as sock:
        sock.sendall(b"\xff\xffN" + bytes(100))  # claims a 64 KiB handshake message
        assert closed_by_peer(sock, 3)
    legit_calls(py, erl)


def test_handshake_caps_total_and_per_address(epmd_port: int, erl: ErlNode) -> None:
    with BlockingNode(unique("py") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                      max_handshakes=4, max_handshakes_per_address=2) as py:
        py.expose("sec", {"echo": lambda x: x})
        port = py.node.port

        def connect(source: str) -> socket.socket:
            sock = socket.socket()
            sock.bind((source, 0))
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            return sock

        def refused(source: str) -> bool:
            try:
                sock = connect(source)
            except ConnectionResetError:  # reset before connect() had even returned
                return True
            with sock:
                return closed_by_peer(sock, 3)

        held = [connect("127.0.0.2"), connect("127.0.0.2")]
        try:
            assert refused("127.0.0.2")  # over the per-address cap
            held += [connect("127.0.0.3"), connect("127.0.0.3")]
            assert wait_until(lambda: len(py.node._handshaking) == 4, 3)
            assert refused("127.0.0.4")  # over the total cap
        finally:
            for sock in held:
                sock.close()
        assert wait_until(lambda: not py.node._handshaking, 3)
        legit_calls(py, erl)  # room again once they are gone


# ------------------------------------------------------------------ EPMD replies

class Babbler:
    """Something at an "EPMD" port that answers every request with ``head`` and then an
    endless stream of ``filler`` (until ``stop()``)."""

    def __init__(self, head: bytes, filler: bytes) -> None:
        self.head, self.filler = head, filler * 4096
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.recv(1024)
                conn.sendall(self.head)
                deadline = time.monotonic() + 10
                while not self.stopping.is_set() and time.monotonic() < deadline:
                    conn.sendall(self.filler)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(15)
        self.listener.close()


def test_epmd_replies_are_bounded(py: BlockingNode, erl: ErlNode) -> None:
    babbler = Babbler(b"\x00\x00\x11\x11", b"name x at port 1\n")
    try:
        started = time.monotonic()
        with pytest.raises(EpmdUnavailable, match="more than"):
            epmd_names(port=babbler.port, timeout=10)
        assert time.monotonic() - started < 5
    finally:
        babbler.stop()
    # a PORT2 reply is taken as soon as it is whole, whatever follows it
    name = b"n" * 10
    head = struct.pack(">BBHBBHHH", 119, 0, 4242, 77, 0, 6, 5, len(name)) + name + b"\x00\x00"
    babbler = Babbler(head, b"\x00")
    try:
        started = time.monotonic()
        info = asyncio.run(_epmd_client.lookup("127.0.0.1", babbler.port, "n", 10))
        assert info is not None and info.port == 4242
        assert time.monotonic() - started < 5
    finally:
        babbler.stop()
    assert py.names()  # the real EPMD still answers
    py.expose("sec", {"echo": lambda x: x})
    legit_calls(py, erl)


def test_a_stranger_using_a_nodes_name_does_not_cancel_our_connect(py: BlockingNode,
                                                                    epmd_port: int) -> None:
    """While we connect to Z (whose name sorts after ours, so its own simultaneous attempt
    would win), a stranger without the cookie calls itself Z: our attempt goes on."""
    z_alive = "zzz_" + unique("slow")
    z_name = f"{z_alive}@127.0.0.1"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(10)
    stranger_sent = threading.Event()

    def slow_node() -> None:  # a real handshake with the cookie, after the stranger's try
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            proto = Connection(Role.ACCEPTOR, this_node=z_name, cookie=COOKIE, creation=3)
            while True:
                event = proto.next_event()
                if event is NEED_DATA:
                    proto.receive_data(conn.recv(4096))
                elif type(event).__name__ == "NameReceived":
                    stranger_sent.wait(10)
                    time.sleep(0.3)  # the stranger's handshake is over by now
                    conn.sendall(proto.accept_name("ok"))
                elif isinstance(event, Connected):
                    conn.sendall(proto.data_to_send())
                    time.sleep(1)
                    return

    server = threading.Thread(target=slow_node, daemon=True)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", epmd_port), timeout=5) as registration:
            registration.sendall(epmd_messages.alive2_request(z_alive, listener.getsockname()[1]))
            assert epmd_messages.parse_alive2_reply(registration.recv(16)) is not None
            result: list[BaseException | None] = []
            caller = threading.Thread(target=lambda: result.append(_try(lambda: py.connect(z_name, 10))))
            caller.start()
            time.sleep(0.3)  # our attempt is under way
            stranger = Connection(Role.INITIATOR, this_node=z_name, cookie="wrong", creation=1,
                                  peer_node=py.name)
            with socket.create_connection(("127.0.0.1", py.node.port), timeout=5) as sock:
                sock.sendall(stranger.start())
                statuses = []
                while stranger.state is not State.AWAIT_ACK:  # status, challenge, our reply
                    event = stranger.next_event()
                    if event is NEED_DATA and stranger.state is not State.AWAIT_ACK:
                        stranger.receive_data(sock.recv(4096))
                    elif isinstance(event, StatusReceived):
                        statuses.append(event.status)
                sock.sendall(stranger.data_to_send())
                assert statuses == ["ok_simultaneous"]
                assert closed_by_peer(sock, 5)  # the wrong cookie ends it
            stranger_sent.set()
            caller.join(15)
            assert result == [None], result
            assert z_name in py.nodes()
    finally:
        stranger_sent.set()
        server.join(10)
        listener.close()


def _try(action: Callable[[], object]) -> BaseException | None:
    try:
        action()
    except BaseException as error:
        return error
    return None
