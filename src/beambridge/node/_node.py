"""``Node``: an asyncio Erlang node over the sans-IO protocol in ``beambridge.protocol``.

The hub: life cycle, identities, routing of what peers send (``_dispatch``), links, monitors and
sending. Its other jobs each have a room that ``Node`` inherits: ``_connections`` (connect,
accept, ticks), ``_calls`` (rpc to Erlang), ``_services`` (Erlang calling Python), ``_threads``
(blocking callers' fast path); ``_peer`` is one connection, ``_core`` the state they share. One
event loop owns the state; ``BlockingNode`` runs this class on a background loop thread, and
only ``_threads`` and ``_peer``'s write path are entered from other threads (under their locks)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import platform
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .._errors import UsageError
from ..protocol import (
    AliasSend,
    ControlMessage,
    DemonitorP,
    Exit,
    Exit2,
    Flag,
    GroupLeader,
    Link,
    MonitorP,
    MonitorPExit,
    NodeLink,
    RegSend,
    Send,
    SendSender,
    SpawnReply,
    SpawnRequest,
    Unlink,
    UnlinkId,
    UnlinkIdAck,
    epmd,
)
from ..protocol._flags import DEFAULT_FLAGS
from ..term import Atom, Limits, Mapping, Pid, Reference
from ..term._types import trusted_pid, trusted_reference
from . import _epmd_client
from ._calls import Calls, _Call
from ._connections import Connections, _listen, _Throttle
from ._core import Exposed, FastReply
from ._errors import EpmdUnavailable, NoConnection
from ._mailbox import DOWN, KILL, PROCESS, Mailbox, check_name
from ._names import (
    _A,
    ERROR,
    NET_KERNEL,
    NOCONNECTION,
    NOPROC,
    OK,
    REX,
    SPAWN_REPLY,
    _monitored,
    addressed,
    default_cookie,
    full_node_name,
)
from ._peer import Corks, _Peer
from ._services import Services, _GroupLeader, _NetKernel, _Rex, _Sink
from ._stats import PeerStats
from ._threads import ThreadDoors
from ._tls import TlsConfig, load_tls
from ._workers import Workers

log = logging.getLogger("beambridge.node")


__all__ = ["Node", "default_cookie", "full_node_name"]

class Node(Connections, ThreadDoors, Calls, Services):
    """A Python process as an Erlang node (asyncio). Use ``async with Node(...) as node``.

    ``name`` is ``'name'`` (this host's short name is added) or ``'name@host'``; ``cookie``
    defaults to ``$ERLANG_COOKIE`` then ``~/.erlang.cookie``. ``hidden`` nodes (the default) do
    not join the peer's global view, like ``erl -hidden``. ``epmd_port`` defaults to
    ``$ERL_EPMD_PORT`` or 4369; ``start_epmd`` starts a loopback EPMD when none answers.
    ``mapping`` chooses how terms map to Python (see ``beambridge.term.Mapping``).

    The listening port is open to anyone who can reach it, so what an unauthenticated or
    hostile peer can make the node hold is bounded: at most ``max_handshakes`` handshakes in
    progress (``max_handshakes_per_address`` from one address; a connection over either is
    closed as soon as it is accepted), each within ``handshake_timeout`` seconds for the whole
    handshake, both directions (Erlang's ``net_setuptime``, 7 s). Once connected, a peer's
    unfinished fragmented messages hold at most ``max_fragmented_bytes`` and number at most
    ``max_fragmented_messages``, and one message decodes within ``limits`` (default
    ``beambridge.protocol.DIST_LIMITS``: 10M terms, ~512 MiB of objects, so that a small
    compressed message cannot make the node build a gigabyte); past a bound only that
    connection is closed, with a logged reason, and everyone else is served on. Work peers ask
    of the node is bounded too: past ``max_processes`` processes (about 2 KB each) a spawn
    request is refused with ``system_limit`` (``erpc:call`` raises ``{erpc, system_limit}``),
    as a full BEAM process table refuses it (jobs queued for the worker threads count too), and
    an ``rpc:call`` made while as many are unanswered gets ``{badrpc, {'EXIT', {system_limit, _}}}``.
    """

    def __init__(self, name: str, cookie: str | None = None, *, hidden: bool = True,
                 epmd_host: str = "127.0.0.1", epmd_port: int | None = None,
                 net_ticktime: float = 60.0, mapping: Mapping | None = None,
                 listen_host: str = "127.0.0.1", connect_timeout: float = 10.0,
                 start_epmd: bool = False, handshake_timeout: float = 7.0,
                 max_handshakes: int = 64, max_handshakes_per_address: int = 8,
                 max_fragmented_bytes: int = 256 << 20, max_fragmented_messages: int = 256,
                 limits: Limits | None = None, max_processes: int = 65536,
                 tls: str | os.PathLike[str] | TlsConfig | None = None,
                 listen_ports: tuple[int, int] | None = None, role: str = "python node") -> None:
        self.name = full_node_name(name)
        #: what this node is for, as ``beambridge_node:info/0`` tells the cluster (a dashboard)
        self.role = role
        self.node_atom = Atom(self.name)
        self.alive_name, self.host = self.name.split("@", 1)
        self._cookie = cookie if cookie is not None else default_cookie()
        self.hidden = hidden
        self.epmd_host = epmd_host
        self.epmd_port = epmd_port if epmd_port is not None else int(
            os.environ.get("ERL_EPMD_PORT", epmd.DEFAULT_PORT))
        if net_ticktime <= 0:
            raise UsageError("net_ticktime must be positive")
        self.net_ticktime = float(net_ticktime)
        self.mapping = mapping or Mapping.EXACT
        self.listen_host = listen_host
        self.tls = load_tls(tls)
        if self.tls is not None and self.tls.server is None:
            raise UsageError(f"{self.tls.describe()} has no server options: a node needs them "
                             "to accept connections")
        if listen_ports is not None:
            low, high = listen_ports
            if not (type(low) is int and type(high) is int and 0 < low <= high <= 65535):
                raise UsageError(f"listen_ports is (low, high) within 1..65535, not {listen_ports!r}")
        self.listen_ports = listen_ports
        self.connect_timeout = connect_timeout
        self.start_epmd = start_epmd
        if handshake_timeout <= 0:
            raise UsageError("handshake_timeout must be positive")
        self.handshake_timeout = float(handshake_timeout)
        for option, value in (("max_handshakes", max_handshakes),
                              ("max_handshakes_per_address", max_handshakes_per_address),
                              ("max_fragmented_bytes", max_fragmented_bytes),
                              ("max_fragmented_messages", max_fragmented_messages),
                              ("max_processes", max_processes)):
            if type(value) is not int or value < 1:
                raise UsageError(f"{option} must be a positive int, not {value!r}")
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_address = max_handshakes_per_address
        self.max_processes = max_processes
        if limits is not None and not isinstance(limits, Limits):
            raise UsageError(f"limits must be a beambridge.term.Limits, not {limits!r}")
        self._proto_options: dict[str, Any] = {
            "limits": limits,
            "max_fragmented_bytes": max_fragmented_bytes,
            "max_fragmented_messages": max_fragmented_messages,
            # inet_tls_dist frames the handshake with 4-byte lengths (TCP's is 2)
            "handshake_header": 4 if self.tls is not None else 2,
        }
        self.creation = 0
        self.port = 0
        self._flags = int(DEFAULT_FLAGS) | (0 if hidden else int(Flag.PUBLISHED))
        self._started = False
        self._closed = False
        self._listener: socket.socket | None = None
        #: incoming handshakes in progress: their sockets, and how many per peer address
        self._handshaking: set[socket.socket] = set()
        self._handshaking_from: collections.Counter[str] = collections.Counter()
        self._refusals = _Throttle(log, 10.0)
        self._epmd_writer: asyncio.StreamWriter | None = None
        self._peers: dict[Atom, _Peer] = {}
        self._corks = Corks()
        #: connections whose socket threads use is a duplicate, until it is closed
        self._dup_peers: set[_Peer] = set()
        self._pending: dict[Atom, asyncio.Future[_Peer]] = {}
        self._connecting: dict[Atom, asyncio.Task[None]] = {}
        self._procs: dict[int, Mailbox] = {}
        self._names: dict[Atom, Mailbox] = {}
        self._aliases: dict[Reference, Mailbox] = {}
        self._spawned: dict[int, asyncio.Task[Any]] = {}
        #: where plain exposed functions run (as many threads as the loop's default executor)
        self._workers = Workers(min(32, (os.cpu_count() or 1) + 4))
        #: old-style rpc calls (``rex``) awaited on the loop, and jobs handed to the worker
        #: threads whose outcome is not back yet: each at most max_processes
        self._rex_busy = 0
        self._thread_jobs = 0
        #: seconds the loop polls a connection after answering it (``_on_peer_data``): 0 on
        #: an application's loop; a ``BlockingNode`` sets it on the thread it owns
        self._busy_poll = 0.0
        self._jobs_lock = threading.Lock()  # worker threads count the jobs they start too
        #: outcomes of calls a reading worker answered itself, for the loop to book (ending
        #: the process) at its next look at the reader: no wake-up of the loop per call
        self._handbacks: collections.deque[tuple[Callable[[Any], None], Any]] = collections.deque()
        #: guards a spawned process's monitors between the loop ending it and a worker thread
        #: answering its spawner directly (``Services._in_thread``), and the unseen calls
        #: (``_unseen`` and each one's fields) between their worker and the loop's looks
        self._exit_lock = threading.Lock()
        #: plain erpc calls a reading worker runs before their spawn reply is sent, by pid id
        #: (``Services._take_spawn_request``); changed under ``_exit_lock``
        self._unseen = {}
        self._exposed: dict[Atom, dict[Atom, Exposed]] = {
            Atom("beambridge_node"): {Atom("info"): (self._info, True, False)}}
        self._info_last: tuple[float, int] | None = None
        self._nodes_watchers: set[Mailbox] = set()
        self._pid_ids = itertools.count(1)
        self._ref_ids = itertools.count(1)
        self._unlink_ids = itertools.count(1)
        self._ref_salt = (secrets.randbits(32), secrets.randbits(32))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._anon: Mailbox | None = None
        self._group_leader: Mailbox | None = None
        self._caller_pid: Pid | None = None
        self._calls: dict[tuple[int, ...], _Call] = {}  # by request id words (``Calls``)
        self._due: dict[int, dict[_Call, Reference]] = {}
        self._due_ticks: list[int] = []
        self._due_queued: set[int] = set()
        self._due_timer: asyncio.TimerHandle | None = None
        self._due_timer_tick = 0
        #: control message tag -> its fast path in reading (``Calls._fast_replies_table``)
        self._fast_paths = (self._fast_replies_table() | self._fast_sends_table()
                            | {29: self._fast_spawn_request})
        self._stats: dict[Atom, PeerStats] = {}
        self._node_atoms: dict[Any, Atom] = {}
        self._name_atoms: dict[Any, Atom] = {}
        #: gets what Erlang sends to a name nobody registered here (else it is dropped), as the
        #: old uWSGI plugin did: replies to ``{any_name, Node}`` reach one Python inbox.
        self.unrouted: Mailbox | None = None

    # ================================================================ life cycle

    async def start(self) -> Node:
        """Listen, register with EPMD, and start the built-in services (rex, net_kernel)."""
        if self._started:
            raise UsageError("node already started")
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._listener = _listen(self.listen_host, self.listen_ports)
        self.port = self._listener.getsockname()[1]
        self._loop.add_reader(self._listener.fileno(), self._accept_ready)
        try:
            try:
                self._epmd_writer, self.creation = await _epmd_client.register(
                    self.epmd_host, self.epmd_port, self.alive_name, self.port,
                    hidden=self.hidden, timeout=self.connect_timeout)
            except EpmdUnavailable:
                if not self.start_epmd:
                    raise
                _epmd_client.start_daemon(self.epmd_port)
                self._epmd_writer, self.creation = await self._register_retrying()
        except BaseException:
            self._stop_listening()
            self._closed = True
            raise
        self._anon = _Sink(self, self._next_pid())
        self._procs[self._anon.pid.id] = self._anon
        self._group_leader = _GroupLeader(self, self._next_pid())
        caller = _Sink(self, self._next_pid())  # the From of every rpc; replies are routed by id
        self._procs[caller.pid.id] = caller
        self._caller_pid = caller.pid
        self._procs[self._group_leader.pid.id] = self._group_leader
        for service in (_Rex(self, self._next_pid(), REX), _NetKernel(self, self._next_pid(), NET_KERNEL)):
            self._procs[service.pid.id] = service
            self._names[service.name] = service  # type: ignore[index]
        log.info("node %s up on port %d (creation %d)", self.name, self.port, self.creation)
        return self

    async def _register_retrying(self) -> tuple[asyncio.StreamWriter, int]:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                return await _epmd_client.register(self.epmd_host, self.epmd_port, self.alive_name,
                                                   self.port, hidden=self.hidden, timeout=2.0)
            except EpmdUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Unregister from EPMD, close every connection, and wake every waiter with an error."""
        if self._closed:
            return
        self._closed = True
        if self._epmd_writer is not None:
            self._epmd_writer.close()
        self._stop_listening()
        cancelled = list(self._connecting.values())
        for task in cancelled:
            task.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NoConnection("*", "node closed"))
        for peer in list(self._peers.values()):
            self._peer_down(peer, "node closed")
        for call in list(self._calls.values()):
            self._finish_call(call.tag, False, NoConnection(self.name, "node closed"))
        self._schedule_ticks()  # none due now: its timer goes
        for mailbox in list(self._procs.values()):
            mailbox.close(_A("shutdown"))
        self._workers.close()
        for task in list(self._spawned.values()) + list(self._tasks):
            task.cancel()
            cancelled.append(task)
        # Let them unwind now, on this loop: a BlockingNode stops its loop right after, and a
        # task destroyed pending (a connection attempt to an unreachable host) is an error.
        current = asyncio.current_task()
        unwinding = [t for t in cancelled if t is not current and not t.done()]
        if unwinding:
            await asyncio.wait(unwinding, timeout=1.0)
        self._close_dups()
        log.info("node %s closed", self.name)

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(listener.fileno())
        listener.close()

    async def __aenter__(self) -> Node:
        if not self._started:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_running(self) -> None:
        if not self._started:
            raise UsageError("node not started: use `async with Node(...)` or `await node.start()`")
        if self._closed:
            raise NoConnection(self.name, "this node is closed")

    def _spawn_task(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ================================================================ identities

    def _next_pid(self) -> Pid:
        n = next(self._pid_ids)  # every field is in range by construction: no re-validation
        return trusted_pid(self.node_atom, n & 0x0FFFFFFF, (n >> 28) & 0x1FFF, self.creation)

    def make_ref(self) -> Reference:
        """A new reference of this node."""
        n = next(self._ref_ids)  # every field is in range by construction: no re-validation
        return trusted_reference(self.node_atom, self.creation, (
            n & 0x3FFFF, ((n >> 18) ^ self._ref_salt[0]) & 0xFFFFFFFF, self._ref_salt[1]))

    def _new_mailbox(self, name: Atom | None, trap_exits: bool) -> Mailbox:
        if name is not None and name in self._names:
            raise UsageError(f"the name {name} is already registered on {self.name}")
        mailbox = Mailbox(self, self._next_pid(), name, trap_exits)
        self._procs[mailbox.pid.id] = mailbox
        if name is not None:
            self._names[name] = mailbox
        return mailbox

    def mailbox(self, name: str | None = None, *, trap_exits: bool = True) -> Mailbox:
        """A new Python process; ``name`` registers it so Erlang can send to ``{Name, Node}``."""
        self._check_running()
        return self._new_mailbox(check_name(name) if name is not None else None, trap_exits)

    def whereis(self, name: str) -> Pid | None:
        mailbox = self._names.get(Atom(name))
        return mailbox.pid if mailbox is not None else None

    def _local(self, pid: Pid) -> Mailbox | None:
        if pid.node != self.node_atom or pid.creation != self.creation:
            return None
        mailbox = self._procs.get(pid.id)
        if mailbox is not None and mailbox.pid == pid:
            return mailbox
        return None

    # ---------------------------------------------------------------- messages' fast path

    def _fast_sends_table(self) -> dict[int, FastReply]:
        """Messages for our mailboxes, read as decoded ``(control, payload)`` pairs: the plain
        forms only, with the delivery ``_dispatch`` makes (the contract is the replies' one,
        ``Calls._fast_replies_table``). On a blocking caller's thread (``owner``) only to a
        plain mailbox no async receive waits on; anything else takes the full path."""
        return {2: self._fast_send, 22: self._fast_send_sender, 6: self._fast_reg_send}

    def _fast_send(self, peer: _Peer, c: tuple[Any, ...], payload: Any, owner: bool) -> bool:
        """``{2, Unused, ToPid}``"""
        return len(c) == 3 and type(c[2]) is Pid and self._fast_deliver(self._local(c[2]), payload, owner)

    def _fast_send_sender(self, peer: _Peer, c: tuple[Any, ...], payload: Any, owner: bool) -> bool:
        """``{22, FromPid, ToPid}``"""
        return (len(c) == 3 and type(c[1]) is Pid and type(c[2]) is Pid
                and self._fast_deliver(self._local(c[2]), payload, owner))

    def _fast_reg_send(self, peer: _Peer, c: tuple[Any, ...], payload: Any, owner: bool) -> bool:
        """``{6, FromPid, Unused, ToName}``; to a name nobody holds: the full path."""
        if len(c) != 4 or type(c[1]) is not Pid or type(c[3]) is not Atom:
            return False
        box = self._names.get(c[3])
        return box is not None and self._fast_deliver(box, payload, owner)

    @staticmethod
    def _fast_deliver(box: Mailbox | None, message: Any, owner: bool) -> bool:
        if box is None:  # no such process: dropped, as ``_dispatch`` drops it, on any thread
            return True  # (a drop has no order; a new pid is in ``_procs`` before it is known)
        if owner:
            return type(box) is Mailbox and box.deliver_from_thread(message)
        box.deliver(message)
        return True

    # ================================================================ routing signals

    def _signal_now(self, node: Atom, message: ControlMessage) -> None:
        """Send a signal on an existing connection, or apply it locally; never waits."""
        if node == self.node_atom:
            self._dispatch(None, message)
            return
        peer = self._peers.get(node)
        if peer is not None:
            peer.send_quiet(message)

    async def _signal(self, node: Atom, message: ControlMessage) -> None:
        if node == self.node_atom:
            self._dispatch(None, message)
            return
        peer = await self._peer(node)
        peer.send(message)
        await peer.drain()

    def _dispatch(self, peer: _Peer | None, event: Any) -> None:
        """Apply one control message that arrived (or that a local process sent locally)."""
        kind = type(event)
        if kind is Send or kind is SendSender:
            mailbox = self._local(event.to_pid)
            if mailbox is not None:
                mailbox.deliver(event.message)
        elif kind is RegSend:
            mailbox = self._names.get(event.to_name)
            if mailbox is None:
                mailbox = self.unrouted
            if mailbox is not None:
                mailbox.deliver(event.message)
            else:
                log.debug("message to unregistered name %s dropped", event.to_name)
        elif kind is AliasSend:
            mailbox = self._aliases.get(event.alias)
            if mailbox is not None:
                mailbox.deliver(event.message)
        elif kind is MonitorPExit:
            if event.to_pid == self._caller_pid:
                self._call_down(event.ref, event.reason, peer)
                return
            mailbox = self._local(event.to_pid)
            entry = mailbox.monitors_out.pop(event.ref, None) if mailbox is not None else None
            if mailbox is not None and entry is not None:
                # shown as the monitor was set, as BEAM does: a monitor on a name gets
                # {Name, Node} (the wire carries the bare name)
                mailbox.deliver((DOWN, event.ref, PROCESS, _monitored(*entry), event.reason))
        elif kind is SpawnReply:
            if event.to_pid == self._caller_pid:
                self._call_spawned(event.req_id, event.result, peer)
                return
            mailbox = self._local(event.to_pid)
            if mailbox is not None:
                if isinstance(event.result, Pid):
                    mailbox.deliver((SPAWN_REPLY, event.req_id, OK, event.result))
                else:
                    mailbox.monitors_out.pop(event.req_id, None)
                    mailbox.deliver((SPAWN_REPLY, event.req_id, ERROR, event.result))
        elif kind is Link:
            mailbox = self._local(event.to_pid)
            if mailbox is None or mailbox.closed is not None:
                self._signal_now(event.from_pid.node, Exit(event.to_pid, event.from_pid, NOPROC))
            else:
                mailbox.links.add(event.from_pid)
        elif kind is UnlinkId:
            mailbox = self._local(event.to_pid)
            if mailbox is not None:
                mailbox.links.discard(event.from_pid)
            self._signal_now(event.from_pid.node, UnlinkIdAck(event.id, event.to_pid, event.from_pid))
        elif kind is Unlink:
            mailbox = self._local(event.to_pid)
            if mailbox is not None:
                mailbox.links.discard(event.from_pid)
        elif kind is Exit:
            mailbox = self._local(event.to_pid)
            if mailbox is not None and event.from_pid in mailbox.links:
                mailbox.links.discard(event.from_pid)
                mailbox.exit_signal(event.from_pid, event.reason)
        elif kind is Exit2:
            mailbox = self._local(event.to_pid)
            if mailbox is not None:
                mailbox.exit_signal(event.from_pid, event.reason, kill=event.reason == KILL)
        elif kind is MonitorP:
            target = event.to_proc
            mailbox = self._names.get(target) if isinstance(target, Atom) else self._local(target)
            if mailbox is None or mailbox.closed is not None:
                self._signal_now(event.from_pid.node, MonitorPExit(target, event.from_pid, event.ref, NOPROC))
            else:
                mailbox.monitors_in[event.ref] = (event.from_pid, target)
        elif kind is DemonitorP:
            target = event.to_proc
            mailbox = self._names.get(target) if isinstance(target, Atom) else self._local(target)
            if mailbox is not None:
                mailbox.monitors_in.pop(event.ref, None)
        elif kind is SpawnRequest:
            if peer is None:
                raise UsageError("local spawn requests are not supported")
            self._on_spawn_request(peer, event)
        elif kind is UnlinkIdAck or kind is GroupLeader or kind is NodeLink:
            pass
        else:
            log.debug("ignored %r", event)

    def _process_ended(self, mailbox: Mailbox, reason: Any) -> None:
        """A local process ended: tell linked and monitoring processes, unregister it."""
        self._procs.pop(mailbox.pid.id, None)
        if mailbox.name is not None and self._names.get(mailbox.name) is mailbox:
            del self._names[mailbox.name]
        self._nodes_watchers.discard(mailbox)
        for alias in [a for a, m in self._aliases.items() if m is mailbox]:
            del self._aliases[alias]
        links, mailbox.links = mailbox.links, set()
        for pid in links:
            self._signal_now(pid.node, Exit(mailbox.pid, pid, reason))
        with self._exit_lock:  # a worker thread may be claiming its spawner's monitor
            monitors_in, mailbox.monitors_in = mailbox.monitors_in, {}
        for ref, (watcher, target) in monitors_in.items():
            self._signal_now(watcher.node, MonitorPExit(target, watcher, ref, reason))
        monitors_out, mailbox.monitors_out = mailbox.monitors_out, {}
        for ref, (target, node) in monitors_out.items():
            self._signal_now(node, DemonitorP(mailbox.pid, target, ref))

    # ================================================================ links and monitors

    async def _link(self, mailbox: Mailbox, pid: Pid) -> None:
        if not isinstance(pid, Pid):
            raise UsageError(f"link wants a Pid, not {pid!r}")
        mailbox.links.add(pid)
        try:
            await self._signal(pid.node, Link(mailbox.pid, pid))
        except NoConnection:
            mailbox.links.discard(pid)
            mailbox.exit_signal(pid, NOCONNECTION)

    async def _unlink(self, mailbox: Mailbox, pid: Pid) -> None:
        if pid not in mailbox.links:
            return
        mailbox.links.discard(pid)
        peer = self._peers.get(pid.node)
        if pid.node == self.node_atom:
            self._dispatch(None, UnlinkId(next(self._unlink_ids), mailbox.pid, pid))
        elif peer is not None:
            if peer.flags & Flag.UNLINK_ID:
                peer.send_quiet(UnlinkId(next(self._unlink_ids), mailbox.pid, pid))
            else:
                peer.send_quiet(Unlink(mailbox.pid, pid))

    async def _monitor(self, mailbox: Mailbox, target: Any) -> Reference:
        ref = self.make_ref()
        proc: Pid | Atom
        if isinstance(target, Pid):
            proc, node = target, target.node
        elif isinstance(target, tuple) and len(target) == 2:
            proc, node = check_name(target[0]), Atom(full_node_name(str(target[1])))
        elif isinstance(target, str):
            proc, node = check_name(target), self.node_atom
        else:
            raise UsageError(f"monitor wants a Pid, a name or (name, node), not {target!r}")
        mailbox.monitors_out[ref] = (proc, node)
        try:
            await self._signal(node, MonitorP(mailbox.pid, proc, ref))
        except NoConnection:
            if mailbox.monitors_out.pop(ref, None) is not None:
                mailbox.deliver((DOWN, ref, PROCESS, _monitored(proc, node), NOCONNECTION))
        return ref

    async def _demonitor(self, mailbox: Mailbox, ref: Reference) -> None:
        entry = mailbox.monitors_out.pop(ref, None)
        if entry is not None:
            self._signal_now(entry[1], DemonitorP(mailbox.pid, entry[0], ref))

    # ================================================================ sending

    def _resolve(self, dest: Any) -> tuple[Atom, Any]:
        """``(node, pid | name | alias)`` for what the user names as a destination."""
        if isinstance(dest, Pid):
            return dest.node, dest
        if isinstance(dest, Reference):
            return dest.node, dest
        if isinstance(dest, str):
            return self.node_atom, self._name_atom(dest)
        if isinstance(dest, tuple) and len(dest) == 2:
            return self._node_atom(dest[1]), self._name_atom(dest[0])
        raise UsageError(f"send to a Pid, a registered name, (name, node) or an alias, not {dest!r}")

    def begin_send(self, dest: Any, message: Any, sender: Mailbox | None,
                   done: Callable[[bool, Any], None], timeout: float | None = None) -> None:
        """``send`` in callback form (for ``BlockingNode``): sends at once when connected."""
        try:
            self._check_running()
            node, target = self._resolve(dest)
            peer = self._peers.get(node)
            if node == self.node_atom or (peer is not None and peer.alive):
                self._send_now(node, target, message, sender)
                done(True, None)
                return
        except Exception as error:
            done(False, error)
            return

        async def slow() -> None:
            try:
                await self.send(dest, message, sender=sender, timeout=timeout)
            except Exception as error:
                done(False, error)
            else:
                done(True, None)

        self._spawn_task(slow())

    def _send_now(self, node: Atom, target: Any, message: Any, sender: Mailbox | None
                  ) -> _Peer | None:
        """Send to a resolved destination (``_resolve``); its node is this one or connected."""
        source = sender or self._anon
        assert source is not None
        msg = addressed(target, message, source.pid)
        if node == self.node_atom:
            self._dispatch(None, msg)
            return None
        peer = self._peers[node]
        peer.send(msg)
        return peer

    async def send(self, dest: Any, message: Any, *, sender: Mailbox | None = None,
                   timeout: float | None = None) -> None:
        """Send ``message`` to a ``Pid``, a name registered here, ``(name, node)``, or an alias.

        Connects on demand (within ``timeout``, at most ``connect_timeout``); raises
        ``NoConnection`` when the node cannot be reached and ``EncodeError`` when the message
        has no Erlang form (nothing is sent then).
        """
        self._check_running()
        node, target = self._resolve(dest)
        if node != self.node_atom:
            peer = self._peers.get(node)
            if peer is None or not peer.alive:
                await self._peer(node, timeout)
        sent = self._send_now(node, target, message, sender)
        if sent is not None:
            await sent.drain()

    # ================================================================ what the node counts

    def stats(self) -> dict[str, Any]:
        """Counters for watching this node (``BlockingNode.stats()`` too; the web layer exports
        them to Prometheus): by peer node, connections made and whether one is up, messages
        and bytes in and out, and the rpcs sent there (finished calls, errors, timeouts, total
        and longest seconds). Counting starts with the node; a reconnect goes on counting."""
        peers = {str(name): s.as_dict() for name, s in list(self._stats.items())}
        for name, found in peers.items():
            peer = self._peers.get(Atom(name))
            found["connected"] = peer is not None and peer.alive
        totals: dict[str, float] = {}
        for found in peers.values():
            for key, value in found.items():
                if key in ("connected_since", "connected", "rpc_seconds_max"):
                    continue
                totals[key] = totals.get(key, 0) + value
        totals["connections_up"] = sum(1 for p in peers.values() if p["connected"])
        return {"node": self.name, "peers": peers, "totals": totals}

    def _info(self) -> dict[Atom, Any]:
        """``beambridge_node:info/0``: what this node says of itself to the cluster (the compute
        service's dashboard and ``/nodes`` ask it; nodes holding the cookie may ask anything
        anyway). The rpc rate is over the time since the previous ask."""
        totals = self.stats()["totals"]
        calls = int(totals.get("rpc_calls", 0))
        now = time.monotonic()
        last, self._info_last = self._info_last, (now, calls)
        rate = (calls - last[1]) / (now - last[0]) if last is not None and now > last[0] else 0.0
        from .. import __version__

        return {
            Atom("os_pid"): os.getpid(), Atom("role"): self.role.encode(),
            Atom("host"): socket.gethostname().encode(),
            Atom("exposes"): sorted(self._exposed),
            Atom("rpc_calls"): calls, Atom("rpc_errors"): int(totals.get("rpc_errors", 0)),
            Atom("rpc_rate"): round(rate, 2),
            Atom("connections"): int(totals.get("connections_up", 0)),
            **{Atom(k): int(totals.get(k, 0)) for k in ("messages_in", "messages_out", "bytes_in",
                                                         "bytes_out")},
            Atom("python"): platform.python_version().encode(), Atom("version"): __version__.encode(),
            Atom("memory_bytes"): _resident_bytes(),
        }

    # ================================================================ EPMD helpers

    async def names(self, host: str | None = None, timeout: float = 5.0) -> list[tuple[str, int]]:
        """What EPMD on ``host`` (default: ours) has registered: ``[(name, port), ...]``."""
        return await _epmd_client.names(host or self.epmd_host, self.epmd_port, timeout)

    def _sockets(self) -> list[socket.socket]:
        """Every socket this node holds (the fork handling releases them in a child)."""
        found: list[Any] = []
        if self._listener is not None:
            found.append(self._listener)
        found += list(self._handshaking)
        for peer in self._dup_peers:  # down peers too, until their duplicates close
            if peer.dup is not None:
                found.append(peer.dup)
            shown = peer.transport.get_extra_info("socket")
            if shown is not None:  # the transport's own, until it closes it
                found.append(shown)
        writers = [self._epmd_writer] + [p.writer for p in self._peers.values()]
        for writer in writers:
            if writer is not None:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    found.append(sock)
        return found


def _resident_bytes() -> int:
    """This process's resident memory (Linux ``/proc``), else its peak (``getrusage``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
