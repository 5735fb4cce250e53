"""TLS done by the node itself: ``ssl.SSLObject`` over two memory BIOs, over a plain TCP
transport. The event loop's own TLS transport keeps its TLS state to itself, so every call from
another thread had to hop to the loop and back; with the state here, a blocking caller's thread
encrypts its request and writes the socket itself, and reads and decrypts its reply, as over
plain TCP. Every use of one session is serialized by its connection's write lock (``_Peer``):
record order on the wire is the order of encryption."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl

#: how much one read of the handshake asks for
_READ = 65536


class TlsSession:
    """One connection's TLS state. Not thread-safe on its own: the caller holds the lock."""

    __slots__ = ("_ended", "_held", "_in", "_out", "obj")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._in, self._out, server_side=server_side,
                                    server_hostname=server_hostname)
        #: plaintext waiting while a TLS 1.2 renegotiation needs the peer's answer first
        self._held: collections.deque[bytes] = collections.deque()
        self._ended = False  # the peer's close_notify came

    async def handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Run the TLS handshake over a TCP stream (the caller bounds its time). Raises
        ``ssl.SSLError`` as the loop's TLS transport would, ``ConnectionResetError`` when the
        peer closes before it is done."""
        while True:
            try:
                self.obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            finally:
                out = self._out.read()  # an alert too, when the handshake failed
                if out:
                    writer.write(out)
            if done:
                await writer.drain()
                return
            data = await reader.read(_READ)
            if not data:
                raise ConnectionResetError("the peer closed the connection during the TLS handshake")
            self._in.write(data)

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """The records that carry ``data`` (fewer while a renegotiation holds writes back:
        the rest follows, in order, from ``decrypt``). Raises ``ssl.SSLError`` when the
        session is broken."""
        if not self._held:
            try:
                sent = self.obj.write(data)  # the usual case: all of it at once
            except ssl.SSLWantReadError:
                sent = 0
            if sent == len(data):
                return self._out.read()
            data = memoryview(data)[sent:]
        self._held.append(bytes(data))
        self._push()
        return self._out.read()

    def _push(self) -> None:
        held = self._held
        while held:
            view = memoryview(held[0])
            try:
                while view:
                    view = view[self.obj.write(view):]
            except ssl.SSLWantReadError:  # a TLS 1.2 renegotiation waits for the peer
                held[0] = bytes(view)
                return
            held.popleft()

    def decrypt(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """Feed records read from the socket: the plaintext they complete, the records to send
        back (TLS's own answers, writes a renegotiation held back), and whether the peer ended
        TLS (close_notify; the plaintext before it still counts). Raises ``ssl.SSLError`` on a
        bad record."""
        if data:
            self._in.write(data)
        chunks = []
        closed = self._ended
        incoming, obj = self._in, self.obj
        while incoming.pending or obj.pending():  # else a read only raises want-read
            try:
                chunk = obj.read(1 << 18)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
        if self._held and not closed:
            self._push()
        self._ended = closed
        plain = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return plain, self._out.read(), closed


    def close_notify(self) -> bytes:
        """The alert that tells the peer we end TLS (nothing when the session is broken)."""
        # want-read: it waits for the peer's own close_notify; ours is written already
        with contextlib.suppress(ssl.SSLError, ValueError):
            self.obj.unwrap()
        return self._out.read()


class TlsStreams:
    """The distribution handshake's reads and writes through a session, over the TCP streams
    (before the connection is a peer; the loop's thread only)."""

    __slots__ = ("reader", "session", "writer")

    def __init__(self, session: TlsSession, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer

    async def read(self) -> bytes:
        """Plaintext (``b""``: the peer closed)."""
        data = b""
        while True:
            plain, out, closed = self.session.decrypt(data)
            if out:
                self.writer.write(out)
            if plain or closed:
                return plain  # after close_notify the next read gives b""
            data = await self.reader.read(_READ)
            if not data:
                return b""

    def write(self, data: bytes) -> None:
        self.writer.write(self.session.encrypt(data))
