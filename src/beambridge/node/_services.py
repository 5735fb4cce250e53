"""Erlang calling Python: exposed functions (for rpc:call, erpc:call and erl_call), the
processes spawned to run them, and the node's built-in services (rex, net_kernel, a group
leader) that Erlang peers expect to find."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import traceback
import types
from collections.abc import Awaitable, Callable, Iterable
from collections.abc import Mapping as AbcMapping
from pathlib import Path
from typing import Any

from .._errors import EncodeError, UsageError
from .._errors import RemoteError as RemoteError_
from ..protocol import (
    AliasSend,
    ControlMessage,
    Flag,
    LocalProtocolError,
    Send,
    SpawnReply,
    SpawnRequest,
)
from ..protocol._control import (
    exit_unchecked,
    monitor_exit_unchecked,
    spawn_reply_unchecked,
    spawn_request_unchecked,
)
from ..term import Atom, ImproperList, Pid, Reference, encode_body
from ._connections import _consume_exception
from ._core import Exposed, NodeCore
from ._errors import MailboxClosed, NoConnection
from ._mailbox import KILL, NORMAL, Mailbox, check_name
from ._names import (
    _A,
    BADRPC,
    CALL,
    ERPC,
    ERROR,
    EXECUTE_CALL,
    EXECUTE_CAST,
    EXIT_TAG,
    GEN_CALL,
    LINK,
    MONITOR,
    OK,
    RETURN,
    REX,
    SYSTEM_LIMIT,
    UNDEF,
)
from ._peer import _OWNER_IDLE, _Peer

log = logging.getLogger("beambridge.node")
#: a worker thread's own answer to an erpc call: (outcome, commit) -> whether it went out
_Answer = Callable[[tuple[str, Any, Any], Callable[[], None]], bool]
io_log = logging.getLogger("beambridge.node.io")


#: Frames from these files are beambridge's or the thread pool's, not the user's: left out of stacks.
_INTERNAL_PATHS = (str(Path(__file__).resolve().parent), str(Path(asyncio.__file__).resolve().parent),
                   str(Path(contextlib.__file__).resolve().parent / "concurrent"))


class _PythonError:
    """A Python exception turned into Erlang's ``error`` reason and stack."""

    @staticmethod
    def reason(error: BaseException) -> Any:
        return (Atom("python"), Atom(type(error).__name__[:255]), str(error).encode("utf-8", "replace"))

    @staticmethod
    def bare_reason(error: BaseException) -> Any:
        """``reason`` without the message (for an exception whose ``str`` may itself fail)."""
        return (Atom("python"), Atom(type(error).__name__[:255]), b"")

    @staticmethod
    def stack(error: BaseException) -> list[Any]:
        frames = [f for f in traceback.extract_tb(error.__traceback__)
                  if not f.filename.startswith(_INTERNAL_PATHS)]
        stack = []
        for frame in reversed(frames[-20:]):
            location = [(Atom("file"), [ord(c) for c in frame.filename[-200:]]),
                        (Atom("line"), frame.lineno or 0)]
            module = Path(frame.filename).stem or "python"
            stack.append((Atom(module[:255]), Atom(frame.name[:255]), 0, location))
        return stack


class _Undefined(Exception):
    pass


class _Unseen:
    """A plain erpc call a reading worker runs before its spawn reply is sent: no process yet
    (``Services._take_spawn_request``). ``seen``: made a process (``process``, None when nobody
    was left to answer) or answered; ``looked``: the loop's watchdog has seen it once."""

    __slots__ = ("event", "looked", "peer", "pid", "process", "seen")

    def __init__(self, peer: _Peer, event: SpawnRequest, pid: Pid) -> None:
        self.peer, self.event, self.pid = peer, event, pid
        self.seen = self.looked = False
        self.process: Mailbox | None = None


class Services(NodeCore):
    """What Erlang may call here (a part of ``Node``)."""

    # ================================================================ Erlang calling us

    def expose(self, module: str, functions: Any, *, inline: bool = False) -> None:
        """Make Python callables callable from Erlang as ``Module:Function(Args...)``.

        ``functions`` is a mapping name -> callable or an iterable of named callables (exactly
        those), a Python module (its ``__all__`` when it has one, else the public functions it
        defines itself: never what it imported, such as ``subprocess.getoutput``), or an object
        (the public methods defined in its class's own bodies: not instance attributes, not what
        ``object`` or a built-in base class brings; for a class, its static and class methods).
        Coroutine functions run on the node's loop; plain ones run in a worker thread
        (``inline=True`` runs them on the loop: fast, but they must not block). Erlang reaches
        them with ``rpc:call``, ``erpc:call``, ``erl_call``; anything else is ``undef``.
        """
        table: dict[Atom, Exposed] = {}
        if isinstance(functions, AbcMapping):
            items = list(functions.items())
        elif isinstance(functions, types.ModuleType):
            items = _module_functions(functions)
        elif isinstance(functions, Iterable) and not isinstance(functions, (str, bytes, type)):
            items = [(getattr(fn, "__name__", ""), fn) for fn in functions]
        else:
            items = _object_methods(functions)
        for fname, fn in items:
            if not callable(fn):
                raise UsageError(f"{module}:{fname} is not callable")
            table[check_name(fname)] = (fn, inline, inspect.iscoroutinefunction(fn))
        self._exposed.setdefault(check_name(module), {}).update(table)

    async def _invoke(self, module: Atom, function: Atom, args: list[Any]) -> Any:
        entry = self._exposed.get(module, {}).get(function)
        if entry is None or not isinstance(args, list):
            raise _Undefined()
        fn, inline, coroutine = entry
        if coroutine:
            return await fn(*args)
        if inline:
            result = fn(*args)
        else:
            result = await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args))
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _outcome(self, module: Atom, function: Atom, args: Any) -> tuple[str, Any, Any]:
        """Run an exposed function: ``('return', value, None)``, ``('error', reason, stack)``..."""
        try:
            return "return", await self._invoke(module, function, args), None
        except asyncio.CancelledError:
            raise
        except Exception as error:
            return _failure(module, function, args, error)

    def _plain(self, module: Any, function: Any, args: Any) -> Exposed | None:
        """The plain (not coroutine) function a call names and whether it is inline; None for
        anything else (``_outcome`` runs or refuses it)."""
        if not (type(module) is Atom and type(function) is Atom and type(args) is list):
            return None
        entry = self._exposed.get(module, {}).get(function)
        if entry is None or entry[2]:
            return None
        return entry

    def _outcome_now(self, module: Any, function: Any, args: Any
                     ) -> tuple[str, Any, Any] | asyncio.Task[tuple[str, Any, Any]] | None:
        """An inline function's outcome at once, on the loop and without a task: a quick call
        must not pay for one. A task when the function returned an awaitable; None when the
        call is not to an inline plain function (``_outcome`` runs it then)."""
        entry = self._plain(module, function, args)
        if entry is None or not entry[1]:
            return None
        return self._settle(_run_plain(entry[0], module, function, args), module, function, args)

    def _settle(self, outcome: tuple[str, Any, Any], module: Atom, function: Atom, args: list[Any]
                ) -> tuple[str, Any, Any] | asyncio.Task[tuple[str, Any, Any]]:
        """Loop: an outcome whose value is an awaitable becomes a task awaiting it."""
        if outcome[0] != "awaitable":
            return outcome

        async def later(awaitable: Awaitable[Any] = outcome[1]) -> tuple[str, Any, Any]:
            try:
                return "return", await awaitable, None
            except asyncio.CancelledError:
                raise
            except Exception as error:
                return _failure(module, function, args, error)

        return self._spawn_task(later())

    def _in_thread(self, fn: Callable[..., Any], module: Atom, function: Atom, args: list[Any],
                   then: Callable[[tuple[str, Any, Any]], None],
                   answer: _Answer | None = None,
                   wanted: Callable[[], bool] | None = None) -> None:
        """Run a plain function in a worker thread (see ``_thread_job``)."""
        job = self._thread_job(fn, module, function, args, then, answer, wanted)
        try:
            self._workers.submit(job)
        except BaseException:
            with self._jobs_lock:
                self._thread_jobs -= 1
            raise

    def _thread_job(self, fn: Callable[..., Any], module: Atom, function: Atom, args: list[Any],
                    then: Callable[[tuple[str, Any, Any]], None],
                    answer: _Answer | None = None,
                    wanted: Callable[[], bool] | None = None) -> Callable[[], None]:
        """A job that runs a plain function on a thread other than the loop's; ``then`` gets its
        outcome on the loop (``("awaitable", value, None)`` when it returned one: see
        ``_settle``), whatever the function raised. ``answer``: see ``_hand_back``. A job that
        ``wanted`` says is no longer wanted when a thread takes it (its process was killed
        while it queued) does not run; ``then`` gets ``("dropped", None, None)``. Counted in
        ``_thread_jobs`` from now until its outcome is back; dropped if the node closed
        meanwhile."""
        back = self._thread_back(then)

        def job() -> None:
            outcome: tuple[str, Any, Any] = ("dropped", None, None)
            if wanted is None or wanted():
                outcome = _guarded_run(fn, module, function, args)
            self._hand_back(outcome, back, answer)

        with self._jobs_lock:
            self._thread_jobs += 1
        return job

    def _thread_back(self, then: Callable[[tuple[str, Any, Any]], None]
                     ) -> Callable[[tuple[str, Any, Any]], None]:
        """Loop: a thread job's outcome is back (uncounted from ``_thread_jobs``) for ``then``."""
        def back(outcome: tuple[str, Any, Any]) -> None:
            with self._jobs_lock:
                self._thread_jobs -= 1
            if not self._closed:
                then(outcome)
        return back

    def _hand_back(self, outcome: tuple[str, Any, Any], back: Callable[[tuple[str, Any, Any]], None],
                   answer: _Answer | None, *, defer: bool = False) -> None:
        """Worker thread: give a job's outcome to ``back`` on the loop. ``answer``, when given,
        runs first on this thread and may send the reply itself, so the caller does not wait
        for the loop to wake; it calls the ``commit`` it is given once it will, before the
        reply goes out. An answered outcome is queued in ``_handbacks`` at ``commit``, before
        the reply is written: the caller's next request, which the reply may bring at once,
        finds it there (the loop books the queue before it counts processes against
        ``max_processes``), not yet to come. ``defer``: it waits there for the loop's next look
        at the reader (``ThreadDoors._owner_watch``) instead of waking the loop now."""
        loop = self._loop
        assert loop is not None
        queued = False

        def commit() -> None:
            nonlocal queued
            if not queued:
                queued = True
                self._handbacks.append((back, outcome))  # only booking is left

        if answer is not None and outcome[0] != "awaitable" and outcome[0] != "dropped":
            try:
                answer(outcome, commit)
            except Exception:  # the loop's path answers instead
                log.exception("answering a call from its worker thread")
        # queued: booked by the loop, whether the write went out or the connection broke;
        # at its next look at the reader (``defer``: no hurry), or now
        with contextlib.suppress(RuntimeError):  # a closed loop: the node is gone
            if not queued:
                loop.call_soon_threadsafe(back, outcome)
            elif not defer:
                loop.call_soon_threadsafe(self._book_handbacks)

    def _book_handbacks(self) -> None:
        """Loop: book the outcomes worker threads answered themselves (``_hand_back``)."""
        backs = self._handbacks
        while backs:
            back, outcome = backs.popleft()
            try:  # one failing booking must not stop the watchdog that called this
                back(outcome)
            except Exception:
                log.exception("booking a call answered by a worker thread")

    def _answer_from_thread(self, peer: _Peer, process: Mailbox, event: SpawnRequest,
                            outcome: tuple[str, Any, Any], commit: Callable[[], None]) -> bool:
        """Worker thread: send an erpc call's result (its spawner's DOWN) straight to the
        socket, when that monitor is all the process has and it is still running. The monitor
        is taken under ``_exit_lock``, so the loop ending the process later (``_finish``, or a
        kill meanwhile) sends it once or not at all; ``commit`` runs once it is taken."""
        if peer.sock is None or not peer.alive:
            return False
        tag = event.args[0]
        reason = _call_reason(tag, outcome)
        message = monitor_exit_unchecked(process.pid, event.from_pid, event.req_id, reason)
        try:
            data = peer.proto.send(message)
        except (EncodeError, LocalProtocolError):
            return False  # the loop's path turns it into an error reason, or sees it closed
        monitors = process.monitors_in
        with self._exit_lock:
            if (process.closed is not None or process.links or len(monitors) != 1
                    or monitors.pop(event.req_id, None) is None):
                return False
        commit()
        return peer.write_from_thread(data)

    def _on_spawn_request(self, peer: _Peer, event: SpawnRequest) -> None:
        if self._closed:
            peer.send_quiet(SpawnReply(event.req_id, event.from_pid, 0, _A("notsup")))
            return
        args = event.args
        entry = self._erpc_plain(event)
        threaded = entry is not None and not entry[1]
        if self._handbacks:  # calls already answered are not counted against the limit
            self._book_handbacks()
        # calls a reading worker runs unseen count as processes; jobs count too: a killed
        # process's job may still wait in the queue
        if len(self._procs) + len(self._unseen) >= self.max_processes or (
                threaded and self._thread_jobs >= self.max_processes):
            self._refusals.warn("processes", "spawn request from %s refused: %d processes, %d "
                                "jobs for threads (max_processes)", peer.name,
                                len(self._procs) + len(self._unseen), self._thread_jobs)
            peer.send_quiet(SpawnReply(event.req_id, event.from_pid, 0, SYSTEM_LIMIT))
            return
        pid = self._next_pid()
        flags = _spawn_flags(event.options)
        started = None
        if entry is not None and entry[1]:
            early = self._settle(_run_plain(entry[0], args[1], args[2], args[3]),
                                 args[1], args[2], args[3])
            if isinstance(early, tuple):
                # answered before any other event is applied: nobody but the spawner can know
                # the pid yet (its spawn reply is not even written out), so no process is made
                self._answer_unspawned(peer, event.req_id, event.from_pid, pid, flags,
                                       _call_reason(args[0], early), args[0])
                return
            started = early
        self._spawn_started(peer, event, entry, pid, flags, started)

    def _fast_spawn_request(self, peer: _Peer, c: tuple[Any, ...], payload: Any, owner: bool
                            ) -> bool:
        """``{29, ReqId, From, GroupLeader, {erpc, execute_call, 4}, Options}`` naming an inline
        exposed function, on the loop (the usual ``erpc:call`` into Python): checked as the event
        would be, run, and answered before any event is built. Anything else, and a node at
        its process limit, takes the full path (``_on_spawn_request``), which also refuses."""
        if owner or len(c) != 6 or self._closed:
            return False
        req, sender, leader, mfa, options = c[1], c[2], c[3], c[4], c[5]
        if (type(mfa) is not tuple or len(mfa) != 3 or type(payload) is not list
                or len(payload) != 4 or mfa[2] != 4 or type(req) is not Reference
                or type(sender) is not Pid or type(leader) is not Pid or type(options) is not list
                or type(mfa[0]) is not Atom or type(mfa[1]) is not Atom
                or mfa[0] != ERPC or mfa[1] != EXECUTE_CALL):
            return False
        tag, m, f, a = payload
        entry = self._plain(m, f, a)
        if entry is None or not entry[1]:
            return False
        if self._handbacks:
            self._book_handbacks()
        if len(self._procs) + len(self._unseen) >= self.max_processes:
            return False
        pid = self._next_pid()
        flags = _spawn_flags(options)
        early = self._settle(_run_plain(entry[0], m, f, a), m, f, a)
        if isinstance(early, tuple):
            self._answer_unspawned(peer, req, sender, pid, flags, _call_reason(tag, early), tag)
        else:  # an awaitable: a process awaits it
            event = spawn_request_unchecked(req, sender, leader, ERPC, EXECUTE_CALL, payload, options)
            self._spawn_started(peer, event, entry, pid, flags, early)
        return True

    def _spawn_started(self, peer: _Peer, event: SpawnRequest, entry: Exposed | None, pid: Pid,
                       flags: int, started: asyncio.Task[tuple[str, Any, Any]] | None) -> None:
        """A spawn request the node takes on: its spawn reply, and its process, which runs it
        in a worker thread (a plain exposed function) or in a task (awaiting ``started``, an
        inline function's awaitable, or running anything else)."""
        peer.send_quiet(spawn_reply_unchecked(event.req_id, event.from_pid, flags, pid))
        process = self._spawned_process(event, pid, flags)
        if entry is not None and not entry[1]:
            self._in_thread(*self._spawned_call(peer, event, process, entry[0]))
            self._offer_reader(peer)  # the next such call may then skip this hop
            return
        task = self._spawn_task(self._run_spawned(process, event, started))
        self._spawned[pid.id] = task

    def _erpc_plain(self, event: SpawnRequest) -> Exposed | None:
        """The plain exposed function an erpc call (``erpc:execute_call``) names, if it does."""
        args = event.args
        if event.module == ERPC and event.function == EXECUTE_CALL and len(args) == 4:
            return self._plain(args[1], args[2], args[3])
        return None

    def _spawned_process(self, event: SpawnRequest, pid: Pid, flags: int) -> Mailbox:
        """The process a spawn request made, in the table, with its spawner's link and monitor
        (``flags``: ``_spawn_flags``) taken. Any thread: nobody else knows the pid yet."""
        process = Mailbox(self, pid, None, trap_exits=False)
        if flags & 1:
            process.links.add(event.from_pid)
        if flags & 2:
            process.monitors_in[event.req_id] = (event.from_pid, pid)
        self._procs[pid.id] = process
        return process

    def _spawned_call(self, peer: _Peer, event: SpawnRequest, process: Mailbox,
                      fn: Callable[..., Any]) -> tuple[Any, ...]:
        """``_thread_job``'s arguments for an erpc call of the plain function ``fn`` in
        ``process``: a worker thread runs it and answers the spawner itself when it can; the
        loop ends the process after, unless it was killed meanwhile (its outcome is dropped
        then, as a cancelled task's)."""
        args = event.args
        then, answer = self._spawned_ends(peer, event, process)
        return fn, args[1], args[2], args[3], then, answer, lambda: process.closed is None

    def _spawned_ends(self, peer: _Peer, event: SpawnRequest, process: Mailbox
                      ) -> tuple[Callable[[tuple[str, Any, Any]], None], _Answer]:
        """How an erpc call run in a worker thread ends ``process``: ``then`` on the loop,
        and the worker's own ``answer`` before it (see ``_hand_back``)."""
        args = event.args
        tag = args[0]

        def then(outcome: tuple[str, Any, Any]) -> None:
            if process.closed is not None:
                return  # killed meanwhile: an awaitable it returned is not awaited
            try:
                settled = self._settle(outcome, args[1], args[2], args[3])
                if isinstance(settled, tuple):
                    self._finish(process, _call_reason(tag, settled), tag)
                else:
                    self._spawned[process.pid.id] = self._spawn_task(
                        self._run_spawned(process, event, settled))
            except Exception:
                log.exception("ending the call of %s:%s", args[1], args[2])
                process.close(KILL)

        def answer(outcome: tuple[str, Any, Any], commit: Callable[[], None]) -> bool:
            return self._answer_from_thread(peer, process, event, outcome, commit)

        return then, answer

    def _take_spawn_request(self, peer: _Peer, event: SpawnRequest) -> Callable[[], None] | None:
        """A worker thread reading ``peer`` itself (``ThreadDoors._read_for_worker``) read this
        spawn request, nothing handed to the loop before it still pending: when it is an erpc
        call of a plain function with the spawner's monitor and no link (what ``erpc:call``
        sends), return the job that runs it here, so a quick function pays no hop between
        threads. None: the loop handles it (refusals too: a full node answers there).

        The call starts unseen (``_Unseen``): nobody but the spawner can know its pid before the
        spawn reply, and ``erpc:call`` waits only for the DOWN, so a quick function is answered
        with both in one write and never becomes a process. One still running at the watchdog's
        second look at it (2-4 ms) is made a process then (``_see_unseen``): visible, killable,
        its spawn reply sent. So a hand-written ``spawn_request`` of ``erpc:execute_call`` with
        only ``[monitor]`` may get its ``spawn_reply`` that late, or with the DOWN."""
        if self._closed or not peer.alive or _spawn_flags(event.options) != 2:
            return None
        entry = self._erpc_plain(event)
        if entry is None or entry[1]:
            return None
        fn, args = entry[0], event.args
        # a full node: the loop refuses it (answered calls not booked yet still count here: the
        # loop books them before it decides)
        with self._exit_lock:
            if (len(self._procs) + len(self._unseen) >= self.max_processes
                    or self._thread_jobs >= self.max_processes):
                return None
            unseen = _Unseen(peer, event, self._next_pid())
            self._unseen[unseen.pid.id] = unseen
            with self._jobs_lock:
                self._thread_jobs += 1

        def job() -> None:
            outcome = _guarded_run(fn, args[1], args[2], args[3])
            if outcome[0] != "awaitable" and self._answer_unseen(unseen, outcome):
                return
            with self._exit_lock:  # seen meanwhile, or an awaitable the loop must await
                process = self._see(unseen)
            if process is None:  # nobody is left to answer
                with self._jobs_lock:
                    self._thread_jobs -= 1
                return
            then, answer = self._spawned_ends(peer, event, process)
            self._hand_back(outcome, self._thread_back(then), answer, defer=True)

        return job

    def _answer_unseen(self, unseen: _Unseen, outcome: tuple[str, Any, Any]) -> bool:
        """Worker thread: answer a call still unseen, its spawn reply and DOWN in one write;
        False when the loop made it a process meanwhile, or the answer failed to encode in an
        unforeseen way (the process path answers then, and ends it killed if it fails too).
        Encoded before the call is claimed (a packet not sent changes no connection state),
        so that its place under ``max_processes`` is free before the write: the caller's next
        request, which the reply may bring at once, may be read by the loop, which counts."""
        peer, event, pid = unseen.peer, unseen.event, unseen.pid
        tag = event.args[0]
        packets: list[bytes] | None = None
        try:
            packets = self._answer_packets(peer, event.req_id, event.from_pid, pid, 2,
                                           _call_reason(tag, outcome), tag)
        except LocalProtocolError:
            pass  # the connection is closing: the spawner hears of it from its node
        except Exception:
            log.exception("answering %s:%s from its worker thread", event.args[1], event.args[2])
            return False
        with self._exit_lock:
            if unseen.seen:
                return False
            unseen.seen = True
            del self._unseen[pid.id]
        with self._jobs_lock:
            self._thread_jobs -= 1
        if packets is not None and not self._closed and peer.alive:
            peer.write_from_thread(*packets)  # False: closing, as above
        return True

    def _see(self, unseen: _Unseen) -> Mailbox | None:
        """Make an unseen call a process and send its spawn reply (``_exit_lock`` held, any
        thread: what the worker writes after it then follows the reply); its process, or None
        when nobody is left to answer. Once only: later calls return the same."""
        if unseen.seen:
            return unseen.process
        unseen.seen = True
        peer, event, pid = unseen.peer, unseen.event, unseen.pid
        try:  # out of ``_unseen`` only once in ``_procs``: the loop counting places misses none
            if self._closed or not peer.alive:
                return None
            try:
                data = peer.proto.send(spawn_reply_unchecked(event.req_id, event.from_pid, 2, pid))
            except LocalProtocolError:
                return None
            process = self._spawned_process(event, pid, 2)
            if not peer.write_from_thread(data) or self._closed or not peer.alive:
                # no socket, or the node closed or the connection went down meanwhile, maybe
                # after the loop swept the process table: nothing must stay behind
                self._procs.pop(pid.id, None)
                return None
            unseen.process = process
            return process
        finally:
            del self._unseen[pid.id]

    def _see_unseen(self, peer: _Peer, last: bool) -> None:
        """Loop: a look at the unseen calls read from ``peer``: those seen at the last look
        become processes (a function running that long is no quick one), the others are
        marked. ``last``: the watchdog looks no more (reading went back to the loop), so this
        look comes again after ``_OWNER_IDLE`` while marked calls are left and nobody reads."""
        if not self._unseen:
            return
        left = False
        with self._exit_lock:
            for unseen in list(self._unseen.values()):
                if unseen.peer is not peer:
                    continue
                if unseen.looked:
                    self._see(unseen)
                else:
                    unseen.looked = left = True
        if last and left and peer.owner is None and self._loop is not None:
            self._loop.call_later(_OWNER_IDLE, self._see_unseen, peer, True)

    def _answer_unspawned(self, peer: _Peer, req: Reference, spawner: Pid, pid: Pid, flags: int,
                          reason: Any, tag: Any) -> None:
        """Loop: an inline call answered before it needed a process, in one write."""
        try:
            data = self._answer_packets(peer, req, spawner, pid, flags, reason, tag)
        except LocalProtocolError:
            return  # the connection is closing: the spawner hears of it from its node
        if peer.alive:
            peer.write(b"".join(data), len(data))

    def _answer_packets(self, peer: _Peer, req: Reference, spawner: Pid, pid: Pid, flags: int,
                        reason: Any, tag: Any) -> list[bytes]:
        """The whole answer to a call (spawn request ``req`` from ``spawner``) that ended before
        it became a process, encoded (any thread): its spawn reply, then its exit signals (the
        spawner's link and monitor are all it has), as ``_process_ended`` sends them. A reason
        with no Erlang form fails here, before anything is sent, and becomes an error reason."""
        signals: list[ControlMessage] = [spawn_reply_unchecked(req, spawner, flags, pid)]
        if flags & 1:
            signals.append(exit_unchecked(pid, spawner, reason))
        if flags & 2:
            signals.append(monitor_exit_unchecked(pid, spawner, req, reason))
        try:
            return [peer.proto.send(signal) for signal in signals]
        except EncodeError as error:
            return self._answer_packets(peer, req, spawner, pid, flags, _unencodable(tag, error),
                                        None)

    async def _run_spawned(self, process: Mailbox, event: SpawnRequest,
                           started: asyncio.Task[tuple[str, Any, Any]] | None = None) -> None:
        m, f, args = event.module, event.function, event.args
        waiter = self._spawn_task(process.receive(None, lambda _: False))  # wakes when killed
        waiter.add_done_callback(_consume_exception)
        try:
            if m == ERPC and f == EXECUTE_CALL and len(args) == 4:
                work = started or self._spawn_task(self._outcome(args[1], args[2], args[3]))
                done, _ = await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if work not in done:
                    work.cancel()
                    return
                self._finish(process, _call_reason(args[0], work.result()), args[0])
            else:
                if m == ERPC and f == EXECUTE_CAST and len(args) == 3:
                    m, f, args = args[0], args[1], args[2]
                work = self._spawn_task(self._outcome(m, f, args))
                done, _ = await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if work not in done:
                    work.cancel()
                    return
                kind, value, stack = work.result()
                if kind == "return":
                    self._finish(process, NORMAL, None)
                else:
                    self._finish(process, (value, stack) if kind == "error" else value, None)
        finally:
            waiter.cancel()
            self._spawned.pop(process.pid.id, None)
            if process.closed is None:
                process.close(KILL)

    def _finish(self, process: Mailbox, reason: Any, tag: Any) -> None:
        """End a spawned process; a result with no Erlang form becomes an error reason."""
        try:
            encode_body(reason, mapping=self.mapping)
        except EncodeError as error:
            reason = _unencodable(tag, error)
        process.close(reason)


def _spawn_flags(options: list[Any]) -> int:
    """A spawn request's options as the spawn reply's flags: 1 link, 2 monitor."""
    flags = 0
    for option in options:
        if option == LINK:
            flags |= 1
        elif option == MONITOR:
            flags |= 2
    return flags


def _module_functions(module: types.ModuleType) -> list[tuple[str, Callable[..., Any]]]:
    """What a module offers: its ``__all__`` (the author's list, re-exports included), else the
    public functions whose ``__module__`` is this one; classes are left out either way (calling
    one from Erlang would build an object Erlang cannot receive)."""
    names = getattr(module, "__all__", None)
    if names is not None:
        found = [(str(n), getattr(module, str(n), None)) for n in names]
        return [(n, fn) for n, fn in found if callable(fn) and not isinstance(fn, type)]
    return [(n, fn) for n, fn in vars(module).items()
            if not n.startswith("_") and callable(fn) and not isinstance(fn, type)
            and getattr(fn, "__module__", None) == module.__name__]


def _object_methods(obj: object) -> list[tuple[str, Callable[..., Any]]]:
    """The public methods an object's classes define in their own bodies (``__qualname__``
    under the class's): an attribute set on the instance, or a function assigned into a class
    body from elsewhere, is not one; nor is anything of ``object`` or a built-in base. For a
    class, only its static and class methods (a plain method would need an instance)."""
    is_class = isinstance(obj, type)
    cls: type = obj if isinstance(obj, type) else type(obj)
    seen: set[str] = set()
    found: list[tuple[str, Callable[..., Any]]] = []
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)  # a subclass's attribute of that name hides the base's
            plain = isinstance(value, types.FunctionType)
            if is_class and plain:
                continue
            func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if not isinstance(func, types.FunctionType):
                continue
            if not func.__qualname__.startswith(klass.__qualname__ + "."):
                continue
            # bound from the class: an instance attribute of the same name does not replace it
            found.append((name, value.__get__(None if is_class else obj, cls)))
    return found


class _Service(Mailbox):
    """A built-in process that handles its messages as they arrive (no queue)."""

    def __init__(self, node: NodeCore, pid: Pid, name: Atom | None = None) -> None:
        super().__init__(node, pid, name, trap_exits=True)
        self._host = node  # the node's internals, typed: a service is part of the node

    def deliver(self, message: Any) -> None:
        try:
            self.handle(message)
        except (EncodeError, NoConnection, MailboxClosed) as error:
            log.debug("%s could not answer %r: %s", self.name, message, error)

    def handle(self, message: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reply(self, to: Any, message: Any) -> None:
        """Send without waiting: a reply goes back on the connection the request came on."""
        node = self._host
        if isinstance(to, ImproperList) and to.items and to.items[0] == _A("alias") and isinstance(
                to.tail, Reference):
            node._signal_now(to.tail.node, AliasSend(self.pid, to.tail, message))
            return
        if isinstance(to, Pid):
            node._signal_now(to.node, Send(to, message, self.pid))

    def gen_reply(self, sender: Any, reply: Any) -> None:
        """Answer a ``'$gen_call'`` ``From`` (``{Pid, Tag}``; Tag may be an alias)."""
        if type(sender) is not tuple or len(sender) != 2:
            return
        pid, tag = sender
        node = self._host
        if (isinstance(tag, ImproperList) and tag.items and tag.items[0] == _A("alias")
                and isinstance(tag.tail, Reference)):
            peer = node._peers.get(pid.node) if isinstance(pid, Pid) else None
            if peer is not None and peer.flags & Flag.ALIAS:
                node._signal_now(pid.node, AliasSend(self.pid, tag.tail, (tag, reply)))
                return
        if isinstance(pid, Pid):
            node._signal_now(pid.node, Send(pid, (tag, reply), self.pid))


class _Rex(_Service):
    """The ``rex`` server: old-style rpc (``{call,M,F,A,GL}``, as erl_call and Jinterface send,
    plain or through ``gen_server:call``) and ``features_request``."""

    def handle(self, message: Any) -> None:
        if type(message) is not tuple:
            return
        if len(message) == 2 and isinstance(message[0], Pid):
            sender, request = message
            if request == _A("features_request"):
                self.reply(sender, (_A("features_reply"), self._host.node_atom, [ERPC]))
            elif _is_call(request):
                self._call(request, lambda r: self.reply(sender, (REX, r)))
        elif len(message) == 3 and message[0] == GEN_CALL and _is_call(message[2]):
            sender = message[1]
            self._call(message[2], lambda r: self.gen_reply(sender, r))

    def _call(self, request: tuple[Any, ...], reply: Callable[[Any], None]) -> None:
        _, m, f, a = request[:4]
        host = self._host
        if self._full(m, f, a, reply):  # as BEAM's rex, which spawns a process per call
            return
        entry = host._plain(m, f, a)
        if entry is not None and not entry[1]:  # in a worker thread, answered from the loop
            host._in_thread(entry[0], m, f, a,
                            lambda outcome: self._answer_soon(host._settle(outcome, m, f, a), reply))
            return
        self._answer_soon(host._outcome_now(m, f, a) or host._outcome(m, f, a), reply)

    def _full(self, m: Atom, f: Atom, a: Any, reply: Callable[[Any], None]) -> bool:
        """Refuse a call that would wait beyond ``max_processes`` unanswered ones (awaited on
        the loop, or jobs for the threads)."""
        host = self._host
        if host._handbacks:  # calls already answered are not counted against the limit
            host._book_handbacks()
        if host._rex_busy < host.max_processes and host._thread_jobs < host.max_processes:
            return False
        host._refusals.warn("rex", "rpc:call of %s:%s refused: %d awaited, %d jobs for threads "
                            "(max_processes)", m, f, host._rex_busy, host._thread_jobs)
        arity = len(a) if type(a) is list else 0
        reply((BADRPC, (EXIT_TAG, (SYSTEM_LIMIT, [(m, f, arity, [])]))))
        return True

    def _answer_soon(self, outcome: tuple[str, Any, Any] | Awaitable[tuple[str, Any, Any]],
                     reply: Callable[[Any], None]) -> None:
        if isinstance(outcome, tuple):  # answered: no task
            self._answer(outcome, reply)
        else:
            host = self._host
            host._rex_busy += 1
            task = host._spawn_task(self._answer_later(outcome, reply))
            task.add_done_callback(self._unbusy)  # also when cancelled before it ever ran

    def _unbusy(self, _: asyncio.Task[None]) -> None:
        self._host._rex_busy -= 1

    async def _answer_later(self, outcome: Awaitable[tuple[str, Any, Any]],
                            reply: Callable[[Any], None]) -> None:
        self._answer(await outcome, reply)

    @staticmethod
    def _answer(outcome: tuple[str, Any, Any], reply: Callable[[Any], None]) -> None:
        kind, value, stack = outcome
        if kind == "return" or kind == "throw":
            result = value
        elif kind == "exit":
            result = (BADRPC, (EXIT_TAG, value))
        else:
            result = (BADRPC, (EXIT_TAG, (value, stack)))
        try:
            reply(result)
        except EncodeError as error:
            reply((BADRPC, (EXIT_TAG, ((Atom("python"), Atom("EncodeError"), str(error).encode()), []))))


def _is_call(request: Any) -> bool:
    return (type(request) is tuple and len(request) == 5 and request[0] in (CALL, _A("block_call"))
            and isinstance(request[1], Atom) and isinstance(request[2], Atom))


class _Sink(_Service):
    """The sender of messages sent with no mailbox; what comes back to it is dropped."""

    def handle(self, message: Any) -> None:
        log.debug("message to the node's anonymous sender dropped: %.200r", message)


class _NetKernel(_Service):
    """Enough of ``net_kernel`` to answer ``net_adm:ping`` (``{is_auth, Node}`` -> ``yes``)."""

    def handle(self, message: Any) -> None:
        if type(message) is tuple and len(message) == 3 and message[0] == GEN_CALL:
            request = message[2]
            if type(request) is tuple and len(request) == 2 and request[0] == _A("is_auth"):
                self.gen_reply(message[1], _A("yes"))


class _GroupLeader(_Service):
    """The group leader of what we spawn remotely: io requests are logged and answered ``ok``."""

    def handle(self, message: Any) -> None:
        if type(message) is not tuple or len(message) != 4 or message[0] != _A("io_request"):
            return
        _, sender, reply_as, request = message
        text = _io_text(request)
        if text is not None:
            io_log.info("%s", text.rstrip("\n"))
            answer: Any = OK
        else:
            answer = (ERROR, _A("enotsup"))
        self.reply(sender, (_A("io_reply"), reply_as, answer))


def _io_text(request: Any) -> str | None:
    if type(request) is not tuple or not request or request[0] != _A("put_chars"):
        return None
    chars = request[-1]
    if isinstance(chars, bytes):
        return chars.decode("utf-8", "replace")
    if isinstance(chars, list):
        try:
            return "".join(chr(c) if isinstance(c, int) else (c.decode("utf-8", "replace")
                           if isinstance(c, bytes) else "") for c in chars)
        except (TypeError, ValueError):
            return None
    if isinstance(chars, str):
        return chars
    return "<formatted output>"


def _failure(module: Any, function: Any, args: Any, error: Exception) -> tuple[str, Any, Any]:
    """An exposed function's exception as Erlang sees it: ``undef`` for a function that is not
    there, an Erlang-style error raised on purpose in its own form, else Python's as an error."""
    if isinstance(error, _Undefined):
        arity = args if isinstance(args, list) else 0
        return "error", UNDEF, [(module, function, arity, [])]
    if isinstance(error, RemoteError_):
        return error.kind, error.reason, error.stack or []
    arity = len(args) if isinstance(args, list) else 0
    stack = [*_PythonError.stack(error), (module, function, arity, [])]
    return "error", _PythonError.reason(error), stack


def _run_plain(fn: Callable[..., Any], module: Atom, function: Atom, args: list[Any]
               ) -> tuple[str, Any, Any]:
    """Call a plain exposed function (on any thread): its outcome, ``("awaitable", value,
    None)`` when it returned something the loop must await."""
    try:
        value = fn(*args)
    except Exception as error:
        try:
            return _failure(module, function, args, error)
        except Exception:  # an exception that cannot print itself (its __str__ raised)
            return "error", _PythonError.bare_reason(error), [(module, function, len(args), [])]
    if type(value) in _PLAIN_RESULTS:  # the usual answers: no isawaitable (three calls)
        return "return", value, None
    return ("awaitable" if inspect.isawaitable(value) else "return"), value, None


def _guarded_run(fn: Callable[..., Any], module: Atom, function: Atom, args: list[Any]
                 ) -> tuple[str, Any, Any]:
    """``_run_plain`` on a worker thread, where SystemExit & co (or an exception that cannot
    print) also become the call's error."""
    try:
        return _run_plain(fn, module, function, args)
    except BaseException as error:
        return "error", _PythonError.bare_reason(error), [(module, function, len(args), [])]


#: result types that are never awaitable (``inspect.isawaitable`` is not asked about them)
_PLAIN_RESULTS = frozenset({Atom, int, float, bytes, str, tuple, list, dict, type(None), bool, Pid,
                            Reference})


def _unencodable(tag: Any, error: EncodeError) -> Any:
    """The exit reason that replaces one with no Erlang form."""
    python_reason = (Atom("python"), Atom("EncodeError"), str(error).encode())
    return (tag, ERROR, python_reason, []) if tag is not None else python_reason


def _call_reason(tag: Any, outcome: tuple[str, Any, Any]) -> Any:
    """The exit reason that carries an erpc call's outcome back (``erpc:execute_call``'s form)."""
    kind, value, stack = outcome
    if kind == "return":
        return (tag, RETURN, value)
    if kind == "error":
        return (tag, ERROR, value, stack)
    return (tag, Atom(kind), value)
