"""One live connection to another node: the write path any thread may use (writes
coalesced, or sent straight to the socket by a blocking caller; encrypted on the way when the
connection is TLS), and the protocol object the transport feeds once the handshake is done."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import socket
import ssl
import threading
import time
from typing import Any, Protocol

from .._errors import EncodeError
from ..protocol import Connection as _Protocol
from ..protocol import ControlMessage, Flag
from ..term import Atom, Mapping
from ._errors import NoConnection
from ._mailbox import Slot
from ._stats import PeerStats
from ._tls_session import TlsSession

log = logging.getLogger("beambridge.node")


_WRITE_HIGH_WATER = 4 << 20
_COALESCE_LIMIT = 64 << 10
_SPAWN = int(Flag.SPAWN)  # plain int: an IntFlag operation builds an enum member each time
#: how long a thread that reads its connection itself (``owner``) may stay away before the
#: loop takes reading back (others' messages wait at most about this long meanwhile); also
#: the time between the watchdog's looks at the calls a reading worker runs unseen
_OWNER_IDLE = 0.002


class Corks:
    """Writes the loop makes while it applies what one connection delivered, held back until it
    is done: the replies to a packet's messages leave together, in one system call each and in
    this loop iteration (an erpc call's spawn reply and its result: one write, not two and an
    extra loop turn). Loop only."""

    __slots__ = ("active", "peers")

    def __init__(self) -> None:
        self.active = False
        self.peers: list[_Peer] = []

    def release(self) -> None:
        self.active = False
        peers, self.peers = self.peers, []
        for peer in peers:
            peer.flush()


class _Peer:
    """One live connection. After the handshake its transport feeds ``_PeerProtocol`` directly
    (no stream reader task: one loop iteration less per message that arrives)."""

    __slots__ = (
        "active",
        "alive",
        "corks",
        "creation",
        "dup",
        "flags",
        "flush_scheduled",
        "last_recv",
        "last_sent",
        "leads",
        "loop",
        "loop_writes",
        "name",
        "olock",
        "owner",
        "paused",
        "pending",
        "poll_credit",
        "posted",
        "posted_n",
        "processed",
        "proto",
        "reader",
        "rlock",
        "sock",
        "stats",
        "tasks",
        "tls",
        "tls_broken",
        "tq",
        "transport",
        "waiting",
        "wlock",
        "writer",
    )

    def __init__(self, name: Atom, proto: _Protocol, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, flags: int, creation: int, stats: PeerStats,
                 corks: Corks | None = None, tls: TlsSession | None = None) -> None:
        self.name = name
        self.corks = corks or Corks()
        #: counted under the write lock (out) and the read lock (in); kept by the node
        self.stats = stats
        self.proto = proto
        self.reader = reader
        self.writer = writer  # kept: a collected StreamWriter closes its transport
        self.transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        self.flags = flags
        self.creation = creation
        self.last_sent = self.last_recv = time.monotonic()
        self.tasks: list[asyncio.Task[Any]] = []
        self.alive = True
        self.pending: list[bytes] = []
        self.flush_scheduled = False
        self.loop = asyncio.get_running_loop()
        self.paused: asyncio.Future[None] | None = None
        #: orders the loop's writes with other threads' direct ones (``write_from_thread``)
        self.wlock = threading.Lock()
        #: other threads' writes waiting for the write lock's holder (``write_from_thread``)
        self.tq: collections.deque[bytes] = collections.deque()
        #: TLS done here (``_tls_session``), not by the transport: under the write lock, any
        #: thread encrypts as it writes and decrypts as it reads (None: plain TCP)
        self.tls = tls
        self.tls_broken = False  # it could not encrypt: the connection is closing
        #: writes the loop made (``write``), and the busy polls it may still make here
        #: (``Connections._on_peer_data``)
        self.loop_writes = 0
        self.poll_credit = 64
        #: the plain socket threads write and read directly, and the duplicate this connection
        #: made of it (closed with the connection)
        self.sock, self.dup = _plain_socket(self.transport)
        # Reading: the loop, or one blocking caller (the "owner") while the transport's reading is
        # paused for it; ``rlock`` serializes feeding ``proto``, ``olock`` guards owner/active.
        self.rlock = threading.Lock()
        self.olock = threading.Lock()
        self.owner: int | None = None
        self.active = False
        self.leads = 0  # times the owner started reading (the loop's watchdog sees it idle)
        #: blocking callers waiting for a reply here, by thread: the owner hands reading to one
        self.waiting: dict[int, Slot] = {}
        #: events the owner handed to the loop, and how many of them the loop has applied
        self.posted = itertools.count(1)
        self.posted_n = 0
        self.processed = 0

    def close_dup(self) -> None:
        """Close our duplicate of the socket (the peer is down): the connection ends when the
        transport closes its own. Not while an owner is in ``recv`` on it (``rlock``): its file
        descriptor's number could be reused by another connection meanwhile."""
        dup = self.dup
        if dup is not None:
            with self.rlock:
                self.sock = None
                dup.close()
            self.dup = None  # only now: a fork meanwhile still finds it (``Node._sockets``)

    def send(self, message: ControlMessage, mapping: Mapping | None = None) -> None:
        if not self.alive:
            raise NoConnection(self.name, "connection closed")
        self.write(self.proto.send(message, mapping=mapping))

    def write(self, data: bytes, count: int = 1) -> None:
        """Write at once when nothing else went out in this loop iteration; later writes of the
        same iteration are queued and leave in one system call at its end (system calls, not
        Python, are the cost of many small messages; latency is the cost of one). While the
        loop is corked (``Corks``) every write waits for its release. Loop only. ``count``:
        the messages ``data`` holds, for the statistics."""
        self.last_sent = time.monotonic()
        self.loop_writes += 1
        self.wlock.acquire()
        try:
            stats = self.stats
            stats.messages_out += count
            stats.bytes_out += len(data)
            if self.tls is not None:
                data = self._encrypt(data)  # in wire order: the lock is held
            if not self.flush_scheduled:
                self.flush_scheduled = True
                corks = self.corks
                if corks.active:
                    corks.peers.append(self)
                    self.pending.append(data)
                    return
                self.loop.call_soon(self.flush)
                if not self.pending:
                    self.transport.write(data)
                    return
                self.pending.append(data)
                return
            if len(data) >= _COALESCE_LIMIT:
                self._flush_locked()
                self.transport.write(data)
                return
            self.pending.append(data)
        finally:  # ``_unlock``, inline: a write per message
            self.wlock.release()
            if self.tq and self.sock is not None:
                self._drain(self.sock)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.pending:
            self.wlock.acquire()
            try:
                self._flush_locked()
            finally:
                self._unlock()

    def _unlock(self) -> None:
        """Release the write lock, then send what other threads queued while it was held (they
        did not wait for it: see ``write_from_thread``)."""
        self.wlock.release()
        if self.tq and self.sock is not None:
            self._drain(self.sock)

    def _drain(self, sock: socket.socket) -> None:
        """Send the threads' queue unless another holder of the write lock is there to do it."""
        queue, lock = self.tq, self.wlock
        while queue:
            if not lock.acquire(blocking=False):
                return  # the holder sends it when it lets go (``_unlock``)
            try:
                self._send_queued(sock)
            finally:
                lock.release()

    def _flush_locked(self) -> None:
        pending = self.pending
        if pending and self.alive:
            data = b"".join(pending) if len(pending) > 1 else pending[0]
            pending.clear()
            self.transport.write(data)

    def write_from_thread(self, data: bytes, *more: bytes) -> bool:
        """Another thread's write of one or more packets, straight to the socket (no hop to the
        loop thread); False when this transport has no plain socket and the loop must write it.

        Flat combining: the data is queued, and whoever holds the write lock sends everything
        queued (one system call for several threads' messages). A thread that finds the lock
        taken returns at once instead of sleeping on it: the holder looks at the queue again
        after it lets go, so nothing is left behind.
        """
        sock = self.sock
        if sock is None:
            return False
        if more:
            self.tq.extend((data, *more))  # together: one system call, and in order
        else:
            self.tq.append(data)
        self._drain(sock)
        return True

    def _send_queued(self, sock: socket.socket) -> None:
        """Send what threads queued (write lock held). What the socket does not take at once, and
        anything behind the loop's own queue, goes to the loop's queue, which flushes in order."""
        queue = self.tq
        count = len(queue)
        if count == 1:  # the usual case: one caller's request
            data = queue.popleft()
        elif count:
            data = b"".join([queue.popleft() for _ in range(count)])
        else:
            return
        if not self.alive:
            return  # a dead connection: its callers are told by the loop (or see it dead)
        stats = self.stats
        stats.messages_out += count
        stats.bytes_out += len(data)
        if self.tls is not None:
            try:
                data = self._encrypt(data)
            except NoConnection:
                return  # the connection is being closed (``_encrypt``)
        if self.pending or self.transport.get_write_buffer_size():
            self.pending.append(data)
            self.loop.call_soon_threadsafe(self.flush)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # the loop sees the broken connection and reports it
        self.last_sent = time.monotonic()
        if sent < len(data):
            self.pending.append(data[sent:])
            self.loop.call_soon_threadsafe(self.flush)

    def _encrypt(self, data: bytes) -> bytes:
        """TLS records for ``data`` (write lock held). A session that cannot encrypt is broken:
        the connection is closed (its callers are told as for any lost connection)."""
        assert self.tls is not None
        if self.tls_broken:
            raise NoConnection(self.name, "TLS: the session broke; the connection is closing")
        try:
            return self.tls.encrypt(data)
        except ssl.SSLError as error:
            self.tls_broken = True
            log.warning("closing connection to %s: TLS cannot encrypt: %s", self.name, error)
            with contextlib.suppress(RuntimeError):  # a closed loop: the node is gone
                self.loop.call_soon_threadsafe(self.transport.abort)
            raise NoConnection(self.name, f"TLS: {error}") from None

    def decrypt(self, data: bytes, *, on_loop: bool) -> tuple[bytes, bool]:
        """TLS: the plaintext that records read from the socket complete, and whether the peer
        ended TLS after it. Under the write lock, as encryption: one session serves both ways,
        and what TLS sends on its own (a key update's answer) joins our writes in order.
        Raises ``ssl.SSLError`` on a bad record."""
        assert self.tls is not None
        self.wlock.acquire()
        try:
            plain, out, closed = self.tls.decrypt(data)
            if out:
                self.pending.append(out)
                if on_loop:
                    self.loop.call_soon(self.flush)
                else:
                    self.loop.call_soon_threadsafe(self.flush)
            return plain, closed
        finally:
            self._unlock()

    def send_quiet(self, message: ControlMessage) -> None:
        """Send a signal; a dead connection or an unencodable term is logged, not raised."""
        try:
            self.send(message)
        except (NoConnection, EncodeError) as error:
            log.debug("signal %r to %s not sent: %s", type(message).__name__, self.name, error)

    async def drain(self) -> None:
        """Wait while the transport holds more than its high-water mark of unsent bytes."""
        if not self.alive:
            return
        if self.pending and self.transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
            self.flush()
        waiter = self.paused
        if waiter is not None:
            await asyncio.shield(waiter)

    def pause_writing(self) -> None:
        if self.paused is None:
            self.paused = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self.paused = self.paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _plain_socket(transport: asyncio.Transport) -> tuple[socket.socket | None, socket.socket | None]:
    """The plain socket under ``transport`` that other threads may use, and the duplicate made
    to get it (to close with the connection): a duplicate of the transport's descriptor, the
    same open file, non-blocking like it. Always ours, never the transport's own socket: only
    ``_Peer.close_dup`` closes it, under ``rlock``, so a thread reading it with the GIL given up
    (``_wait.recv_within``) never finds its number closed and reused by another connection, as
    a selector transport's own socket could be (asyncio closes that one on the loop, at any
    time). uvloop's transports hand out only a stand-in without ``recv``/``send`` anyway."""
    if transport.get_extra_info("sslcontext") is not None:
        return None, None  # TLS by the transport: its bytes on the socket are not ours
    shown = transport.get_extra_info("socket")
    if shown is None:
        return None, None
    try:
        fd = os.dup(shown.fileno())
    except (OSError, ValueError) as error:
        _no_direct_path(error)
        return None, None
    try:
        dup = socket.socket(fileno=fd)
    except OSError as error:
        os.close(fd)
        _no_direct_path(error)
        return None, None
    dup.setblocking(False)
    return dup, dup


def _no_direct_path(error: BaseException) -> None:
    # out of descriptors, most likely: the connection works, only slower, so say so once here
    log.warning("no duplicate of a connection's socket (%s): its blocking callers go through "
                "the loop thread", error)


class PeerHost(Protocol):
    """What a connection's protocol object tells its node (the node, without importing it)."""

    def _on_peer_data(self, peer: _Peer, data: bytes | None) -> None: ...

    def _peer_down(self, peer: _Peer, reason: str) -> None: ...


class _PeerProtocol(asyncio.Protocol):
    """The transport's protocol once a connection is up: bytes go straight to the node."""

    def __init__(self, node: PeerHost, peer: _Peer) -> None:
        self._node = node
        self._peer = peer

    def data_received(self, data: bytes) -> None:
        self._node._on_peer_data(self._peer, data)

    def eof_received(self) -> bool:
        self._node._on_peer_data(self._peer, b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._peer.resume_writing()
        self._node._peer_down(self._peer, str(exc) if exc else "connection closed")

    def pause_writing(self) -> None:
        self._peer.pause_writing()

    def resume_writing(self) -> None:
        self._peer.resume_writing()
