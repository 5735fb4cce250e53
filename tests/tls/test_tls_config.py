"""Reading an Erlang ``ssl_dist_optfile``: each option honoured or refused by name; and TLS
between two Python nodes, from an optfile and from ``ssl.SSLContext`` objects."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from beambridge import BlockingNode
from beambridge.node import TlsConfig, TlsConfigError, TlsHandshakeFailed
from beambridge.term import Atom
from tests.node.conftest import COOKIE, unique
from tests.tls.conftest import Pki


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dist.conf"
    path.write_text(text)
    return path


def _opts(pki: Pki, extra: str = "", *, side: str = "server") -> str:
    cert = f'{{certfile, "{pki.node.cert}"}}, {{keyfile, "{pki.node.key}"}}, {{cacertfile, "{pki.ca}"}}'
    return f"[{{{side}, [{cert}{extra}]}}]."


def test_the_good_optfile_gives_both_contexts(tls_pki: Pki) -> None:
    config = TlsConfig.from_optfile(tls_pki.good)
    assert config.server is not None
    assert config.server.verify_mode == ssl.CERT_REQUIRED  # verify_peer + fail_if_no_peer_cert
    assert config.client.verify_mode == ssl.CERT_REQUIRED and config.client.check_hostname
    assert config.client_hostname("10.0.0.7") == "10.0.0.7"  # the peer node's host part


def test_defaults_are_erlangs(tmp_path: Path, tls_pki: Pki) -> None:
    config = TlsConfig.from_optfile(_write(tmp_path, _opts(tls_pki)[:-2] + ","
                                           + _opts(tls_pki, side="client")[1:]))
    assert config.server is not None and config.server.verify_mode == ssl.CERT_NONE  # verify_none
    assert config.client.verify_mode == ssl.CERT_REQUIRED  # verify_peer, as OTP 26+


@pytest.mark.parametrize(("extra", "side", "check"), [
    (", {verify, verify_peer}", "server", lambda c: c.server.verify_mode == ssl.CERT_OPTIONAL),
    (", {versions, ['tlsv1.3']}", "client",
     lambda c: c.client.minimum_version == c.client.maximum_version == ssl.TLSVersion.TLSv1_3),
    (", {server_name_indication, disable}", "client",
     lambda c: not c.client.check_hostname and c.client_hostname("h") is None),
    (', {server_name_indication, "cluster.example"}', "client",
     lambda c: c.client_hostname("10.0.0.7") == "cluster.example"),
    (", {verify, verify_none}", "client",
     lambda c: c.client.verify_mode == ssl.CERT_NONE and c.client_hostname("h") is None),
    (", {honor_cipher_order, true}, {secure_renegotiate, true}, {reuse_sessions, false}", "server",
     lambda c: bool(c.server.options & ssl.OP_CIPHER_SERVER_PREFERENCE)),
])
def test_options_are_honoured(tmp_path: Path, tls_pki: Pki, extra: str, side: str,
                              check: object) -> None:
    server = _opts(tls_pki, extra if side == "server" else "")
    client = _opts(tls_pki, extra if side == "client" else "", side="client")
    config = TlsConfig.from_optfile(_write(tmp_path, server[:-2] + "," + client[1:]))
    assert check(config)  # type: ignore[operator]


@pytest.mark.parametrize(("text", "message"), [
    ("{server, []}.", r"expected \[\{server, Options\}"),
    ("[{server, [{certfile, \"/x\"}]} ", "not an Erlang term"),
    ("[{client, [{verify, verify_peer}]}].", "verify_peer needs cacertfile"),
    ("[{server, [{verify, verify_none}]}].", "a server needs a certfile"),
    ("[{client, [{verify, maybe}]}].", "verify must be verify_peer or verify_none"),
    ("[{client, [{verify, verify_none}, {depth, 3}]}].", "option depth is not supported"),
    ("[{client, [{verify, verify_none}, {versions, ['tlsv1.1']}]}].", "beambridge supports"),
    ("[{client, [{verify, verify_none}, {fail_if_no_peer_cert, true}]}].",
     "fail_if_no_peer_cert is not supported"),
    ("[{client, [{verify, verify_none}, {secure_renegotiate, false}]}].", "insecure renegotiation"),
    ("[{client, [{verify, verify_none}, {certfile, \"/no/such.pem\"}]}].", "cannot load certfile"),
    ("[{client, [{verify, verify_none}, {verify_fun, {inet_tls_dist, verify_client, 3}}]}].",
     "option verify_fun is not supported"),
])
def test_what_cannot_be_honoured_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TlsConfigError, match=message):
        TlsConfig.from_optfile(_write(tmp_path, text))


def test_a_missing_optfile_says_so(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="cannot read the ssl_dist_optfile"):
        BlockingNode(unique("py") + "@127.0.0.1", COOKIE, tls=tmp_path / "nope.conf")


@pytest.fixture
def nodes(epmd_port: int) -> Iterator[list[BlockingNode]]:
    made: list[BlockingNode] = []
    yield made
    for node in made:
        node.close()


def _contexts(pki: Pki, cert: object) -> TlsConfig:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server.load_cert_chain(cert.cert, cert.key)  # type: ignore[attr-defined]
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=str(pki.ca))
    client.load_cert_chain(cert.cert, cert.key)  # type: ignore[attr-defined]
    return TlsConfig(server=server, client=client)


def test_two_python_nodes_over_tls_both_ways(nodes: list[BlockingNode], epmd_port: int,
                                             tls_pki: Pki) -> None:
    a = BlockingNode(unique("pya") + "@127.0.0.1", COOKIE, epmd_port=epmd_port, tls=tls_pki.good)
    b = BlockingNode(unique("pyb") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                     tls=_contexts(tls_pki, tls_pki.node))  # the same, built in Python
    nodes += [a, b]
    a.expose("m", {"who": lambda: Atom(a.name)})
    b.expose("m", {"who": lambda: Atom(b.name), "back": lambda: b.rpc(a.name, "m", "who", [])})
    assert a.rpc(b.name, "m", "who", []) == Atom(b.name)
    assert a.rpc(b.name, "m", "back", []) == Atom(a.name)  # over the same TLS connection


def test_a_python_node_refuses_a_stranger_and_serves_on(nodes: list[BlockingNode], epmd_port: int,
                                                        tls_pki: Pki) -> None:
    server = BlockingNode(unique("pys") + "@127.0.0.1", COOKIE, epmd_port=epmd_port, tls=tls_pki.good)
    stranger = BlockingNode(unique("pyx") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                            tls=tls_pki.optfile("py_stranger_only", tls_pki.stranger, tls_pki.other_ca,
                                                verify=False), connect_timeout=5)
    friend = BlockingNode(unique("pyf") + "@127.0.0.1", COOKIE, epmd_port=epmd_port, tls=tls_pki.good)
    nodes += [server, stranger, friend]
    server.expose("m", {"ok": lambda: Atom("ok")})
    with pytest.raises(TlsHandshakeFailed):
        stranger.rpc(server.name, "m", "ok", [], timeout=5)
    assert friend.rpc(server.name, "m", "ok", []) == Atom("ok")


def test_a_tampered_tls_record_ends_that_connection_only(nodes: list[BlockingNode], epmd_port: int,
                                                         tls_pki: Pki) -> None:
    """A client with a good certificate finishes TLS, then sends a record whose integrity check
    fails: the node drops that connection at once (before any distribution handshake), and a
    friend's calls before, during and after go on over their own TLS connection."""
    # a handshake timeout past the test's own wait: only the refusal can end the connection
    server = BlockingNode(unique("pys") + "@127.0.0.1", COOKIE, epmd_port=epmd_port, tls=tls_pki.good,
                          handshake_timeout=60)
    friend = BlockingNode(unique("pyf") + "@127.0.0.1", COOKIE, epmd_port=epmd_port, tls=tls_pki.good)
    nodes += [server, friend]
    server.expose("m", {"ok": lambda: Atom("ok")})
    assert friend.rpc(server.name, "m", "ok", []) == Atom("ok")
    client = _contexts(tls_pki, tls_pki.node).client
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", server.node.port), timeout=10) as sock:
        for _ in range(20):  # the TLS handshake, by hand
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        tls.write(b"\x00\x0fN" + bytes(15))  # the start of a distribution handshake...
        record = bytearray(outgoing.read())
        record[-1] ^= 0xFF  # ...whose authentication tag no longer matches
        sock.sendall(bytes(record))
        assert friend.rpc(server.name, "m", "ok", []) == Atom("ok")  # meanwhile
        # the server ends it: what it still sends (session tickets, an alert), then the end
        # (a server that kept it open would time this recv out)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
    assert friend.rpc(server.name, "m", "ok", []) == Atom("ok")
    assert server.nodes() == [friend.name]
