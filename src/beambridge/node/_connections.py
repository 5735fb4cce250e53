"""Connections: opened on demand (EPMD lookup, TCP or TLS, the handshake), accepted within
bounds (handshakes in progress, per address, each within its deadline), kept up with ticks, and
taken down with their links and monitors fired."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
import ssl
import struct
import time
from typing import Any

from .._errors import Timeout, UsageError
from ..protocol import (
    NEED_DATA,
    HandshakeFailed,
    NameReceived,
    RemoteProtocolError,
    Role,
    StatusReceived,
    Tick,
    dynamic_name,
)
from ..protocol import Connected as _Connected
from ..protocol import Connection as _Protocol
from ..protocol import ConnectionClosed as _Closed
from ..term import Atom
from . import _epmd_client
from ._core import NodeCore
from ._errors import EpmdUnavailable, NoConnection
from ._mailbox import DOWN, NODEDOWN, PROCESS, Mailbox
from ._names import NOCONNECTION, _monitored, full_node_name
from ._peer import _WRITE_HIGH_WATER, _Peer, _PeerProtocol
from ._stats import PeerStats
from ._tls import TlsHandshakeFailed
from ._tls_session import TlsSession, TlsStreams
from ._wait import recv_within

log = logging.getLogger("beambridge.node")


_ACCEPT_BATCH = 64  # connections accepted per readiness event (then others' events run)
_ACCEPT_RETRY = 1.0  # seconds without accepting after accept() failed (as asyncio does)
_LISTEN_BACKLOG = 128
_HANDSHAKE_READ = 16 << 10  # stream buffer while handshaking: handshake messages are small
_LINGER_RESET = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT left for a refusal
#: batches one readiness event may read by busy polling (``_on_peer_data``) before the loop
#: runs its other work again; a peer's credit of polls (a miss costs one, a hit earns four),
#: the answered batches a peer without credit is left alone for, and the credit it then has
_POLL_BUDGET = 16
_POLL_CREDIT = 64
_POLL_SKIP = 64
_POLL_RETRY = 8


class Connections(NodeCore):
    """The node's connection set (a part of ``Node``)."""

    # ================================================================ connections

    def nodes(self) -> list[str]:
        """Names of the nodes connected now."""
        return [str(name) for name, peer in self._peers.items() if peer.alive]

    async def connect(self, node: str, timeout: float | None = None) -> None:
        """Connect to ``node`` now (sends and calls connect on demand anyway)."""
        await self._peer(Atom(full_node_name(node)), timeout)

    async def _peer(self, node: Atom, timeout: float | None = None) -> _Peer:
        self._check_running()
        peer = self._peers.get(node)
        if peer is not None and peer.alive:
            return peer
        if node == self.node_atom:
            raise UsageError("a node does not connect to itself")
        future = self._pending.get(node)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_consume_exception)
            self._pending[node] = future
            self._connecting[node] = asyncio.ensure_future(self._connect(node, future))
        limit = self.connect_timeout if timeout is None else min(timeout, self.connect_timeout)
        try:
            return await asyncio.wait_for(asyncio.shield(future), limit)
        except TimeoutError:
            raise NoConnection(node, f"no connection within {limit} s") from None

    async def _connect(self, node: Atom, future: asyncio.Future[_Peer]) -> None:
        opened: asyncio.StreamWriter | None = None
        try:
            alive, _, host = node.partition("@")
            info = await _epmd_client.lookup(host, self.epmd_port, alive, self.connect_timeout)
            if info is None:
                raise NoConnection(node, f"{alive!r} is not registered with EPMD on {host}")
            reader, writer, session = await asyncio.wait_for(self._open(node, host, info.port),
                                                             self.connect_timeout)
            opened = writer
            proto = _Protocol(Role.INITIATOR, this_node=self.name, cookie=self._cookie,
                              creation=self.creation, flags=self._flags, peer_node=str(node),
                              mapping=self.mapping, **self._proto_options)
            first = proto.start()
            writer.write(first if session is None else session.encrypt(first))
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    connected = await self._handshake(proto, reader, writer, session)
            except TimeoutError:
                raise NoConnection(node, f"handshake not finished within {self.handshake_timeout} s "
                                         "(handshake_timeout)") from None
            if connected is None:
                return  # lost the simultaneous-connect arbitration: the peer's connection wins
            self._peer_up(proto, reader, writer, connected, session)
            opened = None
        except asyncio.CancelledError:
            raise
        except HandshakeFailed as error:
            if error.reason == "nok":
                # simultaneous connect and the peer's attempt wins; it resolves the future
                log.debug("simultaneous connect to %s: waiting for its connection", node)
                self._spawn_task(self._expire_pending(node, future))
                return
            if self.tls is not None and error.reason == "closed" and error.state == "await_status":
                # Under TLS 1.3 a peer that refuses our certificate may close before its alert
                # is read; before the status, nothing else (not the cookie) can have failed.
                self._fail_pending(node, future, TlsHandshakeFailed(
                    node, "the peer closed the connection right after TLS: it most likely refused "
                          "our certificate"))
                return
            self._fail_pending(node, future, error)
        except (TimeoutError, Timeout):
            self._fail_pending(node, future, NoConnection(node, "handshake timed out"))
        except NoConnection as error:
            self._fail_pending(node, future, error)
        except ssl.SSLError as error:
            self._fail_pending(node, future, TlsHandshakeFailed(node, _tls_reason(error)))
        except (OSError, RemoteProtocolError, EpmdUnavailable) as error:
            if self.tls is not None and isinstance(error, ConnectionResetError | BrokenPipeError):
                error = TlsHandshakeFailed(node, f"the peer closed the connection during TLS ({error})")
            self._fail_pending(node, future, error if isinstance(error, NoConnection)
                               else NoConnection(node, str(error)))
        finally:
            if self._connecting.get(node) is asyncio.current_task():
                del self._connecting[node]
            if opened is not None:
                opened.close()

    async def _open(self, node: Atom, host: str, port: int
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, TlsSession | None]:
        """A connection to a peer's listening port: TCP, then TLS with the client context (done
        by the node itself over the TCP stream: see ``_tls_session``)."""
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port)
        if self.tls is None:
            return reader, writer, None
        # Within what is left of connect_timeout, so that a peer which never answers TLS (a
        # plain-TCP node waits for more of what it takes for a handshake packet) is named as such.
        budget = max(0.1, self.connect_timeout - (time.monotonic() - started) - 0.25)
        try:
            session = TlsSession(self.tls.client, server_side=False,
                                 server_hostname=self.tls.client_hostname(host))
            async with asyncio.timeout(budget):
                await session.handshake(reader, writer)
        except TimeoutError:
            writer.close()
            raise TlsHandshakeFailed(node, f"no TLS answer within {budget:.1f} s: is it a plain-TCP "
                                           "node? (TLS nodes run -proto_dist inet_tls)") from None
        except BaseException:
            writer.close()
            raise
        return reader, writer, session

    async def _accepted(self, conn: socket.socket
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, TlsSession | None]:
        """Streams over a connection we accepted: TCP, then TLS with the server context (the
        caller bounds the time)."""
        reader, writer = await asyncio.open_connection(sock=conn, limit=_HANDSHAKE_READ)
        if self.tls is None:
            return reader, writer, None
        assert self.tls.server is not None  # Node refuses a TLS setting without server options
        try:
            session = TlsSession(self.tls.server, server_side=True)
            await session.handshake(reader, writer)
        except BaseException:
            writer.close()  # the transport, not just the socket under it
            raise
        return reader, writer, session

    async def _expire_pending(self, node: Atom, future: asyncio.Future[_Peer]) -> None:
        await asyncio.sleep(self.connect_timeout)
        self._fail_pending(node, future, NoConnection(node, "simultaneous connect did not complete"))

    def _fail_pending(self, node: Atom, future: asyncio.Future[_Peer], error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)
        if self._pending.get(node) is future:
            del self._pending[node]

    async def _handshake(self, proto: _Protocol, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, session: TlsSession | None
                         ) -> _Connected | None:
        """Run the handshake to its end (inside TLS when ``session``); ``None`` when we gave way
        to a simultaneous connect."""
        tls = TlsStreams(session, reader, writer) if session is not None else None
        write = writer.write if tls is None else tls.write
        while True:
            event = proto.next_event()
            out = proto.data_to_send()
            if out:
                write(out)
            if event is NEED_DATA:
                data = await (reader.read(65536) if tls is None else tls.read())
                proto.receive_data(data)
                continue
            if isinstance(event, _Connected):
                return event
            if isinstance(event, StatusReceived):
                if event.status == "alive":
                    # we are connecting anew, so any connection the peer remembers is dead
                    write(proto.answer_alive(True))
                continue
            if isinstance(event, NameReceived):
                if event.dynamic:  # a peer without a name (erl_call -R): net_kernel names it
                    if self._closed:
                        write(proto.accept_name("not_allowed"))
                        await writer.drain()
                        return None
                    name, creation = self._unused_dynamic_name(event.name)
                    write(proto.accept_name("named", name=name, creation=creation))
                    continue
                status = self._arbitrate(Atom(event.name))
                write(proto.accept_name(status))
                if status in ("nok", "not_allowed"):
                    await writer.drain()
                    return None
                continue
            if isinstance(event, _Closed):
                raise HandshakeFailed("closed", "peer closed the connection during the handshake")

    def _unused_dynamic_name(self, host: str) -> tuple[str, int]:
        """A dynamic name at ``host`` (and its creation) that no connection uses: a clash of
        64 random bits is unlikely, but net_kernel checks too."""
        while True:
            name, creation = dynamic_name(host)
            if Atom(name) not in self._peers and Atom(name) not in self._connecting:
                return name, creation

    def _arbitrate(self, other: Atom) -> str:
        """The status for an incoming name (see ``net_kernel``'s simultaneous-connect rule)."""
        if self._closed:
            return "not_allowed"
        peer = self._peers.get(other)
        if peer is not None and peer.alive:
            return "alive"
        if other in self._connecting:
            if self.name > other:
                return "nok"  # our own attempt wins
            # the peer's wins, but only once it has proven the cookie (see ``_on_accept``): a
            # stranger using its name must not cancel our attempt; the peer answers it ``nok``
            return "ok_simultaneous"
        return "ok"

    def _accept_ready(self) -> None:
        """Accept what the listening socket has. A connection over the handshake caps is closed
        at once (reset), before anything but its socket exists; one within them gets a
        handshake task with a deadline."""
        listener = self._listener
        if listener is None:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:  # out of file descriptors or memory: try again later
                self._refusals.warn("accept", "cannot accept connections: %s; retrying in %.0f s",
                                    error, _ACCEPT_RETRY)
                assert self._loop is not None
                self._loop.remove_reader(listener.fileno())
                self._loop.call_later(_ACCEPT_RETRY, self._resume_accepting, listener)
                return
            host = str(address[0])
            if (len(self._handshaking) >= self.max_handshakes
                    or self._handshaking_from[host] >= self.max_handshakes_per_address):
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                conn.close()
                self._refusals.warn(
                    "cap", "incoming connection from %s closed: %d handshakes in progress (%d from "
                    "that address; max_handshakes=%d, max_handshakes_per_address=%d)", host,
                    len(self._handshaking), self._handshaking_from[host], self.max_handshakes,
                    self.max_handshakes_per_address)
                continue
            self._handshaking.add(conn)
            self._handshaking_from[host] += 1
            self._spawn_task(self._on_accept(conn, host))

    def _resume_accepting(self, listener: socket.socket) -> None:
        if self._listener is listener and self._loop is not None:
            self._loop.add_reader(listener.fileno(), self._accept_ready)

    async def _on_accept(self, conn: socket.socket, host: str) -> None:
        proto: _Protocol | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.handshake_timeout):
                reader, writer, session = await self._accepted(conn)
                proto = _Protocol(Role.ACCEPTOR, this_node=self.name, cookie=self._cookie,
                                  creation=self.creation, flags=self._flags, mapping=self.mapping,
                                  **self._proto_options)
                connected = await self._handshake(proto, reader, writer, session)
        except (HandshakeFailed, RemoteProtocolError, OSError, TimeoutError) as error:
            peer_node = proto.peer_node if proto is not None else None
            if isinstance(error, TimeoutError):
                error = TimeoutError(f"handshake not finished within {self.handshake_timeout} s "
                                     "(handshake_timeout)")
            elif isinstance(error, ssl.SSLError):
                error = OSError(_tls_reason(error) + " (a plain-TCP node, or a certificate our CA "
                                "did not sign?)")
            self._refusals.warn("handshake", "incoming connection from %s%s refused: %s", host,
                                f" ({peer_node})" if peer_node else "", error)
            if writer is not None:
                writer.close()
            else:
                conn.close()
            self._orphaned(peer_node, error)
            return
        except BaseException:  # cancelled (the node closes): the socket goes with the task
            if writer is not None:
                writer.close()
            else:
                conn.close()
            raise
        finally:
            self._handshaking.discard(conn)
            self._handshaking_from[host] -= 1
            if self._handshaking_from[host] <= 0:
                del self._handshaking_from[host]
        if connected is None:
            writer.close()
            return
        name = Atom(connected.name)
        ours = self._connecting.pop(name, None)
        if ours is not None:
            ours.cancel()  # simultaneous connect, authenticated: this connection wins
        old = self._peers.get(name)
        if old is not None:
            self._peer_down(old, "replaced by a new connection")
        self._peer_up(proto, reader, writer, connected, session)

    def _orphaned(self, name: str | None, error: BaseException) -> None:
        """An accepted handshake that we let win over our own attempt failed: fail its waiters."""
        if name is None:
            return
        node = Atom(name)
        future = self._pending.get(node)
        if future is not None and node not in self._connecting:
            self._fail_pending(node, future, NoConnection(node, f"handshake failed: {error}"))

    def _peer_up(self, proto: _Protocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 connected: _Connected, session: TlsSession | None = None) -> None:
        name = Atom(connected.name)
        with contextlib.suppress(OSError):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = PeerStats()
        stats.connects += 1
        stats.connected_since = time.time()
        peer = _Peer(name, proto, reader, writer, connected.flags, connected.creation, stats,
                     self._corks, tls=session)
        self._peers[name] = peer
        if peer.dup is not None:
            self._dup_peers.add(peer)
        # bytes the stream reader got after the handshake's last read are the peer's first
        # packets (still encrypted over TLS: ``_on_peer_data`` decrypts them)
        leftover = bytes(getattr(reader, "_buffer", b""))
        eof = reader.at_eof() or bool(getattr(reader, "_eof", False))
        peer.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        peer.transport.set_protocol(_PeerProtocol(self, peer))
        peer.tasks.append(self._spawn_task(self._tick_loop(peer)))
        assert self._loop is not None
        self._loop.call_soon(self._on_peer_data, peer, leftover or None)
        if eof:
            self._loop.call_soon(self._on_peer_data, peer, b"")
        future = self._pending.pop(name, None)
        if future is not None and not future.done():
            future.set_result(peer)
        log.info("connected to %s", name)
        log.debug("%s: flags %#x, creation %d, %s; threads %s the socket", name, connected.flags,
                  connected.creation, "TLS" if self.tls is not None else "TCP",
                  "use" if peer.sock is not None else "do not use")
        for watcher in list(self._nodes_watchers):
            watcher.deliver((Atom("nodeup"), name))

    def _on_peer_data(self, peer: _Peer, data: bytes | None) -> None:
        """Bytes from a connection (``b""``: it closed; ``None``: only what is buffered): decode
        and apply every whole message. With ``_busy_poll`` (a ``BlockingNode``'s own loop), a
        batch we answered is followed by a short poll of the socket for the peer's next
        packet, as BEAM's schedulers spin before they sleep: the answer usually prompts the
        next request within microseconds, and waking from the selector costs tens of them."""
        budget = _POLL_BUDGET
        polled = False
        while peer.alive:
            corks = self._corks
            corks.active = True
            sent = peer.loop_writes
            try:
                with peer.rlock:
                    self._on_peer_data_locked(peer, data)
            finally:
                corks.release()
            # after an answer, or after what a poll found (maybe the first part of a packet)
            if not self._busy_poll or budget <= 0 or (peer.loop_writes == sent and not polled):
                return
            # a peer that rarely answers within the poll (a remote host) runs out of credit
            # and is not polled, but for one more try after every _POLL_SKIP answered batches
            if peer.poll_credit <= 0:
                peer.poll_credit -= 1
                if peer.poll_credit > -_POLL_SKIP:
                    return
                peer.poll_credit = _POLL_RETRY
            budget -= 1
            if peer.pending:  # what we answered must be out before we wait for its effect
                peer.flush()
            data = _poll_briefly(peer, self._busy_poll)
            if data is None:
                peer.poll_credit -= 1
                return
            polled = True
            peer.poll_credit = min(_POLL_CREDIT, peer.poll_credit + 4)  # a fifth hits: polled

    def _on_peer_data_locked(self, peer: _Peer, data: bytes | None) -> None:
        proto = peer.proto
        try:
            ended = False
            if data and peer.tls is not None:
                peer.last_recv = time.monotonic()  # a TLS record of no data is a sign of life
                data, ended = peer.decrypt(data, on_loop=True)
                data = data or None  # no distribution bytes (b"" would mean the end)
            if data is not None:
                proto.receive_data(data)
                peer.last_recv = time.monotonic()
                peer.stats.bytes_in += len(data)
            next_event, dispatch = proto.next_event, self._dispatch
            take, event_of, fast = proto.take_messages, proto.event_of, self._fast_paths
            stats = peer.stats
            batch: list[tuple[Any, Any]] = []
            while True:
                # the usual packets of this read first, in one codec call; the replies to our
                # own rpcs and the messages for our mailboxes go straight there (``_fast_paths``).
                # A message counts as in once whole and well-formed (not the rest of a batch)
                if take(batch):
                    for control, payload in batch:
                        if type(control) is tuple and len(control) > 1 and type(control[0]) is int:
                            handler = fast.get(control[0])
                            if handler is not None:
                                try:
                                    done = handler(peer, control, payload, False)
                                except Exception:
                                    log.exception("error handling a message from %s", peer.name)
                                    done = True
                                if done:
                                    stats.messages_in += 1
                                    if not peer.alive:
                                        return
                                    continue
                        event = event_of(control, payload)
                        stats.messages_in += 1
                        try:
                            dispatch(peer, event)
                        except Exception:
                            log.exception("error handling %r from %s", type(event).__name__, peer.name)
                        if not peer.alive:
                            return
                    batch.clear()
                event = next_event()
                if event is NEED_DATA:
                    if ended:  # after what came before the peer's close_notify
                        self._peer_down(peer, "connection closed (TLS close_notify)")
                    return
                kind = type(event)
                if kind is Tick:
                    continue
                if kind is _Closed:
                    self._peer_down(peer, "connection closed")
                    return
                peer.stats.messages_in += 1
                try:
                    dispatch(peer, event)
                except Exception:
                    log.exception("error handling %r from %s", kind.__name__, peer.name)
                if not peer.alive:
                    return
        except RemoteProtocolError as error:
            log.warning("closing connection to %s: %s", peer.name, error)
            self._peer_down(peer, f"protocol error: {error}")
        except ssl.SSLError as error:
            log.warning("closing connection to %s: TLS: %s", peer.name, error)
            self._peer_down(peer, f"TLS error: {_tls_reason(error)}")

    async def _tick_loop(self, peer: _Peer) -> None:
        interval = self.net_ticktime / 4
        while peer.alive:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - peer.last_recv > self.net_ticktime:
                log.warning("%s sent nothing for %.1f s (net_ticktime): connection dropped",
                            peer.name, now - peer.last_recv)
                self._peer_down(peer, "net_tick_timeout")
                return
            if now - peer.last_sent >= interval * 0.9 and peer.alive:
                try:
                    peer.write(peer.proto.tick())
                except NoConnection:
                    return  # a broken TLS session: the connection is closing
                peer.stats.messages_out -= 1  # a keep-alive, not a message (its bytes count)

    def _peer_down(self, peer: _Peer, reason: str) -> None:
        if not peer.alive:
            return
        peer.alive = False
        peer.stats.connected_since = None
        if self._peers.get(peer.name) is peer:
            del self._peers[peer.name]
        log.info("connection to %s down: %s", peer.name, reason)
        with peer.wlock:
            dropped = bool(peer.pending)
            peer.pending.clear()
            # close_notify first, as the loop's TLS transport did; not after records dropped
            # (the peer would see a gap in their sequence, not an orderly end)
            if peer.tls is not None and not dropped:
                with contextlib.suppress(OSError, RuntimeError):
                    goodbye = peer.tls.close_notify()
                    if goodbye:
                        peer.transport.write(goodbye)
            peer.transport.close()
        # close() waits for what is queued to go out: a peer that reads nothing (frozen, or
        # hostile) would keep the connection and the queue for as long as it likes. Dropped
        # for silence it is dead: at once; else after a tick time, when silence would be.
        assert self._loop is not None
        self._loop.call_later(0.0 if reason == "net_tick_timeout" else self.net_ticktime,
                              peer.transport.abort)
        if peer.dup is not None:
            # later, on the loop: this may run inside the connection's read (its lock held)
            self._loop.call_soon(self._close_dup, peer)
        peer.resume_writing()
        current = asyncio.current_task() if self._loop is not None and self._loop.is_running() else None
        for task in peer.tasks:
            if task is not current:
                task.cancel()
        node = peer.name
        for call in [c for c in list(self._calls.values()) if c.node == node]:  # threads add
            self._finish_call(call.tag, False,
                              NoConnection(node, f"connection lost during the call: {reason}"))
        for mailbox in list(self._procs.values()):
            for linked in [p for p in mailbox.links if p.node == node]:
                mailbox.links.discard(linked)
                mailbox.exit_signal(linked, NOCONNECTION)
            for ref, (target, target_node) in list(mailbox.monitors_out.items()):
                if target_node == node:
                    del mailbox.monitors_out[ref]
                    mailbox.deliver((DOWN, ref, PROCESS, _monitored(target, node), NOCONNECTION))
            for ref, (holder, _) in list(mailbox.monitors_in.items()):
                if holder.node == node:  # pop: a worker thread may have taken it meanwhile
                    mailbox.monitors_in.pop(ref, None)
            if node in mailbox.node_monitors:
                mailbox.node_monitors.discard(node)
                mailbox.deliver((NODEDOWN, node))
        for watcher in list(self._nodes_watchers):
            watcher.deliver((NODEDOWN, node))

    def _close_dup(self, peer: _Peer) -> None:
        peer.close_dup()
        self._dup_peers.discard(peer)

    def _close_dups(self) -> None:
        """Close every duplicate socket still open (the node is closed: its loop may not run
        the callbacks that would)."""
        for peer in list(self._dup_peers):
            self._close_dup(peer)

    def monitor_nodes(self, mailbox: Mailbox, enable: bool = True) -> None:
        """Deliver ``('nodeup', Node)``/``('nodedown', Node)`` for every connection to ``mailbox``."""
        if enable:
            self._nodes_watchers.add(mailbox)
        else:
            self._nodes_watchers.discard(mailbox)


def _poll_briefly(peer: _Peer, seconds: float) -> bytes | None:
    """Loop thread: what the socket has within ``seconds``, read as the transport would (None:
    nothing came, or another thread reads this connection now)."""
    sock = peer.sock
    if sock is None or peer.owner is not None:
        return None
    try:
        return recv_within(sock, seconds, 1 << 18)
    except (OSError, ValueError):
        return None  # the transport sees it and reports it


def _tls_reason(error: ssl.SSLError) -> str:
    """What went wrong in a TLS handshake, in OpenSSL's words (a failed verification names
    its cause: unknown CA, expired, hostname mismatch)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the peer's certificate was refused: {error.verify_message}"
    return f"TLS handshake failed: {error.reason or error}"


def _listen(host: str, ports: tuple[int, int] | None = None) -> socket.socket:
    """A non-blocking listening socket on ``host`` and a free port, the first free one of
    ``ports`` (``low``, ``high``) when given, as Erlang's ``inet_dist_listen_min/max`` (the loop
    does not own it: the node accepts itself, so it can refuse a connection before building
    anything for it)."""
    low, high = ports or (0, 0)
    for port in range(low, high + 1):
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(_LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            if error.errno != errno.EADDRINUSE or port == high:
                if error.errno == errno.EADDRINUSE:
                    raise UsageError(f"no free port in listen_ports {low}..{high} on {host}") from None
                raise
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise AssertionError("unreachable")


class _Throttle:
    """Warnings an attacker can trigger at will, at most one per ``interval`` seconds per kind
    (with a count of the ones left out): a flood must not become a flood of log lines."""

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._skipped: collections.Counter[str] = collections.Counter()

    def warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self._interval) < self._interval:
            self._skipped[kind] += 1
            log.debug(message, *args)
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += " (and %d more like it since the last such warning)"
            args = (*args, skipped)
        self._log.warning(message, *args)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


