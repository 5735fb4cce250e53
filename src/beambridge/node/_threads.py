"""The doors other threads use into the loop's state: a blocking caller writes its request
straight to the socket and, while it waits, may read the connection itself (the "owner"),
handing reading back to the loop when it is done; this is ``BlockingNode``'s fast path."""

from __future__ import annotations

import contextlib
import logging
import select
import ssl
import threading
import time
from collections.abc import Iterable
from typing import Any

from ..protocol import (
    NEED_DATA,
    LocalProtocolError,
    MonitorPExit,
    RegSend,
    RemoteProtocolError,
    Send,
    SendSender,
    SpawnReply,
    SpawnRequest,
    Tick,
)
from ..term import Reference
from ._calls import _Call
from ._core import NodeCore
from ._errors import NoConnection
from ._mailbox import Mailbox, Slot
from ._names import ERPC, EXECUTE_CALL, MONITOR, addressed
from ._peer import _OWNER_IDLE, _SPAWN, _Peer
from ._wait import recv_within

log = logging.getLogger("beambridge.node")


#: how long an owner waiting for a reply polls the socket before it sleeps in poll(): a reply
#: usually comes within tens of microseconds, and a sleep costs a wake-up (BEAM's schedulers
#: busy-wait before sleeping for the same reason)
_SPIN = 50e-6
#: a worker thread reading a connection for plain erpc calls hands reading back to the loop
#: after this long without one
_READER_IDLE = 0.25
#: ``owner`` of a connection a worker thread is to read (granted, not yet started)
_WORKER = -1


class ThreadDoors(NodeCore):
    """Blocking callers' fast path (a part of ``Node``)."""

    def rpc_from_thread(self, node: str, module: str, function: str, args: Iterable[Any]
                        ) -> tuple[_Peer, Reference, Slot] | None:
        """Start an rpc from a thread other than the loop's, writing the request itself.

        ``None`` when the loop must do it (not connected, no SPAWN, bytes queued before ours).
        Otherwise the reply arrives through the loop into the returned waiter; the caller owns
        the deadline and hands an expired call to ``_call_timeout`` on the loop.
        """
        if self._closed or not self._started:
            return None
        target = self._node_atom(node)
        peer = self._peers.get(target)
        if peer is None or not peer.alive or peer.sock is None or not peer.flags & _SPAWN:
            return None
        m, f, a = self._name_atom(module), self._name_atom(function), list(args)
        assert self._group_leader is not None and self._caller_pid is not None
        # still this connection's reader from the last call: say so before the request goes out
        # (the loop's watchdog must not take reading back while the reply is on its way)
        leading = self._lead(peer, threading.get_ident())
        try:
            req = self.make_ref()  # also erpc's result tag, as in ``Calls._start_call``
            try:
                data = peer.proto.spawn_request(req, self._caller_pid, self._group_leader.pid, ERPC,
                                                EXECUTE_CALL, [req, m, f, a], [MONITOR])
            except LocalProtocolError:
                self._unlead(peer, leading)
                return None  # the connection is closing: the loop's path reports it
            waiter = Slot()
            self._calls[req.ids] = _Call(peer.name, req, waiter.fill, (m, f, len(a)),
                                         threaded=True, stats=peer.stats, started=time.monotonic())
            if not peer.write_from_thread(data):
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._write_for_thread, peer, data, req)
            if not peer.alive and self._calls.pop(req.ids, None) is not None:
                raise NoConnection(peer.name, "connection closed")  # went down before it saw our call
            return peer, req, waiter
        except BaseException:
            self._unlead(peer, leading)
            raise

    @staticmethod
    def _unlead(peer: _Peer, leading: bool) -> None:
        if leading:
            with peer.olock:
                peer.active = False

    # ---------------------------------------------------------------- a caller reads for itself
    #
    # A blocking caller waiting for its reply may become the connection's reader ("owner"): the
    # loop pauses the transport's reading and wakes it, and from then on the caller polls and
    # reads the socket itself, applying rpc replies of blocking callers at once and handing every
    # other event to the loop, in order. That saves two thread wake-ups per call (loop thread, then
    # caller). The owner keeps the role across back-to-back calls; when it leaves, the loop takes
    # reading back unless the owner has already started its next call.

    def wait_from_thread(self, peer: _Peer, waiter: Slot, timeout: float | None) -> bool:
        """Wait (on a non-loop thread) for ``waiter``; False when ``timeout`` passed first."""
        loop = self._loop
        assert loop is not None
        me = threading.get_ident()
        deadline = None if timeout is None else time.monotonic() + timeout
        may_lead = peer.sock is not None
        peer.waiting[me] = waiter
        try:
            while waiter.ok is None:
                if may_lead and self._lead(peer, me):
                    try:
                        outcome = self._read_as_owner(peer, waiter, deadline)
                    finally:
                        with peer.olock:
                            peer.active = False
                    if outcome == "timeout":
                        return waiter.ok is not None
                    if outcome != "done":  # "broken" or "handed": the loop reads again
                        may_lead = False
                        with contextlib.suppress(RuntimeError):  # a closed loop: node gone
                            loop.call_soon_threadsafe(self._maybe_revoke, peer)
                    continue
                if may_lead and peer.owner is None and peer.alive:
                    may_lead = False  # ask once per call
                    loop.call_soon_threadsafe(self._grant, peer, me, waiter)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if not waiter.wait(remaining):
                    return waiter.ok is not None
                if waiter.ok is None and peer.owner == me:
                    may_lead = True  # woken by a grant or a hand-over: read
            return True
        finally:
            peer.waiting.pop(me, None)
            if peer.owner == me:
                self._leave(peer, me, waiter.ok is not None)

    def _leave(self, peer: _Peer, me: int, served: bool) -> None:
        """The owner's wait is over: hand reading to another waiting blocking caller, else to the
        loop when replies are still due or this wait ran out (the thread goes off elsewhere),
        else keep it for this thread's next call."""
        with peer.olock:
            if peer.owner != me:
                return
            peer.active = False
            for ident, other in list(peer.waiting.items()):
                if ident != me and other.ok is None:
                    peer.owner = ident
                    other.wake()
                    return
        if self._calls or not served:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._maybe_revoke, peer)

    @staticmethod
    def _lead(peer: _Peer, me: int) -> bool:
        """Start reading as the owner: this thread's role, or taken over from another blocking
        thread that holds it but is not reading now (no hop to the loop; the order of events
        does not depend on which thread reads)."""
        with peer.olock:
            owner = peer.owner
            if peer.alive and (owner == me or (owner is not None and not peer.active)):
                peer.owner = me
                peer.active = True
                peer.leads += 1
                return True
            return False

    def _owner_watch(self, peer: _Peer, seen: int) -> None:
        """Loop: take reading back from an owner that has not read since the last look (it went
        off to do other work); an owner calling back to back keeps the role without a hop.
        The outcomes reading workers answered themselves are booked here too, and the calls
        a worker runs unseen looked at (``Services._see_unseen``)."""
        if self._handbacks:
            self._book_handbacks()
        with peer.olock:
            if peer.owner is None:
                return
            if peer.active or peer.leads != seen:
                assert self._loop is not None
                self._loop.call_later(_OWNER_IDLE, self._owner_watch, peer, peer.leads)
                keep = True
            else:
                peer.owner = None
                keep = False
        self._see_unseen(peer, not keep)  # a call running since the last look is a process now
        if not keep and peer.alive:
            peer.transport.resume_reading()

    def _grant(self, peer: _Peer, ident: int, waiter: Slot) -> None:
        """Loop: make a waiting blocking caller the connection's reader."""
        if not peer.alive or peer.owner is not None or waiter.ok is not None:
            return
        with peer.olock:
            peer.owner = ident
            peer.active = False
            seen = peer.leads
        peer.transport.pause_reading()
        # wake it one iteration later: a read the selector reported in this one still runs here
        assert self._loop is not None
        self._loop.call_soon(waiter.wake)
        self._loop.call_later(_OWNER_IDLE, self._owner_watch, peer, seen)

    def _maybe_revoke(self, peer: _Peer) -> None:
        """Loop: take reading back from an owner that is not reading now."""
        with peer.olock:
            if peer.owner is None or peer.active:
                return
            peer.owner = None
        self._see_unseen(peer, True)  # no watchdog looks at them after this: a last look
        if peer.alive:
            peer.transport.resume_reading()

    # ---------------------------------------------------------------- a worker reads for itself
    #
    # Erlang calling a plain exposed function costs a hop from the loop thread to a worker
    # thread (a wake-up on the critical path). Once such a call came through the loop, an idle
    # worker becomes the connection's reader as a blocking caller does (leader/follower): the
    # next plain erpc call it reads, it starts and runs itself, and answers from there. While
    # the function runs the worker is not reading, so the loop's watchdog takes reading back
    # after ``_OWNER_IDLE`` (a slow function holds up nothing else); a quick one is done before
    # that and the worker reads on. Such a call runs unseen, as no process (``_Unseen``): the
    # watchdog's looks make one that runs for longer a process.

    def _offer_reader(self, peer: _Peer) -> None:
        """Loop: let a worker thread read ``peer`` when nobody else does."""
        if self._closed or peer.sock is None or peer.owner is not None or not peer.alive:
            return
        with peer.olock:
            peer.owner = _WORKER
            peer.active = False
            seen = peer.leads
        # only a thread free now: a reader never waits in the queue, nor keeps jobs waiting
        if not self._workers.submit_now(lambda: self._read_for_worker(peer)):
            with peer.olock:
                if peer.owner == _WORKER:
                    peer.owner = None
                    return
            # a blocking caller took the role over meanwhile (``_lead``): it reads now
        peer.transport.pause_reading()
        assert self._loop is not None
        self._loop.call_later(_OWNER_IDLE, self._owner_watch, peer, seen)

    def _read_for_worker(self, peer: _Peer) -> None:
        """Worker thread: read ``peer`` as its owner, running the plain erpc calls found there
        (``Services._take_spawn_request``), until none came for ``_READER_IDLE``, an event had
        to go to the loop, or another thread or the loop took reading over."""
        me = threading.get_ident()
        with peer.olock:
            if peer.owner != _WORKER or not peer.alive:
                return  # the watchdog took reading back before a worker was free
            peer.owner = me
            peer.active = True
            peer.leads += 1
        outcome = "broken"
        taken: Slot | None = None
        try:
            while True:
                outcome = "broken"
                taken = Slot()
                outcome = self._read_as_owner(peer, taken, time.monotonic() + _READER_IDLE, taken)
                with peer.olock:
                    peer.active = False
                job, taken = (taken.value if taken.ok else None), None
                if job is not None:  # taken, whatever came after it in the same read
                    job()  # not reading meanwhile: the watchdog may take reading back
                if outcome != "done":
                    return
                if not self._lead(peer, me):
                    outcome = "done"  # no longer the owner: nothing to hand back
                    return
        finally:
            with peer.olock:
                if peer.owner == me:
                    peer.active = False
            if taken is not None and taken.ok:  # read, then something failed: its caller waits
                taken.value()
            if self._loop is not None and (outcome != "done" or self._handbacks):
                with contextlib.suppress(RuntimeError):  # a closed loop: node gone
                    self._loop.call_soon_threadsafe(self._worker_left, peer, outcome != "done")

    def _worker_left(self, peer: _Peer, revoke: bool) -> None:
        """Loop: a reading worker stopped; book what it answered, take reading back."""
        self._book_handbacks()
        if revoke:
            self._maybe_revoke(peer)

    def _read_as_owner(self, peer: _Peer, waiter: Slot, deadline: float | None,
                       taken: Slot | None = None) -> str:
        """Read and apply packets until ``waiter`` is filled: "done", "timeout", "handed" (see
        ``_apply_as_owner``) or "broken". ``taken``: a worker reads (``_read_for_worker``)."""
        sock = peer.sock
        loop = self._loop
        assert loop is not None
        if sock is None:  # the loop closed it since this thread took the role: the peer is down
            return "broken"
        poller: select.poll | None = None  # made the first time this wait sleeps
        while waiter.ok is None:
            if not peer.alive:
                return "broken"
            with peer.rlock:  # not closed meanwhile: another connection could get its number
                try:
                    # a reply is usually microseconds away: sleeping would cost a wake-up
                    data = recv_within(sock, _SPIN, 1 << 18)
                except (OSError, ValueError):
                    return "broken"
                if data is not None:
                    if not data:
                        return "broken"  # end of stream: the loop reads it again and closes
                    peer.last_recv = time.monotonic()
                    ended = False
                    if peer.tls is not None:
                        try:
                            data, ended = peer.decrypt(data, on_loop=False)
                        except ssl.SSLError as error:
                            loop.call_soon_threadsafe(self._owner_tls_error, peer, error)
                            return "broken"
                    applied = self._apply_as_owner(peer, data, taken) if data else "ok"
                    if ended:  # the peer ended TLS, after what came before
                        loop.call_soon_threadsafe(self._peer_down, peer,
                                                  "connection closed (TLS close_notify)")
                        return "broken"
                    if applied != "ok":
                        return applied
                    continue
            wait = 0.05
            if taken is not None:  # a worker: back to the queue as soon as jobs wait there
                if self._workers.backlog():
                    return "timeout"
                wait = 0.01
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return "timeout"
            try:
                if poller is None:
                    poller = select.poll()
                    poller.register(sock.fileno(), select.POLLIN)
                poller.poll(wait * 1000)
            except (OSError, ValueError):
                return "broken"
        return "done"

    def _apply_as_owner(self, peer: _Peer, data: bytes, taken: Slot | None = None) -> str:
        """Feed bytes read by the owner: "ok"; "handed" when some event went to the loop (the
        owner then stops reading: what it waits for may now come through the loop); "broken"
        when the peer broke the protocol. A worker owner passes ``taken``: the first plain erpc
        call read fills it with the job that runs it (the events after it are applied first).
        The usual packets come in batches (``take_messages``) and take the loop's fast paths
        (``Node._fast_paths``: blocking callers' replies, messages for plain mailboxes)."""
        proto = peer.proto
        loop = self._loop
        assert loop is not None
        proto.receive_data(data)
        stats = peer.stats
        stats.bytes_in += len(data)
        take, event_of, next_event = proto.take_messages, proto.event_of, proto.next_event
        fast, apply = self._fast_paths, self._owner_apply
        batch: list[tuple[Any, Any]] = []
        outcome = "ok"
        try:
            while True:
                if take(batch):
                    at = 0  # the batch is out of the protocol's buffer: each item is applied,
                    try:    # handed to the loop, or (the connection broken) dropped with it
                        for control, payload in batch:
                            at += 1
                            # nothing handed over is pending (order holds), and a fast path's form
                            if (peer.posted_n == peer.processed and type(control) is tuple
                                    and len(control) > 1 and type(control[0]) is int):
                                handler = fast.get(control[0])
                                if handler is not None:
                                    try:
                                        done = handler(peer, control, payload, True)
                                    except Exception:
                                        log.exception("error handling a message from %s", peer.name)
                                        done = True
                                    if done:
                                        stats.messages_in += 1
                                        continue
                            event = event_of(control, payload)
                            stats.messages_in += 1
                            if not apply(peer, event, taken):
                                outcome = "handed"
                    except RemoteProtocolError:
                        raise
                    except BaseException:  # KeyboardInterrupt & co: the rest is the loop's
                        self._hand_over(peer, batch[at:])
                        raise
                    batch.clear()
                event = next_event()
                if event is NEED_DATA:
                    return outcome
                if type(event) is Tick:
                    continue
                stats.messages_in += 1
                if not apply(peer, event, taken):
                    outcome = "handed"
        except RemoteProtocolError as error:
            loop.call_soon_threadsafe(self._owner_protocol_error, peer, error)
            return "broken"

    def _owner_apply(self, peer: _Peer, event: Any, taken: Slot | None) -> bool:
        """Apply ``event`` here (True; a failure is logged, as the loop logs its own) or hand it
        to the loop, in order (False)."""
        try:
            if self._owner_applies(peer, event, taken):
                return True
        except Exception:
            log.exception("error handling %r from %s", type(event).__name__, peer.name)
            return True
        peer.posted_n = next(peer.posted)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._dispatch_from_owner, peer, event)
        return False

    def _hand_over(self, peer: _Peer, rest: list[tuple[Any, Any]]) -> None:
        """Hand what an interrupted owner had read and not applied to the loop, in order."""
        assert self._loop is not None
        for control, payload in rest:
            try:
                event = peer.proto.event_of(control, payload)
            except RemoteProtocolError as error:
                self._loop.call_soon_threadsafe(self._owner_protocol_error, peer, error)
                return
            peer.stats.messages_in += 1
            peer.posted_n = next(peer.posted)
            self._loop.call_soon_threadsafe(self._dispatch_from_owner, peer, event)

    def _owner_applies(self, peer: _Peer, event: Any, taken: Slot | None) -> bool:
        """Apply on the owner's thread what may be applied there: blocking callers' rpc replies,
        messages for plain mailboxes, a worker's plain erpc call; False: the loop must."""
        if peer.posted_n != peer.processed:  # an event handed over is pending: order holds
            return False
        kind = type(event)
        caller = self._caller_pid
        if kind is MonitorPExit and event.to_pid == caller:
            call = self._call_of(event.ref, peer)
            if call is not None and call.threaded:
                self._down_reply(event.ref.ids, call, event.reason)
                return True
        elif kind is SpawnReply and event.to_pid == caller:
            call = self._call_of(event.req_id, peer)
            if call is not None and call.threaded:
                self._spawned_reply(event.req_id.ids, call, event.result)
                return True
        elif kind is Send or kind is SendSender or kind is RegSend:
            # a message for a plain mailbox: delivered here unless an async receive
            # waits on it (services such as rex run on the loop)
            box = (self._local(event.to_pid) if kind is not RegSend
                   else self._names.get(event.to_name))
            if type(box) is Mailbox and box.deliver_from_thread(event.message):
                return True
        elif kind is SpawnRequest and taken is not None and taken.ok is None:
            job = self._take_spawn_request(peer, event)
            if job is not None:
                taken.fill(True, job)
                return True
        return False

    def _dispatch_from_owner(self, peer: _Peer, event: Any) -> None:
        try:
            if peer.alive:
                self._dispatch(peer, event)
        except Exception:
            log.exception("error handling %r from %s", type(event).__name__, peer.name)
        finally:  # only now may an owner apply what came after it (``posted_n == processed``)
            peer.processed += 1

    def _owner_tls_error(self, peer: _Peer, error: ssl.SSLError) -> None:
        log.warning("closing connection to %s: TLS: %s", peer.name, error)
        self._peer_down(peer, f"TLS error: {error}")

    def _owner_protocol_error(self, peer: _Peer, error: RemoteProtocolError) -> None:
        log.warning("closing connection to %s: %s", peer.name, error)
        self._peer_down(peer, f"protocol error: {error}")

    def _write_for_thread(self, peer: _Peer, data: bytes, req: Reference) -> None:
        if peer.alive:
            peer.write(data)
        else:
            self._finish_call(req, False, NoConnection(peer.name, "connection closed"))

    def send_from_thread(self, dest: Any, message: Any, sender: Mailbox | None) -> _Peer | None:
        """``send`` from a thread other than the loop's, written directly when the destination's
        node is connected and nothing is queued: the connection it went out on; None: the loop
        must do it."""
        if self._closed or not self._started:
            return None
        node, target = self._resolve(dest)
        if node == self.node_atom:
            return None
        peer = self._peers.get(node)
        if peer is None or not peer.alive or peer.sock is None:
            return None
        source = sender or self._anon
        assert source is not None
        msg = addressed(target, message, source.pid)
        try:
            data = peer.proto.send(msg)
        except LocalProtocolError:
            return None
        return peer if peer.write_from_thread(data) else None

