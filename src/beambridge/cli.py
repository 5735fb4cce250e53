"""The ``beambridge`` command line.

Subcommands come from the layers that own them: each provides ``add_parser(subparsers)``, whose
parsers ``set_defaults(handler=fn)`` with ``fn(args) -> int``. Exit codes: 0 ok,
1 the operation failed (remote error, bad input), 2 usage error, 3 could not connect, 4 timeout.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

# Each layer's subcommand module, with the top-level packages of the optional extra it needs (if
# any): only a missing one of those skips the module; any other import error is a bug and surfaces.
_COMMAND_MODULES: dict[str, frozenset[str]] = {
    "beambridge.node._cli": frozenset(),
    "beambridge.compute._cli": frozenset(),
    "beambridge.web._cli": frozenset(),
}


def _demo(args: argparse.Namespace) -> int:
    if args.codec:
        from ._demo import codec

        return codec.run()
    if args.below < 2:
        raise SystemExit("beambridge demo: --below must be at least 2")
    from ._demo import main as demo_main

    return demo_main.run(args.below, serve=args.serve)


def _layers() -> list[ModuleType]:
    found = []
    for name, optional in _COMMAND_MODULES.items():
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] not in optional:
                raise
            logging.getLogger("beambridge.cli").debug("%s skipped: %s is not installed", name, exc.name)
    return found


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """``-v`` after the subcommand too. Its own ``dest`` with no default: a subparser's
    default would otherwise overwrite the count given before the subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                if not any("-v" in a.option_strings for a in sub._actions):
                    sub.add_argument("-v", "--verbose", action="count", dest="verbose_after",
                                     default=argparse.SUPPRESS, help="log more (-vv: debug)")
                _verbose_everywhere(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beambridge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="the main job: a local cluster, a web app on both roads, Erlang beside Python")
    demo.add_argument("--below", type=int, default=1_000_000, metavar="N",
                      help="the job's bound: the longest Collatz chain below N (default 1000000)")
    demo.add_argument("--serve", action="store_true",
                      help="keep the cluster and the web app running for a browser until Ctrl-C")
    demo.add_argument("--codec", action="store_true",
                      help="only the codec round trip through a local BEAM")
    demo.set_defaults(handler=_demo)
    for layer in _layers():
        layer.add_parser(commands)
    _verbose_everywhere(parser)
    args = parser.parse_args(argv)
    verbose = args.verbose + getattr(args, "verbose_after", 0)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.error(f"{args.command}: no handler (its parser must set_defaults(handler=...))")
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
