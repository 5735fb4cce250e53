"""``NodeCore``: the state ``Node``'s rooms share, declared once so that each room type-checks
on its own. It holds no code: every name here is set by ``Node.__init__`` or defined by one
room, and the rooms reach each other only through ``self``, never by importing ``Node``."""

from __future__ import annotations

import asyncio
import collections
import itertools
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..protocol import ControlMessage
from ..term import Atom, Mapping, Pid, Reference

if TYPE_CHECKING:
    from ._calls import _Call
    from ._connections import _Throttle
    from ._mailbox import Mailbox
    from ._peer import Corks, _Peer
    from ._services import _Unseen
    from ._stats import PeerStats
    from ._tls import TlsConfig
    from ._workers import Workers


#: an exposed function: the callable, whether it runs inline, whether it is a coroutine function
Exposed = tuple[Callable[..., Any], bool, bool]
#: a reply's fast path: (peer, control tuple, payload, read by a blocking caller) -> applied
FastReply = Callable[["_Peer", tuple[Any, ...], Any, bool], bool]


class NodeCore:
    """Attributes (set in ``Node.__init__``) and the methods one room calls in another."""

    # identity and settings
    name: str
    node_atom: Atom
    alive_name: str
    host: str
    _cookie: str
    hidden: bool
    epmd_host: str
    epmd_port: int
    net_ticktime: float
    mapping: Mapping
    listen_host: str
    listen_ports: tuple[int, int] | None
    tls: TlsConfig | None
    connect_timeout: float
    start_epmd: bool
    handshake_timeout: float
    max_handshakes: int
    max_handshakes_per_address: int
    max_processes: int
    _rex_busy: int
    _thread_jobs: int
    _busy_poll: float
    _jobs_lock: threading.Lock
    _handbacks: collections.deque[tuple[Callable[[Any], None], Any]]
    _proto_options: dict[str, Any]
    creation: int
    port: int
    _flags: int
    # life cycle
    _started: bool
    _closed: bool
    _loop: asyncio.AbstractEventLoop | None
    _tasks: set[asyncio.Task[Any]]
    # connections
    _listener: socket.socket | None
    _handshaking: set[socket.socket]
    _handshaking_from: collections.Counter[str]
    _refusals: _Throttle
    _epmd_writer: asyncio.StreamWriter | None
    _peers: dict[Atom, _Peer]
    _corks: Corks
    _dup_peers: set[_Peer]
    _pending: dict[Atom, asyncio.Future[_Peer]]
    _connecting: dict[Atom, asyncio.Task[None]]
    # processes
    _procs: dict[int, Mailbox]
    _names: dict[Atom, Mailbox]
    _aliases: dict[Reference, Mailbox]
    _spawned: dict[int, asyncio.Task[Any]]
    _workers: Workers
    _exit_lock: threading.Lock
    _unseen: dict[int, _Unseen]
    _exposed: dict[Atom, dict[Atom, Exposed]]
    _nodes_watchers: set[Mailbox]
    _pid_ids: itertools.count[int]
    _ref_ids: itertools.count[int]
    _unlink_ids: itertools.count[int]
    _ref_salt: tuple[int, int]
    _anon: Mailbox | None
    _group_leader: Mailbox | None
    _caller_pid: Pid | None
    unrouted: Mailbox | None
    # calls, and what is counted about each peer node
    _calls: dict[tuple[int, ...], _Call]
    _due: dict[int, dict[_Call, Reference]]  # the calls whose timeout falls in each tick
    _due_ticks: list[int]  # a heap of those ticks (and, for a while, some emptied since)
    _due_queued: set[int]  # the ticks in that heap
    _due_timer: asyncio.TimerHandle | None
    _due_timer_tick: int  # the tick it is set for
    _fast_paths: dict[int, FastReply]
    _stats: dict[Atom, PeerStats]
    _node_atoms: dict[Any, Atom]
    _name_atoms: dict[Any, Atom]

    if TYPE_CHECKING:  # methods one room calls in another: defined by the hub or a room
        def _check_running(self) -> None: ...
        def _spawn_task(self, coro: Awaitable[Any]) -> asyncio.Task[Any]: ...
        def _dispatch(self, peer: _Peer | None, event: Any) -> None: ...
        def _signal_now(self, node: Atom, message: ControlMessage) -> None: ...
        def make_ref(self) -> Reference: ...
        def _next_pid(self) -> Pid: ...
        def _new_mailbox(self, name: Atom | None, trap_exits: bool) -> Mailbox: ...
        def _local(self, pid: Pid) -> Mailbox | None: ...
        def _process_ended(self, mailbox: Mailbox, reason: Any) -> None: ...
        async def _link(self, mailbox: Mailbox, pid: Pid) -> None: ...
        async def _unlink(self, mailbox: Mailbox, pid: Pid) -> None: ...
        async def _monitor(self, mailbox: Mailbox, target: Any) -> Reference: ...
        async def _demonitor(self, mailbox: Mailbox, ref: Reference) -> None: ...
        def _resolve(self, dest: Any) -> tuple[Atom, Any]: ...
        async def send(self, dest: Any, message: Any, *, sender: Mailbox | None = None,
                       timeout: float | None = None) -> None: ...
        async def _peer(self, node: Atom, timeout: float | None = None) -> _Peer: ...
        def _peer_down(self, peer: _Peer, reason: str) -> None: ...
        def _name_atom(self, name: Any) -> Atom: ...
        def _node_atom(self, node: Any) -> Atom: ...
        def _finish_call(self, req: Reference, ok: bool, value: Any) -> None: ...
        def _call_of(self, req: Any, peer: _Peer | None) -> _Call | None: ...
        def _spawned_reply(self, ids: tuple[int, ...], call: _Call, result: Any) -> None: ...
        def _down_reply(self, ids: tuple[int, ...], call: _Call, reason: Any) -> None: ...
        async def _outcome(self, module: Atom, function: Atom, args: Any) -> tuple[str, Any, Any]: ...
        def _plain(self, module: Any, function: Any, args: Any
                   ) -> Exposed | None: ...
        def _in_thread(self, fn: Callable[..., Any], module: Atom, function: Atom, args: list[Any],
                       then: Callable[[tuple[str, Any, Any]], None]) -> None: ...
        def _settle(self, outcome: tuple[str, Any, Any], module: Atom, function: Atom, args: list[Any]
                    ) -> tuple[str, Any, Any] | asyncio.Task[tuple[str, Any, Any]]: ...
        def _take_spawn_request(self, peer: _Peer, event: Any) -> Callable[[], None] | None: ...
        def _offer_reader(self, peer: _Peer) -> None: ...
        def _book_handbacks(self) -> None: ...
        def _see_unseen(self, peer: _Peer, last: bool) -> None: ...
        def _outcome_now(self, module: Any, function: Any, args: Any
                         ) -> tuple[str, Any, Any] | asyncio.Task[tuple[str, Any, Any]] | None: ...
