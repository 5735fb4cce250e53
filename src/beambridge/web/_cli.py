"""``beambridge receiver --name NAME@HOST module:handler``: the receiver, standalone."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from .._errors import Error
from ..node._cli import add_epmd_port, add_tls_options, tls_option
from ._config import MAPPINGS, WebSettings

log = logging.getLogger("beambridge.web.receiver")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "receiver", help="serve messages Erlang sends to a node name with a Python handler",
        description="Owns the node NAME@HOST; every message Erlang sends to it goes to the "
                    "handler; when the message is {Pid, Request}, the handler's return value "
                    "is sent back to Pid. A handler that raises is logged; serving goes on.")
    parser.add_argument("target", metavar="module:handler",
                        help="module:function called with each message")
    parser.add_argument("--name", required=True, help="node name, name@host")
    parser.add_argument("--cookie", default=None, help="default: $BEAMBRIDGE_COOKIE, "
                        "$ERLANG_COOKIE, ~/.erlang.cookie")
    add_epmd_port(parser, default=False,
                  default_help="$BEAMBRIDGE_EPMD_PORT, else $ERL_EPMD_PORT, else 4369")
    add_tls_options(parser, listen=True)  # Erlang connects to the receiver: where, and how
    parser.add_argument("--mapping", choices=sorted(MAPPINGS), default=None)
    parser.add_argument("--register", default=None,
                        help="name to register for gen_server:call (default: the short name)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ._receiver import Receiver, load_handler

    try:
        settings = WebSettings.from_env()
        handler = load_handler(args.target)
        # the flags first, then the BEAMBRIDGE_* settings a web worker on this host reads too
        options: dict[str, Any] = settings.node_options()
        options.pop("tls", None)
        tls = tls_option(args)  # --tls-optfile, else $BEAMBRIDGE_TLS_OPTFILE
        if tls is not None:
            options["tls"] = tls
        for name in ("epmd_port", "listen_host", "listen_ports"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
        mapping = MAPPINGS[args.mapping] if args.mapping else settings.term_mapping
        receiver = Receiver(args.name, handler, cookie=args.cookie or settings.cookie,
                            mapping=mapping, register=args.register, **options)
        receiver.open()
    except (Error, ImportError, AttributeError) as error:
        log.error("receiver: %s", error)
        return 3 if isinstance(error, Error) and not isinstance(error, ValueError) else 2

    def stop(signum: int, frame: Any) -> None:
        receiver._stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    assert receiver.node is not None
    log.warning("receiver %s serving with %s", receiver.node.name, args.target)
    try:
        receiver.serve_forever()
    finally:
        receiver.stop()
    return 0
