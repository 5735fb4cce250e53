"""TLS distribution (Erlang's ``-proto_dist inet_tls``): the two ``ssl.SSLContext`` a node needs,
read from the same ``ssl_dist_optfile`` the Erlang nodes of the cluster start with.

Erlang runs the ordinary distribution handshake, cookie included, inside TLS; so do we. The
optfile is one Erlang term, ``[{server, Opts}, {client, Opts}]``: ``server`` for connections
peers open to us, ``client`` for those we open. Each option is honoured as ``ssl`` honours it
or refused with a ``TlsConfigError`` naming it; none is silently ignored. Where an option is
absent the client verifies the peer (``verify_peer``, as OTP 26 and later default to) and the
server asks for no certificate (``verify_none``, Erlang's server default).

As ``inet_tls_dist`` does, a client checks the server's certificate against the host part of
the node name it connects to (``server_name_indication`` changes or disables that).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import UsageError
from ..term import Atom, Mapping, TermSyntaxError, parse_term
from ._errors import NoConnection

__all__ = ["TlsConfig", "TlsConfigError", "TlsHandshakeFailed", "load_tls"]


class TlsConfigError(UsageError):
    """An ``ssl_dist_optfile`` (or a ``TlsConfig``) beambridge cannot honour, and why."""


class TlsHandshakeFailed(NoConnection):
    """TLS refused the connection: the peer's certificate failed verification (unknown CA,
    expired, wrong name) or the peer does not speak TLS; ``detail`` says which."""


@dataclass(frozen=True)
class TlsConfig:
    """The contexts of a TLS node. ``server``: for connections peers open (may be None for a
    node that only connects); ``client``: for connections it opens. ``server_name`` overrides
    the name a client checks (None: the peer node's host part; ``False``: no name check and no
    SNI, as ``{server_name_indication, disable}``)."""

    server: ssl.SSLContext | None
    client: ssl.SSLContext
    server_name: str | bool | None = None
    source: str = "SSLContext"

    @classmethod
    def from_optfile(cls, path: str | os.PathLike[str]) -> TlsConfig:
        """Read an Erlang ``ssl_dist_optfile``."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise TlsConfigError(f"cannot read the ssl_dist_optfile {path}: {error.strerror}") from None
        try:
            term = parse_term(text, mapping=Mapping.CHARLIST)
        except TermSyntaxError as error:
            raise TlsConfigError(f"{path}: not an Erlang term ({error}); beambridge reads literal "
                                 "options only, not expressions with function calls") from None
        if not isinstance(term, list) or not all(
                isinstance(s, tuple) and len(s) == 2 and s[0] in (_SERVER, _CLIENT) for s in term):
            raise TlsConfigError(f"{path}: expected [{{server, Options}}, {{client, Options}}]")
        sections = {str(name): opts for name, opts in term}
        where = str(path)
        server = _context(where, "server", sections["server"]) if "server" in sections else None
        client_opts = sections.get("client", [])
        return cls(server=server, client=_context(where, "client", client_opts),
                   server_name=_server_name(where, client_opts), source=where)

    def client_hostname(self, host: str) -> str | None:
        """The name to send as SNI and check the certificate against, for a peer on ``host``."""
        if self.server_name is False or self.client.check_hostname is False:
            return None
        return self.server_name if isinstance(self.server_name, str) else host

    def describe(self) -> str:
        return f"TLS ({self.source})"


def load_tls(tls: str | os.PathLike[str] | TlsConfig | None) -> TlsConfig | None:
    """``Node(tls=...)``: an optfile's path, a ``TlsConfig``, or None for plain TCP."""
    if tls is None or isinstance(tls, TlsConfig):
        return tls
    if isinstance(tls, str | os.PathLike):
        return TlsConfig.from_optfile(tls)
    raise UsageError(f"tls is the path of an ssl_dist_optfile or a TlsConfig, not {type(tls).__name__}")


_SERVER, _CLIENT = Atom("server"), Atom("client")
_VERSIONS = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}


def _text(where: str, key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    raise TlsConfigError(f"{where}: {key} must be a string, not {value!r}")


def _flag(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):  # the atoms true and false read as Python's bools
        raise TlsConfigError(f"{where}: {key} must be true or false, not {value!r}")
    return value


def _options(where: str, section: str, opts: Any) -> dict[str, Any]:
    if not isinstance(opts, list):
        raise TlsConfigError(f"{where}: the {section} options must be a list")
    found: dict[str, Any] = {}
    for opt in opts:
        if not (isinstance(opt, tuple) and len(opt) == 2 and isinstance(opt[0], Atom)):
            raise TlsConfigError(f"{where}: {section} option {opt!r} is not {{Key, Value}}")
        found[str(opt[0])] = opt[1]
    return found


def _server_name(where: str, opts: Any) -> str | bool | None:
    value = _options(where, "client", opts).get("server_name_indication")
    if value is None:
        return None
    if value == Atom("disable"):
        return False
    return _text(where, "server_name_indication", value)


def _context(where: str, section: str, opts: Any) -> ssl.SSLContext:
    found = _options(where, section, opts)
    server = section == "server"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # Erlang's default versions: 1.2 and 1.3
    here = f"{where}: {section}"
    handlers: dict[str, Callable[[Any], None]] = {}

    certfile = found.get("certfile")
    keyfile = found.get("keyfile")
    password = found.get("password")
    if certfile is not None:
        try:
            ctx.load_cert_chain(_text(here, "certfile", certfile),
                                _text(here, "keyfile", keyfile) if keyfile is not None else None,
                                _text(here, "password", password) if password is not None else None)
        except (OSError, ssl.SSLError) as error:
            raise TlsConfigError(f"{here}: cannot load certfile/keyfile: {error}") from None
    elif keyfile is not None:
        raise TlsConfigError(f"{here}: keyfile without certfile")
    elif server:
        raise TlsConfigError(f"{here}: a server needs a certfile (and keyfile) to present")

    def cacertfile(value: Any) -> None:
        try:
            ctx.load_verify_locations(cafile=_text(here, "cacertfile", value))
        except (OSError, ssl.SSLError) as error:
            raise TlsConfigError(f"{here}: cannot load cacertfile: {error}") from None

    def cacerts(value: Any) -> None:
        if not isinstance(value, list) or not all(isinstance(c, bytes) for c in value):
            raise TlsConfigError(f"{here}: cacerts must be a list of DER binaries")
        try:
            for der in value:
                ctx.load_verify_locations(cadata=der)
        except ssl.SSLError as error:
            raise TlsConfigError(f"{here}: cacerts: {error}") from None

    def versions(value: Any) -> None:
        names = [_text(here, "versions", v) if not isinstance(v, Atom) else str(v)
                 for v in (value if isinstance(value, list) else [None])]
        unknown = [n for n in names if n not in _VERSIONS]
        if unknown or not names:
            raise TlsConfigError(f"{here}: versions {names}: beambridge supports "
                                 "['tlsv1.2', 'tlsv1.3']")
        chosen = sorted(_VERSIONS[n] for n in names)
        ctx.minimum_version, ctx.maximum_version = chosen[0], chosen[-1]

    def ciphers(value: Any) -> None:
        if not isinstance(value, str):
            raise TlsConfigError(f"{here}: ciphers must be an OpenSSL cipher string here "
                                 "(\"ECDHE-ECDSA-AES256-GCM-SHA384:...\")")
        try:
            ctx.set_ciphers(value)
        except ssl.SSLError:
            raise TlsConfigError(f"{here}: no cipher matches {value!r}") from None

    def secure_renegotiate(value: Any) -> None:
        if not _flag(here, "secure_renegotiate", value):
            raise TlsConfigError(f"{here}: secure_renegotiate false (insecure renegotiation) "
                                 "is not supported")

    def honor_cipher_order(value: Any) -> None:
        if _flag(here, "honor_cipher_order", value):
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE

    def reuse_sessions(value: Any) -> None:
        _flag(here, "reuse_sessions", value)  # a permission; each connection here is fresh

    handlers.update(cacertfile=cacertfile, cacerts=cacerts, versions=versions, ciphers=ciphers,
                    secure_renegotiate=secure_renegotiate, reuse_sessions=reuse_sessions)
    if server:
        handlers["honor_cipher_order"] = honor_cipher_order
    known = {"certfile", "keyfile", "password", "verify", "fail_if_no_peer_cert",
             "server_name_indication", *handlers}
    for key, value in found.items():
        if key not in known or (key == "fail_if_no_peer_cert" and not server) or (
                key == "server_name_indication" and server):
            raise TlsConfigError(f"{here} option {key} is not supported by beambridge "
                                 f"(supported: {', '.join(sorted(_supported(server)))})")
        if key in handlers:
            handlers[key](value)

    verify = found.get("verify", Atom("verify_none") if server else Atom("verify_peer"))
    if verify not in (Atom("verify_peer"), Atom("verify_none")):
        raise TlsConfigError(f"{here}: verify must be verify_peer or verify_none, not {verify!r}")
    peer = verify == Atom("verify_peer")
    if server:
        required = _flag(here, "fail_if_no_peer_cert", found.get("fail_if_no_peer_cert", False))
        if required and not peer:
            raise TlsConfigError(f"{here}: fail_if_no_peer_cert needs {{verify, verify_peer}}")
        ctx.verify_mode = (ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL) if peer else ssl.CERT_NONE
    else:
        if not peer:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif found.get("server_name_indication") == Atom("disable"):
            ctx.check_hostname = False  # as Erlang: no SNI, no name check; the chain still is
    if peer and "cacertfile" not in found and "cacerts" not in found:
        raise TlsConfigError(f"{here}: verify_peer needs cacertfile (the CA that signs the "
                             "cluster's certificates)")
    return ctx


def _supported(server: bool) -> set[str]:
    common = {"certfile", "keyfile", "password", "cacertfile", "cacerts", "verify", "versions",
              "ciphers", "secure_renegotiate", "reuse_sessions"}
    return common | ({"fail_if_no_peer_cert", "honor_cipher_order"} if server
                     else {"server_name_indication"})
