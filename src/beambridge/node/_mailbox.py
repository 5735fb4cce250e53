"""Mailboxes: the Python processes of a node, with a pid, links and monitors.

A mailbox queues what Erlang sends to its pid (or registered name); ``receive`` can pick one
message out of order with ``match``. Exit signals arrive as ``('EXIT', From, Reason)`` messages
when ``trap_exits`` is on (the default), else a non-``normal`` one closes the mailbox, as it
would kill an Erlang process. Monitors deliver ``('DOWN', Ref, process, Target, Reason)``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .._errors import Timeout, UsageError
from ..term import Atom, Pid, Reference
from ._errors import MailboxClosed

__all__ = ["Mailbox"]

EXIT = Atom("EXIT")
DOWN = Atom("DOWN")
PROCESS = Atom("process")
NORMAL = Atom("normal")
KILL = Atom("kill")
KILLED = Atom("killed")
NODEDOWN = Atom("nodedown")

Match = Callable[[Any], bool]
#: What ``detach`` returns when no message was handed over.
NOTHING: Any = object()


class _Settleable(Protocol):
    def done(self) -> bool: ...
    def set_result(self, value: Any, /) -> None: ...
    def set_exception(self, error: BaseException, /) -> None: ...


def settler(future: _Settleable) -> Callable[[bool, Any], None]:
    """The ``done(ok, value)`` callback the node's callback-form calls take, filling an asyncio
    or a thread future (or a ``Slot``) once; later outcomes are dropped."""
    def done(ok: bool, value: Any) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
    return done


class Slot:
    """A blocking caller's place for one result (a message, an rpc reply), filled once from any
    thread.

    The subset of ``concurrent.futures.Future`` that mailboxes use, over one bare lock (a
    Future's Condition and notify cost several microseconds per message), plus the waiter
    protocol of the node's blocking callers: ``ok`` (None until filled), ``wait``, and ``wake``,
    which also tells a waiter that it may now read its connection itself.
    """

    __slots__ = ("_lock", "ok", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.ok: bool | None = None
        self.value: Any = None

    def done(self) -> bool:
        return self.ok is not None

    def cancelled(self) -> bool:
        return False

    def fill(self, ok: bool, value: Any) -> None:
        """The outcome (``ok``: a value, else an exception); only the first one counts."""
        if self.ok is None:
            self.ok, self.value = ok, value
            self.wake()

    def set_result(self, value: Any) -> None:
        self.fill(True, value)

    def set_exception(self, error: BaseException) -> None:
        self.fill(False, error)

    def exception(self) -> BaseException | None:
        return self.value if self.ok is False else None

    def result(self) -> Any:
        if self.ok is False:
            raise self.value
        return self.value

    def wake(self) -> None:
        # not contextlib.suppress: this runs once per message, and that costs a microsecond
        try:  # noqa: SIM105
            self._lock.release()
        except RuntimeError:  # already released: it wakes anyway
            pass

    def wait(self, timeout: float | None) -> bool:
        """True when woken (filled, or told to read); False when ``timeout`` passed first."""
        return self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))

    def wait_filled(self, timeout: float | None) -> bool:
        """``wait`` that sleeps on through wake-ups that did not fill it: True once filled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.ok is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0) or not self.wait(remaining):
                break
        return self.ok is not None


class ProcessHost(Protocol):
    """What a mailbox asks of the node it lives on (``Node``; named here so that this module
    does not import the node)."""

    name: str

    async def send(self, dest: Any, message: Any, *, sender: Mailbox | None = None,
                       timeout: float | None = None) -> None: ...
    async def _link(self, mailbox: Mailbox, pid: Pid) -> None: ...
    async def _unlink(self, mailbox: Mailbox, pid: Pid) -> None: ...
    async def _monitor(self, mailbox: Mailbox, target: Any) -> Reference: ...
    async def _demonitor(self, mailbox: Mailbox, ref: Reference) -> None: ...
    def _process_ended(self, mailbox: Mailbox, reason: Any) -> None: ...


class Mailbox:
    """A Python process on a ``Node``; made by ``Node.mailbox()``."""

    def __init__(self, node: ProcessHost, pid: Pid, name: Atom | None, trap_exits: bool) -> None:
        self._node = node
        self.pid = pid
        self.name = name
        self.trap_exits = trap_exits
        self._queue: deque[Any] = deque()
        self._waiters: list[tuple[Match | None, asyncio.Future[Any] | Slot]] = []
        #: guards ``_queue``/``_waiters`` against blocking receivers on other threads
        self._lock = threading.Lock()
        self.links: set[Pid] = set()
        #: monitors others hold on us: ref -> (watcher pid, target as they named it)
        self.monitors_in: dict[Reference, tuple[Pid, Pid | Atom]] = {}
        #: monitors we hold: ref -> (target pid or name, node of the target)
        self.monitors_out: dict[Reference, tuple[Pid | Atom, Atom]] = {}
        self.node_monitors: set[Atom] = set()
        self.closed: Any = None

    def __repr__(self) -> str:
        return f"<Mailbox {self.pid!r}{' ' + self.name if self.name else ''}>"

    @property
    def node(self) -> ProcessHost:
        """The node this mailbox lives on (a ``Node``)."""
        return self._node

    # ---------------------------------------------------------------- delivery (loop thread)

    def deliver(self, message: Any) -> None:
        """Queue ``message`` or hand it to a waiting ``receive``."""
        if self.closed is not None:
            return
        with self._lock:
            self._deliver_locked(message)

    def _deliver_locked(self, message: Any) -> None:
        waiters = self._waiters
        for i, (match, future) in enumerate(waiters):
            if future.done():
                continue
            if match is None or _matches(match, message):
                del waiters[i]
                future.set_result(message)
                return
        self._queue.append(message)

    def deliver_from_thread(self, message: Any) -> bool:
        """``deliver`` from a thread other than the loop's (a blocking caller reading its
        connection); False when an async receive waits here (its future is the loop's to fill)."""
        if self.closed is not None:
            return True
        with self._lock:
            for _, future in self._waiters:
                if type(future) is not Slot:
                    return False
            self._deliver_locked(message)
        return True

    def exit_signal(self, sender: Pid | Atom, reason: Any, *, kill: bool = False) -> None:
        """An exit signal arrived: a message when trapping, else the end of this mailbox."""
        if self.closed is not None:
            return
        if kill:
            self.close(KILLED)
        elif self.trap_exits:
            self.deliver((EXIT, sender, reason))
        elif reason != NORMAL:
            self.close(reason)

    # ---------------------------------------------------------------- user side

    async def receive(self, timeout: float | None = None, match: Match | None = None) -> Any:
        """The oldest message (or the oldest that ``match`` accepts); waits up to ``timeout`` s.

        Raises ``Timeout`` when nothing came, ``MailboxClosed`` once the mailbox is closed.
        """
        queue = self._queue
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = (match, future)
        with self._lock:
            if queue:
                if match is None:
                    return queue.popleft()
                for i, message in enumerate(queue):
                    if _matches(match, message):
                        del queue[i]
                        return message
            if self.closed is not None:
                raise MailboxClosed(self.closed)
            if timeout is not None and timeout <= 0:
                raise Timeout("no message")
            self._waiters.append(entry)
        taken = False
        try:
            async with asyncio.timeout(timeout):
                message = await future
                taken = True
                return message
        except TimeoutError:
            raise Timeout(f"no message within {timeout} s") from None
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                elif (not taken and future.done() and not future.cancelled()
                      and future.exception() is None):
                    # delivered just as we gave up (timeout or cancel): put it back, nothing is lost
                    queue.appendleft(future.result())

    def attach(self, match: Match | None, result: Slot) -> None:
        """A blocking receive (any thread): fill ``result`` now or when a message comes."""
        with self._lock:
            for i, message in enumerate(self._queue):
                if match is None or _matches(match, message):
                    del self._queue[i]
                    result.set_result(message)
                    return
            if self.closed is not None:
                result.set_exception(MailboxClosed(self.closed))
                return
            self._waiters.append((match, result))

    def detach(self, result: Slot) -> Any:
        """Withdraw a blocking receive (any thread); returns the message it got meanwhile, else
        ``NOTHING``."""
        with self._lock:
            for i, (_, waiting) in enumerate(self._waiters):
                if waiting is result:
                    del self._waiters[i]
                    return NOTHING
        if result.done() and result.exception() is None:
            return result.result()
        return NOTHING

    def receive_nowait(self, match: Match | None = None) -> Any:
        """A queued message, or ``Timeout`` at once when none matches."""
        with self._lock:
            for i, message in enumerate(self._queue):
                if match is None or _matches(match, message):
                    del self._queue[i]
                    return message
        if self.closed is not None:
            raise MailboxClosed(self.closed)
        raise Timeout("no message")

    def __len__(self) -> int:
        return len(self._queue)

    async def send(self, dest: Any, message: Any) -> None:
        """Send ``message`` to ``dest`` with this mailbox as the sender."""
        await self._node.send(dest, message, sender=self)

    async def link(self, pid: Pid) -> None:
        """Link to ``pid``: when either ends abnormally, the other gets an exit signal."""
        self._check_open()
        await self._node._link(self, pid)

    async def unlink(self, pid: Pid) -> None:
        self._check_open()
        await self._node._unlink(self, pid)

    async def monitor(self, target: Pid | str | tuple[str, str]) -> Reference:
        """Monitor a pid, a registered name here, or ``(name, node)``; returns the reference that
        the ``DOWN`` message will carry. As in Erlang, its fourth element is the pid, or
        ``(Atom(name), Atom(node))`` for a name (``noproc`` at once if nothing has that name)."""
        self._check_open()
        return await self._node._monitor(self, target)

    async def demonitor(self, ref: Reference) -> None:
        await self._node._demonitor(self, ref)

    def monitor_node(self, node: str, enable: bool = True) -> None:
        """Get ``('nodedown', Node)`` when the connection to ``node`` goes down."""
        atom = Atom(node)
        if enable:
            self.node_monitors.add(atom)
        else:
            self.node_monitors.discard(atom)

    def close(self, reason: Any = NORMAL) -> None:
        """End this process: linked and monitoring processes are told ``reason``; waiters wake."""
        if self.closed is not None:
            return
        self.closed = reason
        self._node._process_ended(self, reason)
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for _, future in waiters:
            if not future.done():
                future.set_exception(MailboxClosed(reason))

    def _check_open(self) -> None:
        if self.closed is not None:
            raise MailboxClosed(self.closed)

    async def __aenter__(self) -> Mailbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _matches(match: Match, message: Any) -> bool:
    try:
        return bool(match(message))
    except Exception:  # a match that fails on a message's shape simply does not match it
        return False


def check_name(name: Any) -> Atom:
    if isinstance(name, Atom):
        return name
    if isinstance(name, str) and name:
        return Atom(name)
    raise UsageError(f"a registered name is a non-empty str, not {name!r}")
