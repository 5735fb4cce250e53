"""A Python node in its own process, for attack tests: its memory and file descriptors are its
own, so a test can measure them and cap them (``ulimit -n``) without touching the test runner.

Run as ``python target_node.py '<json options>'``. It prints ``READY <name> <port>`` and then
answers one command per line on stdin:

``rss``: ``RSS <current KiB> <peak KiB>``; ``reset``: forget the peak (Linux ``clear_refs``);
``call <node> <module> <function>``: ``CALL ok <seconds> <result>`` or ``CALL error <seconds> <why>``;
``nodes``: ``NODES <name> ...``; ``quit`` (or end of input): close the node and exit.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _rss() -> tuple[int, int]:
    current = peak = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            current = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1])
    return current, peak


def own_function(x: Any) -> Any:
    return x


def main() -> None:
    options: dict[str, Any] = json.loads(sys.argv[1])
    if options.get("nofile"):
        limit = int(options["nofile"])
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from beambridge.node import BlockingNode

    node = BlockingNode(options["name"], options["cookie"], epmd_port=options["epmd_port"],
                        **options.get("node_options", {}))
    node.expose("target", {"echo": own_function})
    print(f"READY {node.name} {node.node.port}", flush=True)
    try:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "rss":
                current, peak = _rss()
                print(f"RSS {current} {peak}", flush=True)
            elif words[0] == "reset":
                Path("/proc/self/clear_refs").write_text("5")
                print("RESET", flush=True)
            elif words[0] == "call":
                started = time.monotonic()
                try:
                    result = node.rpc(words[1], words[2], words[3], [], timeout=30)
                except Exception as error:
                    took = time.monotonic() - started
                    print(f"CALL error {took:.3f} {type(error).__name__}: {error}", flush=True)
                else:
                    print(f"CALL ok {time.monotonic() - started:.3f} {result!r}", flush=True)
            elif words[0] == "nodes":
                print("NODES " + " ".join(node.nodes()), flush=True)
            elif words[0] == "quit":
                break
    finally:
        node.close()


if __name__ == "__main__":
    main()
