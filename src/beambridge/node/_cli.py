"""``beambridge ping | names | rpc | send``: the node from a shell.

Arguments and results are written in Erlang term syntax (``beambridge.term.parse_term`` and
``format_term``). Exit codes a script can rely on: 0 success (``pong``), 1 Erlang raised, threw
or exited, 2 usage or syntax error, 3 the node or EPMD could not be reached (``pang``),
4 timeout.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from .._errors import RemoteError, Timeout, TransportError, UsageError
from ..term import Atom, format_term, parse_term
from ._blocking import BlockingNode, epmd_names

OK, FAILED, USAGE, UNREACHABLE, TIMED_OUT = 0, 1, 2, 3, 4


def add_parser(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cookie", help="the cookie (default: $ERLANG_COOKIE, ~/.erlang.cookie)")
    common.add_argument("--name", help="this node's name (default: a unique bbcli name)")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")

    ping = commands.add_parser("ping", parents=[common], help="like net_adm:ping: pong or pang")
    ping.add_argument("node")
    ping.set_defaults(handler=_ping)

    names = commands.add_parser("names", help="the nodes EPMD knows on HOST (like epmd -names)")
    names.add_argument("host", nargs="?", default="127.0.0.1")
    names.add_argument("--port", type=int, help="EPMD port (default: $ERL_EPMD_PORT or 4369)")
    names.add_argument("--timeout", type=float, default=5.0)
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


def _node(args: argparse.Namespace) -> BlockingNode:
    return BlockingNode(args.name or _default_name(args.node), args.cookie,
                        connect_timeout=args.timeout)


def _fail(code: int, message: str) -> int:
    print(f"beambridge: {message}", file=sys.stderr)
    return code


def _guarded(args: argparse.Namespace, action: Any) -> int:
    try:
        with _node(args) as node:
            return int(action(node))
    except Timeout as error:
        return _fail(TIMED_OUT, f"timeout: {error}")
    except RemoteError as error:
        detail = format_term(error.reason) if error.reason is not None else ""
        return _fail(FAILED, f"{error.kind}: {detail}")
    except TransportError as error:
        return _fail(UNREACHABLE, str(error))
    except UsageError as error:
        return _fail(USAGE, str(error))


def _ping(args: argparse.Namespace) -> int:
    def go(node: BlockingNode) -> int:
        answer = node.ping(args.node, timeout=args.timeout)
        print("pong" if answer else "pang")
        return OK if answer else UNREACHABLE
    return _guarded(args, go)


def _names(args: argparse.Namespace) -> int:
    try:
        found = epmd_names(args.host, args.port, args.timeout)
    except TransportError as error:
        return _fail(UNREACHABLE, f"no EPMD at {args.host}: {error}")
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
