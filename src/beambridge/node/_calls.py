"""Python calling Erlang: rpcs in flight by request id (erpc's spawn request, or rex for
peers without it), their timeouts and abandonment; gen_call, gen_cast and ping."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .._errors import RemoteError as RemoteError_
from .._errors import Timeout
from ..protocol import Exit2, Flag, HandshakeFailed
from ..term import Atom, Pid, Reference
from ._core import FastReply, NodeCore
from ._errors import ErlangError, ErlangExit, ErlangThrow, NoConnection
from ._mailbox import DOWN, KILL, check_name, settler
from ._names import (
    _A,
    BADRPC,
    CALL,
    ERPC,
    ERROR,
    EXECUTE_CALL,
    EXIT_A,
    EXIT_TAG,
    GEN_CALL,
    GEN_CAST,
    MONITOR,
    NET_KERNEL,
    NOCONNECTION,
    RETURN,
    REX,
    THROW,
    full_node_name,
)
from ._peer import _SPAWN, _Peer
from ._stats import PeerStats

log = logging.getLogger("beambridge.node")

#: the async calls' timeouts fire in ticks of this many seconds, up to one tick late: one timer
#: per tick that has calls due instead of a timer made and cancelled per call (1.7 us on uvloop)
_TICK = 0.005
_INF = math.inf


@dataclass(eq=False, slots=True)
class _Call:
    """An rpc in flight: the reply routes to ``done`` by request id."""

    node: Atom
    tag: Reference
    done: Callable[[bool, Any], None]
    label: tuple[Atom, Atom, int]  # module, function, arity: formatted only for a timeout
    # (``_start_call`` passes every field by position: the order matters)
    spawned: Pid | None = None
    due: int = 0  # the tick its timeout falls in (``Calls._due``); 0: none
    timeout: float = 0.0
    threaded: bool = False  # a blocking caller's: its reply may be applied off the loop thread
    stats: PeerStats | None = None  # the peer's, counted when the call ends
    started: float = 0.0


class Calls(NodeCore):
    """rpcs to Erlang (a part of ``Node``)."""

    # ================================================================ calling Erlang

    def _name_atom(self, name: Any) -> Atom:
        """A module or function name as an Atom (cached, like node names)."""
        if not isinstance(name, str):
            return check_name(name)  # refuses it with the usual error
        atom = self._name_atoms.get(name)
        if atom is None:
            atom = check_name(name)
            if len(self._name_atoms) < 4096:
                self._name_atoms[name] = atom
        return atom

    def _node_atom(self, node: Any) -> Atom:
        """A node name as an Atom (cached: calls name the same few nodes again and again)."""
        atom = self._node_atoms.get(node)
        if atom is None:
            if isinstance(node, Atom) and "@" in node:
                return node
            atom = Atom(full_node_name(str(node)))
            if len(self._node_atoms) < 4096:
                self._node_atoms[node] = atom
        return atom

    async def rpc(self, node: str, module: str, function: str, args: Iterable[Any] = (),
                  timeout: float | None = 30.0) -> Any:
        """``erpc:call(Node, Module, Function, Args)``: the result, or a typed error.

        ``ErlangError`` (reason and stack), ``ErlangThrow``, ``ErlangExit``; ``NoConnection``
        when the node is unreachable or goes down during the call; ``Timeout`` after ``timeout``
        seconds (the remote process is then killed, as erpc does).
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        req = self.begin_rpc(node, module, function, args, timeout, settler(future))
        try:
            return await future
        except asyncio.CancelledError:
            if req is not None:
                self._abandon_call(req)
            raise

    def begin_rpc(self, node: str, module: str, function: str, args: Iterable[Any],
                  timeout: float | None, done: Callable[[bool, Any], None]) -> Reference | None:
        """Start an rpc; ``done(ok, value_or_exception)`` is called once, on the loop.

        The callback form lets ``BlockingNode`` wait on a thread future without a task per call.
        Returns the request id when the request went out at once (connected peer).
        """
        try:
            self._check_running()
            target = self._node_atom(node)
            names = self._name_atoms  # cached names without a call (``_name_atom`` fills it)
            m = names.get(module) if type(module) is str else None
            if m is None:
                m = self._name_atom(module)
            f = names.get(function) if type(function) is str else None
            if f is None:
                f = self._name_atom(function)
            a = list(args)
        except Exception as error:
            done(False, error)
            return None
        peer = self._peers.get(target)
        if peer is not None and peer.alive and peer.flags & _SPAWN:
            try:
                return self._start_call(peer, m, f, a, timeout, done)
            except Exception as error:
                done(False, error)
                return None
        self._spawn_task(self._rpc_slow(target, m, f, a, timeout, done))
        return None

    async def _rpc_slow(self, target: Atom, m: Atom, f: Atom, a: list[Any], timeout: float | None,
                        done: Callable[[bool, Any], None]) -> None:
        """Connect first (or use rex for peers without SPAWN), then call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            peer = await self._peer(target, timeout)
            if not peer.flags & Flag.SPAWN:
                done(True, await self._rex_call(target, m, f, a, deadline))
                return
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            self._start_call(peer, m, f, a, remaining, done)
        except asyncio.CancelledError:
            done(False, NoConnection(target, "node closed"))
            raise
        except Exception as error:
            done(False, error)

    def _start_call(self, peer: _Peer, m: Atom, f: Atom, a: list[Any], timeout: float | None,
                    done: Callable[[bool, Any], None]) -> Reference:
        if timeout is not None and not -_INF < timeout < _INF:
            if timeout != timeout:  # NaN: refused before anything is sent or kept
                raise ValueError("an rpc timeout is a number of seconds or None, not NaN")
            timeout = None if timeout > 0 else 0.0
        # one reference is both the request id and erpc's result tag: it is unique all the same,
        # and only the spawned process's exit reason carries it back
        req = self.make_ref()
        assert self._group_leader is not None and self._caller_pid is not None
        if not peer.alive:
            raise NoConnection(peer.name, "connection closed")
        peer.write(peer.proto.spawn_request(req, self._caller_pid, self._group_leader.pid, ERPC,
                                            EXECUTE_CALL, [req, m, f, a], [MONITOR]))
        call = _Call(peer.name, req, done, (m, f, len(a)), None, 0, 0.0, False, peer.stats, time.monotonic())
        self._calls[req.ids] = call
        if timeout is not None:
            self._arm(call, req, timeout)
        return req

    # ---------------------------------------------------------------- timeouts, by tick
    #
    # ``_due``: the calls whose timeout falls in each tick, an emptied tick deleted at once;
    # ``_due_ticks``: a heap of ticks (``_due_queued`` says which are in it, so that a tick is
    # pushed once however often its bucket empties and fills), rebuilt from ``_due`` when the
    # emptied ones outnumber the rest (long timeouts would keep them for as long); one timer,
    # ``_due_timer``, for the first tick with calls, ``_due_timer_tick``.

    def _arm(self, call: _Call, req: Reference, timeout: float) -> None:
        """Make ``call`` time out after ``timeout`` s (at the end of the tick it falls in)."""
        assert self._loop is not None
        tick = max(math.ceil((self._loop.time() + timeout) / _TICK), 1)
        due = self._due.get(tick)
        if due is None:
            due = self._due[tick] = {}
            if tick not in self._due_queued:
                self._due_queued.add(tick)
                heapq.heappush(self._due_ticks, tick)
            if self._due_timer is None or tick < self._due_timer_tick:
                self._schedule_ticks()
        due[call] = req
        call.due, call.timeout = tick, timeout

    def _disarm(self, call: _Call) -> None:
        due = self._due.get(call.due)
        if due is not None:
            due.pop(call, None)
            if not due:
                del self._due[call.due]  # its tick then wakes nobody (``_schedule_ticks``)
                if len(self._due_ticks) > 2 * len(self._due) + 64:
                    self._due_ticks = sorted(self._due)  # a sorted list is a heap
                    self._due_queued = set(self._due_ticks)
        call.due = 0

    def _schedule_ticks(self) -> None:
        """One timer, at the first tick that still has calls due."""
        ticks, due, queued = self._due_ticks, self._due, self._due_queued
        while ticks and ticks[0] not in due:
            queued.discard(heapq.heappop(ticks))
        handle = self._due_timer
        if not ticks:
            if handle is not None:
                handle.cancel()
                self._due_timer = None
            return
        first = ticks[0]
        if handle is not None:
            if self._due_timer_tick <= first:
                return  # it fires first, and looks again then
            handle.cancel()
        assert self._loop is not None
        self._due_timer = self._loop.call_at(first * _TICK, self._on_tick, first)
        self._due_timer_tick = first

    def _on_tick(self, fired: int) -> None:
        """Time out every call whose tick has come (``fired``'s at least: a loop whose clock
        counts milliseconds may call a little before the tick's float time)."""
        self._due_timer = None
        assert self._loop is not None
        now = self._loop.time()
        ticks, due, queued = self._due_ticks, self._due, self._due_queued
        try:
            while ticks and (ticks[0] <= fired or ticks[0] * _TICK <= now):
                tick = heapq.heappop(ticks)
                queued.discard(tick)
                for call, req in due.pop(tick, {}).items():
                    call.due = 0
                    try:  # one failing timeout must not keep the others from theirs
                        self._call_timeout(req, call.timeout)
                    except Exception:
                        log.exception("timing out an rpc")
        finally:
            self._schedule_ticks()

    # ---------------------------------------------------------------- replies
    #
    # ``_calls`` is keyed by the request id's words (``Reference.ids``: a tuple hashes at C
    # speed, a Reference in Python): ours are unique and salted, and a reply counts only when
    # it came from the node the call went to (``_call_of``), so that another peer cannot end a
    # call it never saw.

    def _finish_call(self, req: Reference, ok: bool, value: Any) -> None:
        call = self._calls.get(req.ids)
        if call is not None:
            self._end_call(req.ids, call, ok, value)

    def _end_call(self, ids: tuple[int, ...], call: _Call, ok: bool, value: Any) -> None:
        if self._calls.pop(ids, None) is not call:
            return  # another thread ended it first (a blocking caller's call ends off the loop)
        if call.due:
            self._disarm(call)
        if call.stats is not None:
            call.stats.call_ended(time.monotonic() - call.started, ok)
        call.done(ok, value)

    def _call_of(self, req: Any, peer: _Peer | None) -> _Call | None:
        """The call a reply from ``peer`` (None: this node) names, if it is that peer's."""
        call = self._calls.get(req.ids) if type(req) is Reference else None
        if call is None or peer is None or call.node is peer.name or call.node == peer.name:
            return call
        return None

    def _fast_replies_table(self) -> dict[int, FastReply]:
        """The fast paths of the replies to our rpcs, by control message tag, for reading
        decoded ``(control, payload)`` pairs: each applies its message and returns True, or
        returns False, and the message then takes the full path (event, ``_dispatch``) with the
        same outcome. Two messages a call, skipping an event object and a dispatch. ``owner``:
        a blocking caller reads (``ThreadDoors``), and applies only blocking callers' replies."""
        return {31: self._fast_spawn_reply, 21: self._fast_down, 28: self._fast_down_payload}

    def _fast_spawn_reply(self, peer: _Peer, c: tuple[Any, ...], payload: Any, owner: bool) -> bool:
        """``{31, ReqId, To, Flags, Result}``: the remote process of one of our calls started."""
        if len(c) != 5:
            return False
        req, to, result = c[1], c[2], c[4]
        if (type(req) is not Reference or type(to) is not Pid or type(result) is not Pid
                or type(c[3]) is not int):
            return False
        call = self._calls.get(req.ids)
        if (call is None or (call.node is not peer.name and call.node != peer.name)
                or (owner and not call.threaded) or not self._to_caller(to)):
            return False
        call.spawned = result
        return True

    def _fast_down(self, peer: _Peer, c: tuple[Any, ...], payload: Any, owner: bool) -> bool:
        """``{21, FromProc, To, Ref, Reason}``: the remote process of one of our calls ended."""
        return len(c) == 5 and self._fast_call_down(peer, c, c[4], owner)

    def _fast_down_payload(self, peer: _Peer, c: tuple[Any, ...], payload: Any, owner: bool) -> bool:
        """``{28, FromProc, To, Ref}`` with the reason as payload (OTP 24+)."""
        return len(c) == 4 and self._fast_call_down(peer, c, payload, owner)

    def _fast_call_down(self, peer: _Peer, c: tuple[Any, ...], reason: Any, owner: bool) -> bool:
        proc, to, ref = c[1], c[2], c[3]
        if (type(ref) is not Reference or type(to) is not Pid
                or (type(proc) is not Pid and type(proc) is not Atom)):
            return False
        ids = ref.ids
        call = self._calls.get(ids)
        if (call is None or (call.node is not peer.name and call.node != peer.name)
                or (owner and not call.threaded) or not self._to_caller(to)):
            return False
        if type(reason) is tuple and len(reason) == 3 and reason[1] == RETURN:
            tag, got = call.tag, reason[0]  # erpc's {Tag, return, Result}: ``_erpc_result``'s first case
            if (type(got) is Reference and got.ids == tag.ids and got.creation == tag.creation
                    and got.node == tag.node):
                self._end_call(ids, call, True, reason[2])
                return True
        self._down_reply(ids, call, reason)
        return True

    def _to_caller(self, to: Pid) -> bool:
        """``to == self._caller_pid`` without ``Pid.__eq__``'s extra call."""
        me = self._caller_pid
        return (me is not None and to.id == me.id and to.serial == me.serial
                and to.creation == me.creation and to.node == me.node)

    def _call_spawned(self, req: Any, result: Any, peer: _Peer | None = None) -> None:
        call = self._call_of(req, peer)
        if call is not None:
            self._spawned_reply(req.ids, call, result)

    def _spawned_reply(self, ids: tuple[int, ...], call: _Call, result: Any) -> None:
        if isinstance(result, Pid):
            call.spawned = result
        else:
            self._end_call(ids, call, False, ErlangError((ERPC, result)))

    def _call_down(self, req: Any, reason: Any, peer: _Peer | None = None) -> None:
        call = self._call_of(req, peer)
        if call is not None:
            self._down_reply(req.ids, call, reason)

    def _down_reply(self, ids: tuple[int, ...], call: _Call, reason: Any) -> None:
        try:
            value = _erpc_result(call.node, call.tag, reason)
        except Exception as error:
            self._end_call(ids, call, False, error)
        else:
            self._end_call(ids, call, True, value)

    def _call_timeout(self, req: Reference, timeout: float) -> None:
        call = self._abandon_call(req)
        if call is None:
            return  # answered first (a blocking caller's call may end on its own thread)
        if call.stats is not None:
            call.stats.call_ended(time.monotonic() - call.started, False, timed_out=True)
        m, f, arity = call.label
        call.done(False, Timeout(f"rpc {m}:{f}/{arity} on {call.node} timed out after {timeout} s"))

    def _abandon_call(self, req: Reference) -> _Call | None:
        """Forget a call and kill its remote process, as erpc does on timeout; the call, if
        it was still in flight."""
        call = self._calls.pop(req.ids, None)
        if call is None:
            return None
        if call.due:
            self._disarm(call)
        if call.spawned is not None and self._caller_pid is not None:
            self._signal_now(call.node, Exit2(self._caller_pid, call.spawned, KILL))
        return call

    async def _rex_call(self, node: Atom, m: Atom, f: Atom, a: list[Any], deadline: float | None) -> Any:
        """Old-style rpc through ``rex`` for peers without SPAWN (erl_interface nodes)."""
        assert self._group_leader is not None
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        result = await self.gen_call((REX, node), (CALL, m, f, a, self._group_leader.pid), remaining)
        if type(result) is tuple and len(result) == 2 and result[0] == BADRPC:
            reason = result[1]
            if reason == _A("nodedown"):
                raise NoConnection(node, "nodedown")
            if type(reason) is tuple and len(reason) == 2 and reason[0] == EXIT_TAG:
                inner = reason[1]
                if type(inner) is tuple and len(inner) == 2 and isinstance(inner[1], list):
                    raise ErlangError(inner[0], inner[1])
                raise ErlangExit(inner)
            raise ErlangError((BADRPC, reason))
        return result

    async def gen_call(self, dest: Any, request: Any, timeout: float | None = 5.0) -> Any:
        """``gen_server:call(Dest, Request)``: the reply; ``ErlangExit`` if the server is gone."""
        self._check_running()
        deadline = None if timeout is None else time.monotonic() + timeout
        mailbox = self._new_mailbox(None, trap_exits=True)
        try:
            node, target = self._resolve(dest)
            if node != self.node_atom:  # connecting is part of the call: within its timeout
                await self._peer(node, timeout)
            ref = await self._monitor(mailbox, target if isinstance(target, Pid) else (target, node))
            await self.send(dest, (GEN_CALL, (mailbox.pid, ref), request), sender=mailbox)
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)

            def is_answer(msg: Any) -> bool:
                return type(msg) is tuple and (
                    (len(msg) == 2 and msg[0] == ref) or (len(msg) == 5 and msg[0] == DOWN and msg[1] == ref))

            try:
                reply = await mailbox.receive(left, is_answer)
            except Timeout:
                raise Timeout(f"gen_call to {dest!r} timed out after {timeout} s") from None
            if len(reply) == 2:
                return reply[1]
            if reply[4] == NOCONNECTION:
                raise NoConnection(node, f"while calling {dest!r}")
            raise ErlangExit(reply[4])
        finally:
            mailbox.close()

    async def gen_cast(self, dest: Any, request: Any) -> None:
        """``gen_server:cast(Dest, Request)``."""
        await self.send(dest, (GEN_CAST, request))

    async def ping(self, node: str, timeout: float = 5.0) -> bool:
        """``net_adm:ping``: True (pong) when the node answers, False (pang) otherwise."""
        try:
            target = Atom(full_node_name(node))
            answer = await self.gen_call((NET_KERNEL, target), (_A("is_auth"), self.node_atom), timeout)
        except (NoConnection, Timeout, HandshakeFailed, RemoteError_):
            return False
        return bool(answer == _A("yes"))


def _erpc_result(node: Atom, tag: Reference, reason: Any) -> Any:
    """Map the exit reason of ``erpc:execute_call`` (seen in a DOWN message) to a result."""
    if type(reason) is tuple and len(reason) >= 3 and reason[0] == tag:
        kind = reason[1]
        if kind == RETURN:
            return reason[2]
        if kind == THROW:
            raise ErlangThrow(reason[2])
        if kind == EXIT_A:
            raise ErlangExit(reason[2])
        if kind == ERROR:
            raise ErlangError(reason[2], reason[3] if len(reason) == 4 else None)
    if reason == NOCONNECTION:
        raise NoConnection(node, "connection lost during the call")
    raise ErlangExit((_A("signal"), reason))


