"""``beambridge ping | names | rpc | send``: the node from a shell.

Arguments and results are written in Erlang term syntax (``beambridge.term.parse_term`` and
``format_term``). Exit codes a script can rely on: 0 success (``pong``), 1 Erlang raised, threw
or exited, 2 usage or syntax error (a bad ``--tls-optfile`` too), 3 the node or EPMD could not be
reached (``pang``; a TLS refusal too), 4 timeout.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from .._errors import RemoteError, Timeout, TransportError, UsageError
from ..protocol import HandshakeFailed
from ..protocol import epmd as _epmd
from ..term import Atom, format_term, parse_term
from ._blocking import BlockingNode, epmd_names
from ._epmd_client import START_EPMD_HINT
from ._errors import BadCookie, EpmdUnavailable, NoConnection
from ._names import PASS_COOKIE_HINT
from ._tls import TlsConfig, TlsConfigError, TlsHandshakeFailed

OK, FAILED, USAGE, UNREACHABLE, TIMED_OUT = 0, 1, 2, 3, 4

# The library's messages name Python arguments; on the command line the flags do that job.
_FLAG_HINTS = (
    (PASS_COOKIE_HINT, "pass --cookie"),
    (START_EPMD_HINT, ", or pass --epmd-port to use one on another port"),
    ("the cluster's TLS settings (tls=...)", "the cluster's TLS settings: pass --tls-optfile"),
)


def _tcp_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), not {text!r}")
    return port


def add_epmd_port(parser: argparse.ArgumentParser, *, old_flag: str | None = None,
                  default: bool = True, default_help: str = "$ERL_EPMD_PORT, else 4369") -> None:
    """``--epmd-port``, the one spelling for every subcommand (``old_flag`` stays as a hidden
    alias); its default, read from ``$ERL_EPMD_PORT``, shows in ``--help``."""
    value = (os.environ.get("ERL_EPMD_PORT") or str(_epmd.DEFAULT_PORT)) if default else None
    now = "; now %(default)s" if default else ""
    parser.add_argument("--epmd-port", type=_tcp_port, default=value, metavar="PORT",
                        help=f"EPMD's port (default: {default_help}{now})")
    if old_flag:
        parser.add_argument(old_flag, dest="epmd_port", type=_tcp_port, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)


#: the optfile's variable: the same one the web settings read, so one export serves a host's
#: CLI, receiver and web workers
TLS_OPTFILE_ENV = "BEAMBRIDGE_TLS_OPTFILE"


def listen_ports(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` (or one ``PORT``), as ``inet_dist_listen_min``/``max``."""
    low, _, high = text.partition("-")
    try:
        ports = (int(low), int(high or low))
    except ValueError:
        ports = (0, 0)
    if not 0 < ports[0] <= ports[1] < 65536:
        raise argparse.ArgumentTypeError(f"must be LOW-HIGH (e.g. 9100-9105) or one port, "
                                         f"within 1-65535, not {text!r}")
    return ports


def add_tls_options(parser: argparse.ArgumentParser, *, listen: bool = False) -> None:
    """``--tls-optfile`` (default ``$BEAMBRIDGE_TLS_OPTFILE``, shown in ``--help``) and, for a
    node that others connect to (``listen``), ``--listen-host`` and ``--listen-ports``."""
    now = os.environ.get(TLS_OPTFILE_ENV)
    state = now.replace("%", "%%") if now else "unset: plain TCP"
    parser.add_argument("--tls-optfile", metavar="FILE", default=None,
                        help="TLS distribution (-proto_dist inet_tls) with the cluster's "
                             "ssl_dist_optfile, the file its Erlang nodes start with "
                             f"(default: ${TLS_OPTFILE_ENV}, now {state}; '' forces plain TCP)")
    if listen:
        parser.add_argument("--listen-host", metavar="HOST", default=None,
                            help="the address to accept connections on (default: "
                                 "$BEAMBRIDGE_LISTEN_HOST, else 127.0.0.1: give the address "
                                 "the other hosts reach)")
        parser.add_argument("--listen-ports", type=listen_ports, metavar="LOW-HIGH", default=None,
                            help="accept on the first free port of this range, like "
                                 "inet_dist_listen_min/max, for a firewall rule (default: "
                                 "$BEAMBRIDGE_LISTEN_PORTS, else any free port)")


def tls_option(args: argparse.Namespace) -> TlsConfig | None:
    """The TLS configuration ``--tls-optfile`` (or its variable) names, read now so that a bad
    file is one line before any node exists. ``TlsConfigError`` says which of the two it was."""
    given = getattr(args, "tls_optfile", None)
    path, source = ((given, "--tls-optfile") if given is not None
                    else (os.environ.get(TLS_OPTFILE_ENV), f"${TLS_OPTFILE_ENV}"))
    if not path:
        return None
    try:
        tls = TlsConfig.from_optfile(path)
    except TlsConfigError as error:
        raise TlsConfigError(f"{source}: {error}") from None
    if tls.server is None:
        raise TlsConfigError(f"{source}: {path} has no server section (a node needs one to "
                             "accept connections)")
    return tls


def add_parser(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cookie", help="the cookie (default: $ERLANG_COOKIE, ~/.erlang.cookie)")
    common.add_argument("--name", help="this node's name (default: a unique bbcli name)")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    add_epmd_port(common)
    add_tls_options(common)  # no --listen-*: these nodes only connect out

    ping = commands.add_parser("ping", parents=[common], help="like net_adm:ping: pong or pang")
    ping.add_argument("node")
    ping.set_defaults(handler=_ping)

    names = commands.add_parser("names", help="the nodes EPMD knows on HOST (like epmd -names)")
    names.add_argument("host", nargs="?", default="127.0.0.1")
    add_epmd_port(names, old_flag="--port")
    names.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    names.set_defaults(handler=_names)

    rpc = commands.add_parser("rpc", parents=[common], help="call MODULE:FUNCTION(ARGS) on NODE")
    rpc.add_argument("node")
    rpc.add_argument("module")
    rpc.add_argument("function")
    rpc.add_argument("args", nargs="?", default="[]", help="an Erlang list, e.g. '[1, \"abc\"]'")
    rpc.set_defaults(handler=_rpc)

    send = commands.add_parser("send", parents=[common], help="send TERM to registered NAME on NODE")
    send.add_argument("node")
    send.add_argument("registered_name")
    send.add_argument("term", help="an Erlang term, e.g. '{hello, <<\"x\">>}'")
    send.set_defaults(handler=_send)


def _default_name(target: str) -> str:
    """A unique name of the same kind as the target's (Erlang keeps long and short names apart)."""
    alive = f"bbcli{os.getpid()}"
    host = target.partition("@")[2]
    if "." not in host:
        return alive  # short name: this host's short name is added
    if host.startswith("127.") or host == "localhost":
        return f"{alive}@{host}"
    return f"{alive}@{socket.getfqdn()}"


def _node(args: argparse.Namespace, tls: TlsConfig | None) -> BlockingNode:
    return BlockingNode(args.name or _default_name(args.node), args.cookie,
                        connect_timeout=args.timeout, epmd_port=args.epmd_port, tls=tls)


def _for_flags(message: str) -> str:
    for python, flag in _FLAG_HINTS:
        message = message.replace(python, flag)
    return message


def _tls_hint(args: argparse.Namespace, message: str) -> str:
    """A plain-TCP node reads a TLS node's first record as an oversized handshake packet."""
    if getattr(args, "tls", None) is None and "exceeds the handshake message limit" in message:
        return f"{message} (a TLS node, -proto_dist inet_tls? pass --tls-optfile)"
    return message


def _fail(code: int, message: str) -> int:
    print(f"beambridge: {_for_flags(message)}", file=sys.stderr)
    return code


def _remote_detail(error: RemoteError, args: argparse.Namespace) -> str:
    """The reason as Erlang writes it; for ``undef``, which function is missing (the stack's
    top frame, else the call we made), since ``undef`` alone does not say."""
    detail = format_term(error.reason) if error.reason is not None else ""
    if error.reason != Atom("undef"):
        return detail
    missing = f"{args.module}:{args.function}/{len(getattr(args, 'call_args', []))}"
    frame = error.stack[0] if isinstance(error.stack, list) and error.stack else None
    if isinstance(frame, tuple) and len(frame) >= 3:
        module, function, arity = frame[:3]
        arity = len(arity) if isinstance(arity, list) else arity
        missing = f"{format_term(module)}:{format_term(function)}/{arity}"
    return (f"undef: {missing} is not defined on {args.node} (is its module loaded there, "
            "and the function exported with that arity?)")


def _guarded(args: argparse.Namespace, action: Any) -> int:
    try:
        tls = tls_option(args)
    except TlsConfigError as error:
        return _fail(USAGE, str(error))
    args.tls = tls
    try:
        with _node(args, tls) as node:
            return int(action(node))
    except Timeout as error:
        return _fail(TIMED_OUT, f"timeout: {error}")
    except RemoteError as error:
        return _fail(FAILED, f"{error.kind}: {_remote_detail(error, args)}")
    except TransportError as error:
        return _fail(UNREACHABLE, _tls_hint(args, str(error)))
    except UsageError as error:
        return _fail(USAGE, str(error))


def _ping(args: argparse.Namespace) -> int:
    def go(node: BlockingNode) -> int:
        # Connecting first tells "not there" from "refused us"; ``ping`` alone says pang to both.
        try:
            node.connect(args.node, timeout=args.timeout)
        except TlsHandshakeFailed as error:
            print("pang", flush=True)
            return _fail(UNREACHABLE, f"{args.node}: TLS failed: {error.detail or error}")
        except HandshakeFailed as error:
            print("pang", flush=True)
            if isinstance(error, BadCookie) or "cookies probably differ" in str(error):
                return _fail(UNREACHABLE, f"{args.node} refused us: wrong cookie (give the "
                                          "node's with --cookie, or set $ERLANG_COOKIE)")
            return _fail(UNREACHABLE, f"{args.node} refused the connection: {error}")
        except (TransportError, Timeout) as error:
            print("pang", flush=True)
            why = error.detail if isinstance(error, NoConnection) and error.detail else str(error)
            return _fail(UNREACHABLE, f"{args.node} is unreachable: {_tls_hint(args, why)}")
        answer = node.ping(args.node, timeout=args.timeout)
        print("pong" if answer else "pang")
        return OK if answer else UNREACHABLE
    return _guarded(args, go)


def _names(args: argparse.Namespace) -> int:
    try:
        found = epmd_names(args.host, args.epmd_port, args.timeout)
    except EpmdUnavailable as error:
        return _fail(UNREACHABLE, str(error))
    except TransportError as error:
        return _fail(UNREACHABLE, f"EPMD at {args.host}:{args.epmd_port}: {error}")
    for name, port in found:
        print(f"name {name} at port {port}")
    return OK


def _rpc(args: argparse.Namespace) -> int:
    try:
        call_args = parse_term(args.args)
    except UsageError as error:
        return _fail(USAGE, f"ARGS: {error}")
    if not isinstance(call_args, list):
        return _fail(USAGE, "ARGS must be an Erlang list, e.g. '[1, 2]'")
    args.call_args = call_args

    def go(node: BlockingNode) -> int:
        result = node.rpc(args.node, args.module, args.function, call_args, timeout=args.timeout)
        print(format_term(result))
        return OK
    return _guarded(args, go)


def _send(args: argparse.Namespace) -> int:
    try:
        message = parse_term(args.term)
    except UsageError as error:
        return _fail(USAGE, f"TERM: {error}")

    def go(node: BlockingNode) -> int:
        node.send((Atom(args.registered_name), Atom(args.node)), message, timeout=args.timeout)
        return OK
    return _guarded(args, go)
