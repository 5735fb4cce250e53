"""``beambridge compute ...``: serve, new, submit, jobs, top (also ``beambridge top``; the demo is
``beambridge demo``).

``beambridge.cli`` calls ``add_parser(subparsers)``, whose parser sets ``handler=run``;
``python -m beambridge.compute`` runs the same parser on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import Error, TransportError, UsageError
from ._errors import ServiceError, Unauthorized
from ._service import ServiceFailed

if TYPE_CHECKING:
    from ._client import Client


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``compute`` with its subcommands, and ``top`` (the cluster in a terminal), to an
    argparse subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "compute", help="the HTTP+JSON compute service and its map/reduce",
        description="Run, scaffold and use beambridge's Erlang compute service.")
    configure(parser)
    parser.set_defaults(handler=run)
    top = subparsers.add_parser(
        "top", help="the compute service's cluster in a terminal: nodes, load, jobs with progress",
        description="Watch a compute service's cluster (GET /cluster), redrawn in place each second; "
                    "q or Ctrl-C quits. --once prints one snapshot.")
    _top_arguments(top)
    top.set_defaults(handler=_top_run)
    return parser


def _top_arguments(parser: argparse.ArgumentParser) -> None:
    from ._top import add_arguments
    add_arguments(parser)


def _top_run(args: argparse.Namespace) -> int:
    from ._top import run as top
    return top(args)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="compute_command", required=True)

    serve = sub.add_parser("serve", help="start the service (and local worker nodes) until Ctrl-C")
    serve.add_argument("--local-nodes", type=int, default=None, metavar="N",
                       help="start and supervise N local worker nodes")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (default 8080; 0 = any free)")
    serve.add_argument("--bind", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--token", default=os.environ.get("BEAMBRIDGE_COMPUTE_TOKEN"),
                       help="require this bearer token (default $BEAMBRIDGE_COMPUTE_TOKEN)")
    serve.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="JSON config (job_modules, code_paths, nodes, limits...)")
    serve.add_argument("--data-root", action="append", default=None, metavar="DIR", dest="data_roots",
                       help="a folder file-reading jobs may read under (repeat for more; none by default)")
    serve.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                       help="where accepted background jobs are recorded, to finish them after a "
                            "restart (default: ~/.local/state/beambridge/compute-PORT)")
    serve.add_argument("--insecure-no-token", action="store_true",
                       help="serve a non-loopback address without a token (anyone who reaches it "
                            "can run jobs)")
    serve.add_argument("--certfile", type=Path, default=None, metavar="PEM",
                       help="serve HTTPS with this certificate (with --keyfile)")
    serve.add_argument("--keyfile", type=Path, default=None, metavar="PEM",
                       help="the certificate's private key")
    serve.add_argument("--cacertfile", type=Path, default=None, metavar="PEM",
                       help="CA certificates sent with the certificate (its chain; optional)")
    serve.add_argument("--tls-optfile", default=os.environ.get("BEAMBRIDGE_TLS_OPTFILE"), metavar="FILE",
                       help="an Erlang ssl_dist_optfile: the service and its local workers join over "
                            "TLS distribution, -proto_dist inet_tls (default $BEAMBRIDGE_TLS_OPTFILE; "
                            "'' for plain TCP)")
    serve.add_argument("--insecure-plain-http", action="store_true",
                       help="serve a token on a non-loopback address over plain HTTP (anyone on the "
                            "path can read the token)")

    new = sub.add_parser("new", help="write a ready-to-build Erlang project for your own jobs")
    new.add_argument("name", help="project and application name (an Erlang atom: a-z, 0-9, _)")
    new.add_argument("--dir", type=Path, default=Path("."), help="where to create it (default .)")

    submit = sub.add_parser("submit", help="run a job on a service, with a progress bar")
    submit.add_argument("op", choices=["call", "map", "filter", "fold", "mapreduce", "sort"])
    submit.add_argument("fun", help="module:function (the map function for mapreduce)")
    submit.add_argument("data", metavar="DATA",
                        help="JSON: the items (or the args, for call); @FILE reads a file")
    submit.add_argument("--url", default=os.environ.get("BEAMBRIDGE_COMPUTE_URL", "http://127.0.0.1:8080"))
    submit.add_argument("--token", default=os.environ.get("BEAMBRIDGE_COMPUTE_TOKEN"))
    submit.add_argument("--reduce", default=None, help="module:function reducer for mapreduce")
    submit.add_argument("--init", default=None, help="JSON initial accumulator for fold (@FILE reads a file)")
    submit.add_argument("--chunk", type=int, default=None)
    submit.add_argument("--timeout", type=float, default=None, help="job time limit, seconds")

    jobs = sub.add_parser("jobs", help="list the job functions a running service allows, with their docs",
                          description="List the job functions (module:function/arity) a running "
                                      "service allows, with the first line of each one's doc.")
    jobs.add_argument("--url", default=os.environ.get("BEAMBRIDGE_COMPUTE_URL", "http://127.0.0.1:8080"),
                      help="the service (default: $BEAMBRIDGE_COMPUTE_URL, else http://127.0.0.1:8080)")
    jobs.add_argument("--token", default=os.environ.get("BEAMBRIDGE_COMPUTE_TOKEN"),
                      help="its bearer token (default: $BEAMBRIDGE_COMPUTE_TOKEN)")
    jobs.add_argument("--json", action="store_true", help="print the listing as JSON")

    top = sub.add_parser("top", help="the cluster in a terminal (same as `beambridge top`)")
    _top_arguments(top)

    for command in (submit, jobs):
        command.add_argument("--cafile", type=Path, default=os.environ.get("BEAMBRIDGE_COMPUTE_CAFILE"),
                             metavar="PEM", help="verify an https service with this CA (default: "
                             "$BEAMBRIDGE_COMPUTE_CAFILE, else the system's CAs)")
        command.add_argument("--insecure-plain-http", action="store_true",
                             help="send the token over plain http to a non-loopback host")


def run(args: argparse.Namespace) -> int:
    try:
        if args.compute_command == "serve":
            return _serve(args)
        if args.compute_command == "new":
            from ._skeleton import create
            path = create(args.name, args.dir)
            print(f"created {path}\nnext: cd {path} && make test && make serve")
            return 0
        if args.compute_command == "submit":
            return _submit(args)
        if args.compute_command == "jobs":
            return _jobs(args)
        if args.compute_command == "top":
            return _top_run(args)
    except Error as error:
        message = str(error)
        if isinstance(error, Unauthorized):
            message += " (pass --token, or set $BEAMBRIDGE_COMPUTE_TOKEN)"
        if isinstance(error, ServiceFailed) and error.port_in_use is not None:
            message = (f"port {error.port_in_use} is in use (another service?): choose another "
                       "with --port, or --port 0 for any free one")
        print(f"beambridge compute: {message}", file=sys.stderr)
        # the command line's exit codes: 1 failed, 2 usage, 3 could not connect
        if isinstance(error, TransportError):
            return 3
        return 2 if isinstance(error, UsageError) and not isinstance(error, ServiceError) else 1
    raise AssertionError(args.compute_command)


def _serve(args: argparse.Namespace) -> int:
    from ._service import Service
    options: dict[str, Any] = {}
    if args.port is not None:
        options["port"] = args.port
    if args.bind is not None:
        options["bind"] = args.bind
    if args.local_nodes is not None:
        options["local_nodes"] = args.local_nodes
    if args.config is None:
        options.setdefault("port", 8080)
    if args.insecure_no_token:
        options["allow_no_token"] = True
    if args.insecure_plain_http:
        options["allow_plain_http"] = True
    data_dir = args.data_dir
    if data_dir is None and options.get("port"):
        state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        data_dir = state / "beambridge" / f"compute-{options['port']}"
    service = Service(config=options, config_file=args.config, token=args.token,
                      data_roots=args.data_roots, data_dir=data_dir, tls_certfile=args.certfile,
                      tls_keyfile=args.keyfile, tls_cacertfile=args.cacertfile,
                      dist_optfile=args.tls_optfile or None)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    try:
        workers = len(service.worker_pids())
        print(f"beambridge compute: serving {service.url} (node {service.node}, {workers} workers); "
              f"Ctrl-C stops. Dashboard: {service.url}/ (beambridge top in a terminal)", flush=True)
        while not stop.wait(0.5):
            if not service.running():
                print("beambridge compute: the service stopped:\n" + service.log_text()[-2000:],
                      file=sys.stderr)
                return 1
    finally:
        service.stop()
    print("beambridge compute: stopped", flush=True)
    return 0


def _client(args: argparse.Namespace) -> Client:
    from ._client import Client
    return Client(args.url, token=args.token, allow_plain_http=args.insecure_plain_http,
                  cafile=args.cafile if args.url.startswith("https:") else None)


def _submit(args: argparse.Namespace) -> int:
    data = _json_argument("DATA", args.data)
    spec: dict[str, Any] = {"timeout": args.timeout, "chunk": args.chunk}
    if args.op == "call":
        spec.update(fun=args.fun, args=data if isinstance(data, list) else [data])
    elif args.op == "mapreduce":
        spec.update(map=args.fun, items=data, reduce=args.reduce)
    else:
        spec.update(fun=args.fun, items=data)
    if args.op == "fold":
        spec["init"] = _json_argument("--init", args.init) if args.init is not None else 0
    bar = _ProgressBar(sys.stderr)
    with _client(args) as client:
        job = client.submit(args.op, progress=bar, **{k: v for k, v in spec.items() if v is not None})
        try:
            result = job.result()
        finally:
            bar.close()
    print(json.dumps(result))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        listed = client.functions()
    if args.json:
        print(json.dumps([{"name": f.name, "arity": f.arity, "doc": f.doc, "reads_files": f.reads_files}
                          for f in listed], indent=2))
        return 0
    if not listed:
        print("(no job functions: the service's job_modules list is empty, or none of them loads)")
        return 0
    width = max(len(f.signature) for f in listed)
    for function in listed:
        note = " [reads files under the data roots]" if function.reads_files else ""
        print(f"{function.signature:<{width}}  {function.summary or '(no doc)'}{note}")
    return 0


def _json_argument(name: str, text: str) -> Any:
    """``text`` as JSON, ``@FILE`` read from the file; a usage error that names the argument."""
    source = repr(text if len(text) <= 40 else text[:37] + "...")
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(text[1:]).read_text()
        except OSError as error:
            raise UsageError(f"{name}: cannot read {text[1:]}: {error.strerror or error}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise UsageError(f"{name} must be JSON (or @FILE to read it from a file); "
                         f"{source} is not: {error}") from None


class _ProgressBar:
    """A one-line text progress bar, redrawn in place on a terminal."""

    def __init__(self, stream: Any, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.width * done // total if total else self.width
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beambridge compute")
    configure(parser)
    return run(parser.parse_args(argv))
