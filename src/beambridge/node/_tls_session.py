"""TLS done by the node itself: ``ssl.SSLObject`` over two memory BIOs, over a plain TCP
transport. The event loop's own TLS transport keeps its TLS state to itself, so every call from
another thread had to hop to the loop and back; with the state here, a blocking caller's thread
encrypts its request and writes the socket itself, and reads and decrypts its reply, as over
plain TCP. Every use of one session is serialized by its connection's write lock (``_Peer``):
record order on the wire is the order of encryption."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

#: how much one read of the handshake asks for
_READ = 65536


class TlsClosed(Exception):
    """The peer ended TLS (close_notify)."""


class TlsSession:
    """One connection's TLS state. Not thread-safe on its own: the caller holds the lock."""

    __slots__ = ("_in", "_out", "obj")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._in, self._out, server_side=server_side,
                                    server_hostname=server_hostname)

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
        """The records that carry ``data``."""
        view = memoryview(data)
        while view:
            sent = self.obj.write(view)
            view = view[sent:]
        return self._out.read()

    def decrypt(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed records read from the socket: the plaintext they complete, and the records TLS
        itself must send back (a key update's answer, an alert); may be empty both. Raises
        ``TlsClosed`` at the peer's close_notify, ``ssl.SSLError`` on a bad record."""
        if data:
            self._in.write(data)
        chunks = []
        try:
            while True:
                try:
                    chunk = self.obj.read(1 << 18)
                except ssl.SSLWantReadError:
                    break
                if not chunk:
                    raise TlsClosed()
                chunks.append(chunk)
        except ssl.SSLZeroReturnError:
            raise TlsClosed() from None
        plain = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return plain, self._out.read()


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
            try:
                plain, out = self.session.decrypt(data)
            except TlsClosed:
                return b""
            if out:
                self.writer.write(out)
            if plain:
                return plain
            data = await self.reader.read(_READ)
            if not data:
                return b""

    def write(self, data: bytes) -> None:
        self.writer.write(self.session.encrypt(data))
