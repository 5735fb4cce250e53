"""``beambridge top``: the dashboard's cluster view in a terminal.

Polls ``GET /cluster`` (the same JSON the web dashboard reads) and redraws in place with ANSI
escapes on the alternate screen (no curses: the screen is one block of lines rewritten each
second, and what ``--once`` prints for scripts is exactly that block). ``q`` or Ctrl-C
quits; the terminal is restored whatever happens.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .._errors import Error, TransportError, UsageError
from ._errors import ServiceError, Unauthorized

SPARK = "_▁▂▃▄▅▆▇█"  # "_": no job ended in that bucket


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("BEAMBRIDGE_COMPUTE_URL", "http://127.0.0.1:8080"),
                        help="the service (default: $BEAMBRIDGE_COMPUTE_URL, else http://127.0.0.1:8080)")
    parser.add_argument("--token", default=os.environ.get("BEAMBRIDGE_COMPUTE_TOKEN"),
                        help="its bearer token (default: $BEAMBRIDGE_COMPUTE_TOKEN)")
    parser.add_argument("--cafile", type=Path, default=os.environ.get("BEAMBRIDGE_COMPUTE_CAFILE"),
                        metavar="PEM", help="verify an https service with this CA (default: "
                        "$BEAMBRIDGE_COMPUTE_CAFILE, else the system's CAs)")
    parser.add_argument("--insecure-plain-http", action="store_true",
                        help="send the token over plain http to a non-loopback host")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit (for scripts)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between refreshes (default 1)")
    parser.add_argument("--finished", type=int, default=10, metavar="N",
                        help="how many ended jobs to show (default 10)")


def run(args: argparse.Namespace) -> int:
    """The command: exit 0, or 1 failed (a refused token too), 2 usage, 3 could not connect."""
    from ._client import Client
    try:
        if args.interval <= 0 or args.finished < 0:
            raise UsageError("--interval must be positive and --finished at least 0")
        client = Client(args.url, token=args.token, timeout=10.0, retries=0,
                        allow_plain_http=args.insecure_plain_http,
                        cafile=args.cafile if args.url.startswith("https:") else None)
        with client:
            if args.once:
                size = shutil.get_terminal_size((120, 40))
                print("\n".join(render(client.cluster(args.finished), size.columns, None)))
                return 0
            if not (sys.stdin.isatty() and sys.stdout.isatty()):
                raise UsageError("beambridge top redraws a terminal; not one here: use --once")
            return _interactive(lambda: client.cluster(args.finished), args.interval, sys.stdout)
    except Error as error:
        message = str(error)
        if isinstance(error, Unauthorized):
            message += " (pass --token, or set $BEAMBRIDGE_COMPUTE_TOKEN)"
        print(f"beambridge top: {message}", file=sys.stderr)
        if isinstance(error, TransportError):
            return 3
        return 2 if isinstance(error, UsageError) and not isinstance(error, ServiceError) else 1


def _interactive(fetch: Callable[[], dict[str, Any]], interval: float, out: TextIO) -> int:
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    previous = signal.getsignal(signal.SIGWINCH)
    signal.signal(signal.SIGWINCH, lambda *_: None)  # a resize wakes the select below
    last: dict[str, Any] | None = None
    problem: str | None = None
    try:
        tty.setcbreak(fd)  # keys one at a time, no echo; Ctrl-C still interrupts
        out.write("\x1b[?1049h\x1b[?25l")  # the alternate screen, no cursor
        while True:
            try:
                last, problem = fetch(), None
            except Unauthorized:
                raise
            except Error as error:  # the service restarting, a timeout: keep trying
                problem = str(error)
            size = shutil.get_terminal_size((120, 40))
            lines = render(last, size.columns, problem) if last is not None else [
                f"beambridge top: {problem or 'waiting for the service'}"]
            lines = [*lines[:max(1, size.lines - 1)], "(q quits)"]
            # No newline after the last line: on the screen's last row it would scroll.
            out.write("\x1b[H" + "\x1b[K\r\n".join(lines) + "\x1b[K\x1b[J")
            out.flush()
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                try:
                    ready, _, _ = select.select([fd], [], [], left)
                except InterruptedError:
                    break
                if not ready:
                    break
                if os.read(fd, 32).lower().startswith(b"q"):
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)


# -- the view ---------------------------------------------------------------------------------

def render(cluster: dict[str, Any] | None, width: int, problem: str | None) -> list[str]:
    """The screen for one ``/cluster`` answer, as lines at most ``width`` wide."""
    if cluster is None:
        return [f"beambridge top: {problem or 'no answer yet'}"]
    clock = time.strftime("%H:%M:%S", time.localtime(cluster.get("time", 0) / 1000))
    lines = [f"beambridge top  {cluster.get('node', '?')}  {clock}"
             + (f"  (stale: {problem})" if problem else "")]
    nodes = cluster.get("nodes") or []
    lines += ["", f"NODES ({len(nodes)})"]
    lines += _table(["NAME", "ROLE", "HOST", "OS PID", "RUNQ", "PROCS", "MEMORY", "CONNS", "STATUS"],
                    [[n.get("name", ""), _role(n), n.get("host", ""), n.get("os_pid", ""),
                      n.get("run_queue", ""), n.get("process_count", ""), _bytes(n.get("memory_bytes")),
                      len(n["connections"]) if isinstance(n.get("connections"), list) else "",
                      n.get("status", "")] for n in nodes], right={3, 4, 5, 6, 7})
    running = cluster.get("running") or []
    lines += ["", f"RUNNING JOBS ({len(running)})"]
    lines += _table(["ID", "OP", "FUNCTION", "PROGRESS", "ELAPSED"],
                    [[j.get("id", ""), j.get("op", ""), j.get("fun") or "", _bar(j.get("progress") or {}),
                      _duration(j.get("elapsed_ms"))] for j in running], right={4}) if running else ["  none"]
    finished = cluster.get("finished") or []
    lines += ["", f"RECENT JOBS (last {len(finished)})"]
    lines += _table(["ID", "OP", "FUNCTION", "STATUS", "DURATION", "REASON"],
                    [[j.get("id", ""), j.get("op", ""), j.get("fun") or "", j.get("status", ""),
                      _duration(j.get("duration_ms")), _reason(j)] for j in finished],
                    right={4}) if finished else ["  none"]
    buckets = (cluster.get("throughput") or {}).get("buckets") or []
    counts = [int(b.get("done", 0)) + int(b.get("failed", 0)) + int(b.get("cancelled", 0)) for b in buckets]
    failed = sum(int(b.get("failed", 0)) for b in buckets)
    lines += ["", f"THROUGHPUT (per 5 s, last 5 min: {sum(counts)} jobs, {failed} failed)",
              "  " + _spark(counts)]
    return [line[:width] for line in lines]


def _table(header: list[str], rows: list[list[Any]], right: set[int], cell: int = 48) -> list[str]:
    """Aligned columns; a cell past ``cell`` characters is cut (a long node name must not push
    the load figures off the screen)."""
    cells = [header] + [[_cut(str(c), cell) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in cells]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _role(node: dict[str, Any]) -> str:
    role = str(node.get("role", ""))
    if role == "peer":
        own = f" ({node['node_role']})" if node.get("node_role") else ""
        return f"{node.get('kind', 'node')} peer{own}"
    return {"local": "worker (local)", "remote": "worker (remote)"}.get(role, role)


def _bar(progress: dict[str, Any], width: int = 20) -> str:
    done, total = int(progress.get("done", 0)), int(progress.get("total", 0))
    filled = width * done // total if total else 0
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _reason(job: dict[str, Any]) -> str:
    error = job.get("error")
    text = f"{error.get('kind', '')}: {error.get('reason', '')}" if isinstance(error, dict) else str(
        job.get("reason") or "")
    return text if len(text) <= 60 else text[:57] + "..."


def _spark(counts: list[int]) -> str:
    top = max(counts, default=0)
    if not top:
        return "(no job ended)"
    return "".join(SPARK[0 if not c else max(1, round(c * (len(SPARK) - 1) / top))] for c in counts)


def _bytes(n: Any) -> str:
    if not isinstance(n, int):
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def _duration(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return ""
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"
