"""Instructions per call: the node's cost as a figure that a busy machine does not move.

Wall-clock rows (``node_bench.py``) swing with the load on a shared 2-core machine; the number of
instructions the Python process runs per call does not. This runs N1 and then N2 calls (after a
warm-up) under ``valgrind --tool=callgrind``: sequential ``rpc erlang:node/0`` from
``BlockingNode`` and from the asyncio ``Node``, 64 in flight from ``Node``, 4 threads sharing one
``BlockingNode``, and the Erlang node's ``erpc:call`` loop into a function this process exposes
(plain: run in a worker thread; inline: on the loop), and messages to an echo process and
back, one at a time and 64 in flight. It prints (Ir(N2) - Ir(N1)) / (N2 - N1):
the instructions of one call, start-up and warm-up cancelled out. Only this Python process is
counted (the Erlang target runs natively). Run: ``.venv/bin/python bench/node_cost.py``
(``--calls 200,1200``, ``--only TEXT``, ``--loop asyncio``). Needs valgrind (Debian
``valgrind``). Prints only; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beambridge import otp

COOKIE = "cost_" + secrets.token_hex(4)

# The measured program: connect, warm up, then N calls; argv: mode target cookie epmd_port n.
_CALLER = """
import asyncio, os, sys, threading
from beambridge import Atom, BlockingNode
from beambridge.node import Node
mode, target, cookie, port, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
name = f"cost{os.getpid()}@127.0.0.1"
if os.environ.get("BEAMBRIDGE_LOOP") == "uvloop":  # the async rows' loop, as BlockingNode's
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
if mode == "Node":
    async def main():
        async with Node(name, cookie, epmd_port=port) as node:
            for _ in range(50 + n):
                await node.rpc(target, "erlang", "node", [])
    asyncio.run(main())
elif mode == "window":  # the asyncio Node, 64 calls in flight, n calls in all
    async def main():
        async with Node(name, cookie, epmd_port=port) as node:
            async def calls(count):
                left = count

                async def worker():
                    nonlocal left
                    while left > 0:
                        left -= 1
                        await node.rpc(target, "erlang", "node", [])
                await asyncio.gather(*(worker() for _ in range(64)))
            await calls(50)
            await calls(n)
    asyncio.run(main())
elif mode.startswith("into"):  # the target erpc:calls a function exposed here, n times
    async def main():
        async with Node(name, cookie, epmd_port=port) as node:
            me = Atom(node.name)
            node.expose("cost", {"node": lambda: me}, inline=mode == "into-inline")
            for count in (50, n):
                await node.rpc(target, "bb_bench", "seq_erpc", [me, Atom("cost"), Atom("node"), [], count],
                               timeout=600)
    asyncio.run(main())
elif mode == "echo":  # BlockingNode: a message to the target's echo and its answer, n times
    with BlockingNode(name, cookie, epmd_port=port) as node:
        echo = f"cost_echo_{os.getpid()}"
        node.rpc(target, "bb_bench", "start_echo", [Atom(echo)])
        with node.mailbox() as box:
            for _ in range(50 + n):
                box.send((echo, target), (box.pid, Atom("ping")))
                box.receive(timeout=10)
elif mode == "echo-window":  # the asyncio Node, 64 echoes in flight, n in all
    async def main():
        async with Node(name, cookie, epmd_port=port) as node:
            echo = f"cost_echo_{os.getpid()}"
            await node.rpc(target, "bb_bench", "start_echo", [Atom(echo)])
            box = node.mailbox()
            msg, dest = (box.pid, Atom("ping")), (echo, target)
            for count in (50, n):
                for _ in range(64):
                    await node.send(dest, msg, sender=box)
                for i in range(count):
                    await box.receive(10)
                    if i < count - 64:
                        await node.send(dest, msg, sender=box)
    asyncio.run(main())
elif mode == "threads":  # 4 threads share one BlockingNode, n calls in all
    with BlockingNode(name, cookie, epmd_port=port) as node:
        def work(count):
            for _ in range(count):
                node.rpc(target, "erlang", "node", [])
        work(50)
        threads = [threading.Thread(target=work, args=(n // 4,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
else:
    with BlockingNode(name, cookie, epmd_port=port) as node:
        for _ in range(50 + n):
            node.rpc(target, "erlang", "node", [])
"""


_MODES = (
    ("BlockingNode", "sequential rpc erlang:node/0 [BlockingNode]"),
    ("Node", "sequential rpc erlang:node/0 [Node]"),
    ("window", "rpc erlang:node/0, 64 in flight [Node]"),
    ("threads", "rpc erlang:node/0, 4 callers [BlockingNode threads]"),
    ("into-inline", "Erlang erpc:call into Python [inline function]"),
    ("into-plain", "Erlang erpc:call into Python [plain function]"),
    ("echo", "echo to a registered process, 1 at a time [BlockingNode]"),
    ("echo-window", "echo, 64 in flight [Node]"),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _instructions(script: Path, mode: str, target: str, port: int, n: int, out: Path) -> int:
    log = out / f"{mode}-{n}.log"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out / 'cg.out'}",
                    sys.executable, str(script), mode, target, COOKIE, str(port), str(n)],
                   check=True, stdout=subprocess.DEVNULL, stderr=log.open("w"), timeout=1800)
    found = re.search(r"Collected : (\d+)", log.read_text())
    if found is None:
        raise RuntimeError(f"no instruction count in {log}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", default="200,1200", help="N1,N2 (default 200,1200)")
    parser.add_argument("--only", metavar="TEXT", default="", help="only the rows whose label has TEXT")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=None,
                        help="every row's event loop (default: uvloop when installed)")
    opts = parser.parse_args()
    loop = opts.loop or ("uvloop" if importlib.util.find_spec("uvloop") else "asyncio")
    os.environ["BEAMBRIDGE_LOOP"] = loop
    n1, n2 = (int(x) for x in opts.calls.split(","))
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    runtime = otp.default_runtime()
    work = Path(tempfile.mkdtemp(prefix="bb_cost_"))
    script = work / "caller.py"
    script.write_text(_CALLER)
    port = _free_port()
    target = f"cost_target_{secrets.token_hex(3)}@127.0.0.1"
    env = runtime.environ({**os.environ, "ERL_EPMD_PORT": str(port)})
    epmd = subprocess.Popen([str(runtime.tool("epmd")), "-port", str(port), "-address", "127.0.0.1"])
    erl = None
    try:
        time.sleep(0.3)
        bench_erl = Path(__file__).parent / "erlang" / "bb_bench.erl"
        subprocess.run([str(otp.erlc()), "-o", str(work), str(bench_erl)], check=True)
        erl = subprocess.Popen([str(runtime.erl), "-noinput", "-name", target, "-setcookie", COOKIE,
                                "-pa", str(work), "-kernel", "inet_dist_use_interface", "{127,0,0,1}"],
                               env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        time.sleep(2.0)
        print(f"instructions per call of this Python process ({loop}) against {runtime}, "
              f"callgrind, ({n2} - {n1} calls)")
        for mode, label in _MODES:
            if opts.only and opts.only not in label:
                continue
            low = _instructions(script, mode, target, port, n1, work)
            high = _instructions(script, mode, target, port, n2, work)
            print(f"  {label:58} {(high - low) / (n2 - n1):>10,.0f}")
    finally:
        for proc in (erl, epmd):
            if proc is not None:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
