"""The node's own TLS layer (``_tls_session``) between two real OpenSSL sessions in memory:
what the peer sent before its close_notify is kept, and records leave in encryption order."""

from __future__ import annotations

import contextlib
import ssl

import pytest

from beambridge.node._tls import TlsConfig
from beambridge.node._tls_session import TlsSession
from tests.tls.conftest import Pki


def _pair(tls_pki: Pki) -> tuple[TlsSession, TlsSession]:
    """A client and a server session of the good optfile, handshake done."""
    config = TlsConfig.from_optfile(tls_pki.good)
    assert config.server is not None
    client = TlsSession(config.client, server_side=False, server_hostname="127.0.0.1")
    server = TlsSession(config.server, server_side=True)
    to_server, to_client = b"", b""
    for _ in range(10):
        for me, inbox in ((client, to_client), (server, to_server)):
            if inbox:
                me._in.write(inbox)
            with contextlib.suppress(ssl.SSLWantReadError):
                me.obj.do_handshake()
        to_server, to_client = client._out.read(), server._out.read()
        if not (to_server or to_client):
            break
    # what is still in flight (the server's session tickets) arrives with the first records
    plain, _, closed = client.decrypt(to_client)
    assert (plain, closed) == (b"", False)
    return client, server


def test_what_came_before_close_notify_is_kept(tls_pki: Pki) -> None:
    client, server = _pair(tls_pki)
    last = server.encrypt(b"the last packet") + server.close_notify()
    plain, _, closed = client.decrypt(last)  # one read holds both
    assert plain == b"the last packet" and closed
    assert client.decrypt(b"")[1:] == (b"", True)  # and it stays ended


def test_records_decrypt_in_the_order_they_were_made(tls_pki: Pki) -> None:
    client, server = _pair(tls_pki)
    records = [client.encrypt(bytes([i]) * (1000 * i + 1)) for i in range(1, 40)]
    plain, out, closed = server.decrypt(b"".join(records))
    assert plain == b"".join(bytes([i]) * (1000 * i + 1) for i in range(1, 40))
    assert (out, closed) == (b"", False)
    # fed in pieces that cut records anywhere: a cut record waits for its rest
    more = [client.encrypt(b"x" * 5000) for _ in range(3)]
    stream = b"".join(more)
    pieces = [stream[i:i + 777] for i in range(0, len(stream), 777)]
    got = b"".join(server.decrypt(piece)[0] for piece in pieces)
    assert got == b"x" * 15000


def test_a_tampered_record_is_refused(tls_pki: Pki) -> None:
    client, server = _pair(tls_pki)
    record = bytearray(client.encrypt(b"payload"))
    record[-1] ^= 1
    with pytest.raises(ssl.SSLError):
        server.decrypt(bytes(record))
