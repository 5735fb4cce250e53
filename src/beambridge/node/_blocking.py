"""``BlockingNode``: the same node for threaded code (WSGI workers, scripts), fork-aware.

It runs a ``Node`` on a private event loop in a background thread; every method hands its work
to that loop and waits for it with a deadline, so any number of threads may share one node. In a
child process forked after the node started, the first call starts a fresh node under its own
name (``name_<pid>``) and never touches the parent's sockets, which pre-fork servers rely on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from .._errors import Timeout, UsageError
from ..term import Pid, Reference
from ._errors import MailboxClosed
from ._loops import check_loop, new_event_loop
from ._mailbox import NOTHING as _NOTHING
from ._mailbox import Mailbox, Match, Slot, settler
from ._node import Node, full_node_name
from ._peer import _Peer
from ._threads import _SPIN

__all__ = ["BlockingMailbox", "BlockingNode", "epmd_names"]

log = logging.getLogger("beambridge.node")
T = TypeVar("T")

_instances: weakref.WeakSet[BlockingNode] = weakref.WeakSet()
_abandoned: list[Any] = []  # a forked child's copies of the parent's objects, never finalized
_GRACE = 2.0  # extra seconds a thread waits beyond an operation's own timeout
#: how long a blocking receive reads its connection itself before it leaves reading to the loop
_READ_WINDOW = 0.002


def _after_fork_in_child() -> None:
    for instance in list(_instances):
        instance._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class BlockingNode:
    """A thread-safe, blocking Erlang node; takes the same arguments as ``Node``.

    Starts at once (``start=False`` defers to ``start()``); use as a context manager or call
    ``close()``. Every blocking method takes a ``timeout``. ``loop`` picks the thread's event
    loop (``"auto"``: uvloop when installed; ``"asyncio"``; ``"uvloop"``), default
    ``$BEAMBRIDGE_LOOP``.
    """

    def __init__(self, name: str, cookie: str | None = None, *, start: bool = True,
                 loop: str | None = None, **options: Any) -> None:
        self._base_name = name
        self._loop_kind = loop if loop is None else check_loop(loop)
        self._cookie = cookie
        self._options = options
        self._lock = threading.Lock()
        self._forked = False
        self._generation = itertools.count()
        self._node: Node | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.generation = 0
        _instances.add(self)
        if start:
            self.start()

    # ---------------------------------------------------------------- life cycle

    def start(self, name: str | None = None) -> BlockingNode:
        with self._lock:
            if self._node is not None:
                raise UsageError("node already started")
            self._start_locked(name or self._base_name)
        return self

    def _start_locked(self, name: str) -> None:
        loop = new_event_loop(self._loop_kind)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name=f"beambridge-node-{name}", daemon=True)
        thread.start()
        ready.wait(10)
        node = Node(name, self._cookie, **self._options)
        node._busy_poll = _SPIN  # the loop thread is ours: it may spin as BEAM's schedulers do
        self._loop, self._thread, self._node, self._pid = loop, thread, node, os.getpid()
        self.generation = next(self._generation)
        try:
            self._run(node.start(), node.connect_timeout + 5)
        except BaseException:
            self._stop_loop()
            self._node = None
            raise

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        if not loop.is_running():
            loop.close()
            if self._node is not None:
                self._node._close_dups()  # a close that timed out left them to the loop
        self._loop = self._thread = None

    def close(self, timeout: float = 10.0) -> None:
        """Unregister, close every connection, stop the loop thread; wakes waiters with errors."""
        with self._lock:
            if self._forked:
                self._release_inherited()
                return
            node = self._node
            if node is None or self._loop is None:
                return
            try:
                self._run(node.close(), timeout)
            finally:
                self._stop_loop()

    def __enter__(self) -> BlockingNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _release_inherited(self) -> None:
        """In a forked child: drop the parent's sockets without a word on them."""
        node = self._node
        if node is not None:
            devnull = os.open(os.devnull, os.O_RDWR)
            try:
                for sock in node._sockets():
                    with contextlib.suppress(OSError):
                        os.dup2(devnull, sock.fileno())
            finally:
                os.close(devnull)
            _abandoned.append((node, self._loop, self._thread))
        self._node = self._loop = self._thread = None
        self._forked = False

    def _ensure(self) -> tuple[Node, asyncio.AbstractEventLoop]:
        if self._forked or os.getpid() != self._pid:
            with self._lock:
                if self._forked or os.getpid() != self._pid:
                    had_node = self._node is not None
                    self._release_inherited()
                    if had_node:
                        alive, _, host = self._base_name.partition("@")
                        name = f"{alive}_{os.getpid()}" + (f"@{host}" if host else "")
                        log.info("forked: starting a fresh node %s", name)
                        self._start_locked(name)
        node, loop = self._node, self._loop
        if node is None or loop is None:
            raise UsageError("node not started (or closed)")
        return node, loop

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        loop = self._loop
        assert loop is not None
        if threading.current_thread() is self._thread:
            coro.close()
            raise UsageError("a BlockingNode cannot be called from its own loop thread; use the "
                             "async Node API there (exposed functions run in worker threads)")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(None if timeout is None else timeout + _GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Timeout(f"no answer from the node's loop within {timeout} s") from None

    def _do(self, make: Callable[[Node], Coroutine[Any, Any, T]], timeout: float | None) -> T:
        node, _ = self._ensure()
        return self._run(make(node), timeout)

    def _sync(self, fn: Callable[[Node], T], timeout: float = 10.0) -> T:
        async def call(node: Node) -> T:
            return fn(node)
        return self._do(call, timeout)

    # ---------------------------------------------------------------- the API

    @property
    def name(self) -> str:
        return self._ensure()[0].name

    @property
    def node(self) -> Node:
        """The async ``Node`` underneath (use it only from its loop)."""
        return self._ensure()[0]

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._ensure()[1]

    def rpc(self, node: str, module: str, function: str, args: Iterable[Any] = (),
            timeout: float | None = 30.0) -> Any:
        """See ``Node.rpc``."""
        n, loop = self._ensure()
        self._check_thread()
        fast = n.rpc_from_thread(node, module, function, args)
        if fast is not None:
            # the request went out from this thread; the loop thread fills the waiter
            peer, req, waiter = fast
            if not n.wait_from_thread(peer, waiter, timeout):
                loop.call_soon_threadsafe(n._call_timeout, req, float(timeout or 0))  # kills it
                if not waiter.wait_filled(_GRACE):  # a late hand-over may wake it unfilled
                    raise Timeout(f"no answer from the node's loop within {timeout} s")
            if waiter.ok:
                return waiter.value
            raise waiter.value
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        loop.call_soon_threadsafe(n.begin_rpc, node, module, function, list(args), timeout,
                                  settler(result))
        return self._wait(result, timeout)

    def _check_thread(self) -> None:
        if threading.current_thread() is self._thread:
            raise UsageError("a BlockingNode cannot be called from its own loop thread; use the "
                             "async Node API there (exposed functions run in worker threads)")

    def _wait(self, result: concurrent.futures.Future[T], timeout: float | None) -> T:
        try:
            return result.result(None if timeout is None else timeout + _GRACE)
        except concurrent.futures.TimeoutError:
            raise Timeout(f"no answer from the node's loop within {timeout} s") from None

    def send(self, dest: Any, message: Any, timeout: float = 10.0) -> None:
        """See ``Node.send``."""
        n, loop = self._ensure()
        self._check_thread()
        if n.send_from_thread(dest, message, None):
            return
        result: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop.call_soon_threadsafe(n.begin_send, dest, message, None, settler(result), timeout)
        self._wait(result, timeout)

    def gen_call(self, dest: Any, request: Any, timeout: float | None = 5.0) -> Any:
        return self._do(lambda n: n.gen_call(dest, request, timeout), timeout)

    def gen_cast(self, dest: Any, request: Any, timeout: float = 10.0) -> None:
        self._do(lambda n: n.gen_cast(dest, request), timeout)

    def ping(self, node: str, timeout: float = 5.0) -> bool:
        return self._do(lambda n: n.ping(node, timeout), timeout)

    def connect(self, node: str, timeout: float | None = None) -> None:
        self._do(lambda n: n.connect(node, timeout), timeout if timeout is not None else 30.0)

    def nodes(self) -> list[str]:
        return self._sync(lambda n: n.nodes())

    def stats(self) -> dict[str, Any]:
        """See ``Node.stats``; an empty picture when the node is not open."""
        if self._node is None:  # closed or never opened: nothing counted (and nothing to open)
            return {"node": full_node_name(self._base_name), "peers": {}, "totals": {}}
        return self._sync(lambda n: n.stats())

    def names(self, host: str | None = None, timeout: float = 5.0) -> list[tuple[str, int]]:
        return self._do(lambda n: n.names(host, timeout), timeout)

    def expose(self, module: str, functions: Any, *, inline: bool = False) -> None:
        """See ``Node.expose``; plain functions run in worker threads."""
        self._sync(lambda n: n.expose(module, functions, inline=inline))

    def make_ref(self) -> Reference:
        return self._sync(lambda n: n.make_ref())

    def mailbox(self, name: str | None = None, *, trap_exits: bool = True) -> BlockingMailbox:
        mailbox = self._sync(lambda n: n.mailbox(name, trap_exits=trap_exits))
        return BlockingMailbox(self, mailbox, self.generation)

    def monitor_nodes(self, mailbox: BlockingMailbox, enable: bool = True) -> None:
        self._sync(lambda n: n.monitor_nodes(mailbox._mailbox, enable))


def epmd_names(host: str = "127.0.0.1", port: int | None = None,
               timeout: float = 5.0) -> list[tuple[str, int]]:
    """What EPMD on ``host`` has registered, ``[(name, port), ...]``, without starting a node
    (``beambridge names``). ``port`` defaults to ``$ERL_EPMD_PORT`` or 4369."""
    from ..protocol import epmd as _epmd
    from . import _epmd_client
    chosen = port if port is not None else int(os.environ.get("ERL_EPMD_PORT", _epmd.DEFAULT_PORT))
    return asyncio.run(_epmd_client.names(host, chosen, timeout))


class BlockingMailbox:
    """The blocking face of a ``Mailbox``; safe to use from any thread."""

    def __init__(self, owner: BlockingNode, mailbox: Mailbox, generation: int) -> None:
        self._owner = owner
        self._mailbox = mailbox
        self._generation = generation
        self.pid: Pid = mailbox.pid
        self.name = mailbox.name
        #: the connection this mailbox last sent on, where its answers are likely to come
        self._peer: _Peer | None = None

    def __repr__(self) -> str:
        return f"<BlockingMailbox {self.pid!r}>"

    def _do(self, make: Callable[[Mailbox], Coroutine[Any, Any, T]], timeout: float | None) -> T:
        self._owner._ensure()
        if self._owner.generation != self._generation:
            raise MailboxClosed("the node restarted after a fork; this mailbox belonged to the parent")
        return self._owner._run(make(self._mailbox), timeout)

    def receive(self, timeout: float | None = None, match: Match | None = None) -> Any:
        """The oldest (matching) message; ``Timeout`` after ``timeout`` s, ``MailboxClosed``."""
        self._owner._ensure()
        if self._owner.generation != self._generation:
            raise MailboxClosed("the node restarted after a fork; this mailbox belonged to the parent")
        self._owner._check_thread()
        result = Slot()
        mailbox = self._mailbox
        mailbox.attach(match, result)  # under the mailbox's lock: no hop to the loop thread
        start = time.monotonic()
        n, peer = self._owner._node, self._peer
        if result.ok is None and n is not None and peer is not None and peer.alive:
            # An answer usually comes soon, on the connection this mailbox last sent on: read it
            # here for a moment, as a blocking rpc caller does (no wake-up of the loop thread and
            # then of this one); after that the loop reads, and anything delivers at once.
            n.wait_from_thread(peer, result, _READ_WINDOW if timeout is None
                               else min(timeout, _READ_WINDOW))
        left = None if timeout is None else timeout - (time.monotonic() - start)
        if result.ok is not None or result.wait_filled(left):
            return result.result()
        # give up, unless a message slipped in meanwhile (then it is ours: nothing is lost)
        got = mailbox.detach(result)
        if got is _NOTHING:
            raise Timeout(f"no message within {timeout} s")
        return got

    def send(self, dest: Any, message: Any, timeout: float = 10.0) -> None:
        owner = self._owner
        n, loop = owner._ensure()
        owner._check_thread()
        peer = n.send_from_thread(dest, message, self._mailbox)
        if peer is not None:
            self._peer = peer
            return
        result: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop.call_soon_threadsafe(n.begin_send, dest, message, self._mailbox, settler(result),
                                  timeout)
        owner._wait(result, timeout)

    def link(self, pid: Pid, timeout: float = 10.0) -> None:
        self._do(lambda m: m.link(pid), timeout)

    def unlink(self, pid: Pid, timeout: float = 10.0) -> None:
        self._do(lambda m: m.unlink(pid), timeout)

    def monitor(self, target: Any, timeout: float = 10.0) -> Reference:
        return self._do(lambda m: m.monitor(target), timeout)

    def demonitor(self, ref: Reference, timeout: float = 10.0) -> None:
        self._do(lambda m: m.demonitor(ref), timeout)

    def monitor_node(self, node: str, enable: bool = True) -> None:
        async def go(m: Mailbox) -> None:
            m.monitor_node(node, enable)
        self._do(go, 10.0)

    def close(self, reason: Any = None) -> None:
        async def go(m: Mailbox) -> None:
            if reason is None:
                m.close()
            else:
                m.close(reason)
        with contextlib.suppress(MailboxClosed, UsageError):
            self._do(go, 10.0)

    @property
    def closed(self) -> Any:
        return self._mailbox.closed

    def __enter__(self) -> BlockingMailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
