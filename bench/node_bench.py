"""Erlang distribution speed: beambridge next to a second Erlang node, same work, same run.

One target Erlang node; the same operations are timed from a second Erlang node (the
reference), from beambridge (``BlockingNode`` threads and ``Node`` tasks) and, where it can do the
row, from the best Python peer (erldistpy, when installed: ``make bench`` installs it), and the ratio
beambridge/Erlang is printed for each row. The TLS row (``-proto_dist inet_tls``) has a target and a
client Erlang node of its own on TLS, and a ``BlockingNode(tls=...)``, all with one throwaway PKI
made with ``openssl``; it is skipped, saying why, on a runtime without the ssl application (the
bundled OTP 28). Run: ``.venv/bin/python bench/node_bench.py`` (``--otp 28`` for the bundled OTP 28,
``--seconds`` per row, ``--rows TEXT`` for the rows whose label has TEXT, ``--cpu N`` to run
this process on one CPU). The C floor row is built from ``bench/c/shared_reader.c`` with the
system's ``cc`` and left out, saying why, without one. Prints only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beambridge import Atom, otp
from beambridge.node import BlockingNode, Node
from beambridge.node._threads import _SPIN

HERE = Path(__file__).parent
COOKIE = "bench_" + secrets.token_hex(4)
A = Atom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: the CPUs this process had before ``--cpu`` pinned it; the Erlang nodes it starts keep them all
_every_cpu: set[int] = set()


def _unpin() -> None:
    os.sched_setaffinity(0, _every_cpu)


class Erl:
    def __init__(self, runtime: otp.Runtime, name: str, epmd_port: int, ebin: Path,
                 args: tuple[str, ...] = ()) -> None:
        self.name = f"{name}@127.0.0.1"
        env = runtime.environ({**os.environ, "ERL_EPMD_PORT": str(epmd_port)})
        self.proc = subprocess.Popen(
            [str(runtime.erl), "-noinput", "-name", self.name, "-setcookie", COOKIE, "-pa", str(ebin),
             "-kernel", "inet_dist_use_interface", "{127,0,0,1}", *args],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_unpin if _every_cpu else None)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def calibrate(run: Callable[[int], float], seconds: float) -> float:
    """Operations per second: grow N until one run takes about ``seconds``."""
    n = 200
    while True:
        elapsed = run(n)
        if elapsed >= seconds or n >= 5_000_000:
            return n / elapsed
        n = int(n * min(max(seconds / max(elapsed, 1e-3), 1.5), 20))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--otp", type=int, default=None, help="OTP major release (default: the system's)")
    parser.add_argument("--seconds", type=float, default=1.5, help="target duration of each measurement")
    parser.add_argument("--repeat", type=int, default=3,
                        help="measure each side this many times, alternating, and keep the best "
                             "(the machine is shared: the best run is the one least disturbed)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default=None,
                        help="the nodes' event loop (default: $BEAMBRIDGE_LOOP, else auto: uvloop "
                             "when installed)")
    parser.add_argument("--rows", metavar="TEXT", default="",
                        help="only the rows whose label contains TEXT (e.g. 'sequential rpc')")
    parser.add_argument("--cpu", type=int, default=None,
                        help="run this Python process on this CPU only, as `taskset -c CPU` "
                             "would (its threads then wake each other on one core); the Erlang "
                             "nodes keep every CPU")
    opts = parser.parse_args()
    if opts.cpu is not None:  # before any thread starts: they all inherit it
        _every_cpu.update(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {opts.cpu})
    if opts.loop:
        os.environ["BEAMBRIDGE_LOOP"] = opts.loop  # BlockingNode reads it, here and in the TLS rows
    runtimes = otp.find_runtimes()
    runtime = next((r for r in runtimes if opts.otp is None or r.major == opts.otp), None)
    if runtime is None:
        print(f"no OTP {opts.otp} runtime found", file=sys.stderr)
        return 2
    ebin = Path(tempfile.mkdtemp(prefix="bb_bench_"))
    subprocess.run([str(otp.erlc()), "-o", str(ebin), str(HERE / "erlang" / "bb_bench.erl")], check=True)
    epmd_port = free_port()
    epmd = subprocess.Popen(["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"])
    time.sleep(0.3)
    tag = secrets.token_hex(3)
    target = Erl(runtime, f"target_{tag}", epmd_port, ebin)
    client = Erl(runtime, f"client_{tag}", epmd_port, ebin)
    seconds = opts.seconds
    try:
        py = _start_node(f"bench_{tag}@127.0.0.1", epmd_port)
        with py:
            for erl in (target, client):
                _wait(lambda e=erl: py.ping(e.name, 2))  # type: ignore[misc]
            t = A(target.name)
            loop = type(py.loop).__module__.split(".")[0]
            py.rpc(target.name, "bb_bench", "start_echo", [A("bench_echo")])
            rows = _run_rows(py, client.name, target.name, t, epmd_port, seconds, opts.repeat,
                             opts.rows)
        rows += _tls_rows(runtime, ebin, epmd_port, tag, seconds, opts.repeat, opts.rows)
        load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
        print(f"\nbeambridge ({loop}) vs Erlang on OTP {runtime.release}, loopback, "
              f"{os.cpu_count()} cores"
              f"{'' if opts.cpu is None else f' (this process on CPU {opts.cpu})'}, "
              f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, best of {opts.repeat} "
              f"(ops/s; ratio = beambridge / Erlang)\n")
        print(f"{'operation':58} {'Erlang':>8} {'beambridge':>11} {'ratio':>7} "
              f"{'erldistpy':>10} {'ratio':>7}")
        for label, erl_rate, py_rate, peer_rate in rows:
            peer = (f"{peer_rate:10.0f} {peer_rate / erl_rate:6.2f}x" if peer_rate is not None
                    else f"{'-':>10} {'':>7}")
            print(f"{label:58} {erl_rate:8.0f} {py_rate:11.0f} {py_rate / erl_rate:6.2f}x {peer}")
    finally:
        client.stop()
        target.stop()
        epmd.kill()
        epmd.wait(10)
        shutil.rmtree(ebin, ignore_errors=True)
    return 0


def _start_node(name: str, epmd_port: int) -> BlockingNode:
    return BlockingNode(name, COOKIE, epmd_port=epmd_port)


def _wait(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("Erlang node did not come up")
        time.sleep(0.2)


Row = tuple[str, float, float, float | None]


def _best(erl_run: Callable[[int], float], py_run: Callable[[int], float], seconds: float,
          repeat: int) -> tuple[float, float]:
    erl_best = py_best = 0.0
    for _ in range(max(repeat, 1)):
        erl_best = max(erl_best, calibrate(erl_run, seconds))
        py_best = max(py_best, calibrate(py_run, seconds))
    return erl_best, py_best


def _tls_rows(runtime: otp.Runtime, ebin: Path, epmd_port: int, tag: str, seconds: float,
              repeat: int, only: str = "") -> list[Row]:
    """Over TLS distribution, an Erlang client node and a BlockingNode, every node on
    ``-proto_dist inet_tls`` with one optfile: sequential rpc from each to the same Erlang
    target, and the client's erpc:call loop into a plain function the BlockingNode exposes
    beside the same loop into the target."""
    seq_label = "sequential rpc erlang:node/0 over TLS [BlockingNode]"
    into_label = "Erlang erpc:call into Python over TLS [plain function]"
    wanted = [label for label in (seq_label, into_label) if only in label]
    if not wanted:
        return []
    if not any((runtime.root / "lib").glob("ssl-*")):
        print(f"\nover TLS: skipped: {runtime} has no ssl application (TLS distribution needs it)")
        return []
    optfile = _make_pki(Path(tempfile.mkdtemp(prefix="bb_bench_tls_")))
    args = ("-proto_dist", "inet_tls", "-ssl_dist_optfile", str(optfile))
    target = Erl(runtime, f"tls_target_{tag}", epmd_port, ebin, args)
    client = Erl(runtime, f"tls_client_{tag}", epmd_port, ebin, args)
    rows: list[Row] = []
    try:
        with BlockingNode(f"bench_tls_{tag}@127.0.0.1", COOKIE, epmd_port=epmd_port,
                          tls=optfile) as py:
            for erl in (target, client):
                _wait(lambda e=erl: py.ping(e.name, 2))  # type: ignore[misc]
            t, me = A(target.name), A(py.name)
            py.expose("bench_plain", {"node": lambda: me})

            def erl_us(how: str, args: list[Any]) -> float:
                return float(py.rpc(client.name, "bb_bench", how, args, timeout=600)) / 1e6

            def py_seq(n: int) -> float:
                start = time.perf_counter()
                for _ in range(n):
                    py.rpc(target.name, "erlang", "node", [])
                return time.perf_counter() - start

            specs: list[tuple[str, Callable[[int], float], Callable[[int], float]]] = [
                (seq_label, lambda n: erl_us("seq_rpc", [t, A("erlang"), A("node"), [], n]), py_seq),
                (into_label, lambda n: erl_us("seq_erpc", [t, A("erlang"), A("node"), [], n]),
                 lambda n: erl_us("seq_erpc", [me, A("bench_plain"), A("node"), [], n]))]
            for label, erl_run, py_run in specs:
                if label in wanted:
                    erl_best, py_best = _best(erl_run, py_run, seconds, repeat)
                    rows.append((label, erl_best, py_best, None))
    finally:
        client.stop()
        target.stop()
    return rows


def _make_pki(folder: Path) -> Path:
    """A CA, one certificate for 127.0.0.1 (as IP and DNS name: Erlang checks the host part
    as a DNS name) and the optfile every node of the TLS row reads, verifying both ways."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=bench CA",
            "-days", "1")
    (folder / "node.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:127.0.0.1\n"
                                     "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.pem", "-days", "1", "-extfile", "node.ext")
    files = (f'{{certfile, "{folder}/node.pem"}}, {{keyfile, "{folder}/node.key"}}, '
             f'{{cacertfile, "{folder}/ca.pem"}}, {{verify, verify_peer}}')
    optfile = folder / "dist.conf"
    optfile.write_text(f"[{{server, [{files}, {{fail_if_no_peer_cert, true}}]}},\n"
                       f" {{client, [{files}]}}].\n")
    return optfile


def _run_rows(py: BlockingNode, client: str, target: str, t: Atom, epmd_port: int,
              seconds: float, repeat: int = 3, only: str = "") -> list[Row]:
    rows: list[Row] = []
    for label, erl_run, py_run in _row_specs(py, client, target, t):
        if only not in label:
            continue
        # a fresh peer connection per row: it does not tick, so an idle one is dropped by Erlang
        peer = _Erldistpy.open(target, epmd_port) if _Erldistpy.does(label) else None
        peer_run = peer.run_for(label) if peer is not None else None
        erl_best = py_best = peer_best = 0.0
        try:
            for _ in range(max(repeat, 1)):
                erl_best = max(erl_best, calibrate(erl_run, seconds))
                py_best = max(py_best, calibrate(py_run, seconds))
                if peer_run is not None:
                    try:
                        peer_best = max(peer_best, calibrate(peer_run, seconds))
                    except Exception as error:  # the peer failing is reported, not fatal
                        print(f"erldistpy failed on {label!r}: {type(error).__name__}: {error}")
                        peer_run = None
        finally:
            if peer is not None:
                peer.close()
        rows.append((label, erl_best, py_best, peer_best if peer_run is not None else None))
    return rows


class _Erldistpy:
    """The best Python peer (erldistpy, a blocking client: one connection, one call at a time),
    on the rows it can do: sequential rpc through ``rex`` (a gen_server call of
    ``{call, M, F, A, user}``, the way that library calls Erlang) and one-at-a-time echo."""

    def __init__(self, node: Any, mod: Any) -> None:
        self.node, self.mod = node, mod

    @classmethod
    def open(cls, target: str, epmd_port: int) -> _Erldistpy | None:
        try:
            import erldistpy
            import erldistpy.node as erldistpy_node
        except ImportError:
            return None
        # it asks EPMD on the default port only: point it at this run's private EPMD
        original = erldistpy_node.lookup
        erldistpy_node.lookup = lambda name, host="localhost", timeout=5.0: original(  # type: ignore[assignment]
            name, host, epmd_port, timeout)
        try:
            node = erldistpy.Node(our_name=f"peer_{secrets.token_hex(3)}@127.0.0.1",
                                  peer_name=target.split("@")[0], cookie=COOKIE, peer_host="127.0.0.1")
        except Exception as error:  # a peer that cannot connect is reported, not fatal
            print(f"erldistpy: cannot connect ({type(error).__name__}: {error}); its column is empty")
            return None
        finally:
            erldistpy_node.lookup = original
        return cls(node, erldistpy)

    @staticmethod
    def does(label: str) -> bool:
        return label.endswith("[BlockingNode]") and (
            label.startswith("sequential rpc") or label.startswith("echo to a registered process"))

    def run_for(self, label: str) -> Run:
        """The run for a row that ``does`` accepts."""
        e = self.mod
        if label.startswith("sequential rpc"):
            m, f, a = (("lists", "reverse", [list(range(10))]) if "reverse" in label
                       else ("erlang", "node", []))
            request = (e.Atom("call"), e.Atom(m), e.Atom(f), a, e.Atom("user"))

            def rpc(n: int) -> float:
                start = time.perf_counter()
                for _ in range(n):
                    self.node.call("rex", request, timeout=10)
                return time.perf_counter() - start
            return rpc
        pid = self.node._our_pid
        channel = self.node._channel
        name, message = e.Atom("bench_echo"), (pid, e.Atom("ping"))

        def echo(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                channel.send_reg_send(pid, name, message)
                channel.recv_message()
            return time.perf_counter() - start
        return echo

    def close(self) -> None:
        self.node.close()


Run = Callable[[int], float]


def _row_specs(py: BlockingNode, client: str, target: str, t: Atom) -> list[tuple[str, Run, Run]]:
    """(label, Erlang run, beambridge run) per row; a run does N operations, returns seconds."""
    def erl_us(function: str, args: list[Any]) -> float:
        return float(py.rpc(client, "bb_bench", function, args, timeout=600)) / 1e6

    rev10 = [list(range(10))]
    specs: list[tuple[str, Run, Run]] = []

    # sequential rpc
    for label, m, f, a in (("sequential rpc erlang:node/0", "erlang", "node", []),
                           ("sequential rpc lists:reverse/1 (10 elements)", "lists", "reverse", rev10)):
        def erl_seq(n: int, m: str = m, f: str = f, a: list[Any] = a) -> float:
            return erl_us("seq_rpc", [t, A(m), A(f), a, n])

        def py_seq(n: int, m: str = m, f: str = f, a: list[Any] = a) -> float:
            start = time.perf_counter()
            for _ in range(n):
                py.rpc(target, m, f, a)
            return time.perf_counter() - start

        def node_seq(n: int, m: str = m, f: str = f, a: list[Any] = a) -> float:
            return _async_run(py, _async_seq(target, m, f, a, n))

        specs.append((label + " [BlockingNode]", erl_seq, py_seq))
        specs.append((label + " [Node]", erl_seq, node_seq))

    # Erlang calling Python: the client node calls a function exposed by this node, beside the
    # same call into the target Erlang node (erlang:node/0, which the Python function mirrors)
    me = A(py.name)
    py.expose("bench_plain", {"node": lambda: me})
    py.expose("bench_inline", {"node": lambda: me}, inline=True)
    for label, how, module in (
            ("Erlang erpc:call into Python, sequential [plain function]", "seq_erpc", "bench_plain"),
            ("Erlang erpc:call into Python, sequential [inline function]", "seq_erpc", "bench_inline"),
            ("Erlang rpc:call into Python, sequential [inline function]", "seq_rpc", "bench_inline")):
        def erl_into_erl(n: int, how: str = how) -> float:
            return erl_us(how, [t, A("erlang"), A("node"), [], n])

        def erl_into_py(n: int, how: str = how, module: str = module) -> float:
            return erl_us(how, [me, A(module), A("node"), [], n])

        specs.append((label, erl_into_erl, erl_into_py))

    # 64 in flight
    specs.append(("rpc erlang:node/0, 64 in flight [Node]",
                  lambda n: erl_us("pipelined_rpc", [t, A("erlang"), A("node"), [], n, 64]),
                  lambda n: _async_run(py, _async_window(target, n, 64))))

    # 4 concurrent callers
    def erl_conc(n: int) -> float:
        return erl_us("concurrent_rpc", [t, A("erlang"), A("node"), [], n, 4])

    def threads4(n: int) -> float:
        def work() -> None:
            for _ in range(n // 4):
                py.rpc(target, "erlang", "node")
        threads = [threading.Thread(target=work) for _ in range(4)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return time.perf_counter() - start

    specs.append(("rpc erlang:node/0, 4 callers [BlockingNode threads]", erl_conc, threads4))
    specs.append(("rpc erlang:node/0, 4 callers [Node tasks]", erl_conc,
                  lambda n: _async_run(py, _async_tasks(target, n, 4))))

    # the floor: a plain TCP round trip (60 bytes, {packet, 4}) to an echo on the target node,
    # no distribution at all, from a gen_tcp client on the Erlang node and a Python socket
    tcp_port = int(py.rpc(target, "bb_bench", "start_tcp_echo", []))

    def erl_tcp(n: int) -> float:
        return erl_us("tcp_rtt", [tcp_port, n])

    def py_tcp(n: int) -> float:
        frame = (60).to_bytes(4, "big") + b"x" * 60
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.perf_counter()
            for _ in range(n):
                sock.sendall(frame)
                got = 0
                while got < 64:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise RuntimeError("TCP echo closed")
                    got += len(chunk)
            return time.perf_counter() - start

    specs.append(("floor: plain TCP round trip, no distribution [socket]", erl_tcp, py_tcp))

    # the floor under the 4-threads row: four threads share one TCP connection to the echo, a
    # reader thread wakes each caller with its reply; no distribution and next to no Python
    # work, beside Erlang's four rpc callers (what any design that shares one connection among
    # blocking threads pays in wake-ups and GIL hand-overs)
    def py_tcp_shared(n: int) -> float:
        per_thread = n // 4
        total = 4 * per_thread
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            waiting: dict[int, threading.Lock] = {}
            send_lock = threading.Lock()
            ids = itertools.count()

            def reader() -> None:
                buf = b""
                for _ in range(total):
                    while len(buf) < 64:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise RuntimeError("TCP echo closed")
                        buf += chunk
                    waiting.pop(int.from_bytes(buf[4:8], "big")).release()
                    buf = buf[64:]

            def caller() -> None:
                for _ in range(per_thread):
                    ident = next(ids)
                    done = threading.Lock()
                    done.acquire()
                    waiting[ident] = done
                    with send_lock:
                        sock.sendall(b"\0\0\0\x3c" + ident.to_bytes(4, "big") + b"x" * 56)
                    if not done.acquire(timeout=30):
                        raise RuntimeError("no echo within 30 s")

            failed: list[BaseException] = []

            def guarded(work: Callable[[], None]) -> Callable[[], None]:
                def run() -> None:
                    try:
                        work()
                    except BaseException as error:  # reported below, not as a figure
                        failed.append(error)
                return run

            return _timed_threads([threading.Thread(target=guarded(reader))] + [
                threading.Thread(target=guarded(caller)) for _ in range(4)], failed,
                "shared-connection floor")

    specs.append(("floor: 4 threads share one TCP connection, no distribution [socket]",
                  erl_conc, py_tcp_shared))

    # the same floor with the reading and routing in C, outside the GIL (bench/c/shared_reader.c):
    # what a call path in C could reach at best, beside the Python floor above
    reader = _shared_reader()
    if reader is not None:
        def c_tcp_shared(n: int, python_us: float = 0.0) -> float:
            per_thread = n // 4
            spins = _python_spins(python_us)
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=30) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)  # the C reader blocks in recv()
                shared = reader.Reader(sock.fileno(), _SPIN)
                failed: list[BaseException] = []

                def caller(slot: int) -> None:
                    frame = b"\0\0\0\x3c" + slot.to_bytes(4, sys.byteorder) + b"x" * 56
                    try:
                        for _ in range(per_thread):
                            for _ in range(spins):  # the call's own Python, GIL held
                                pass
                            shared.call(slot, frame)
                    except BaseException as error:  # reported below, not as a figure
                        failed.append(error)

                return _timed_threads([threading.Thread(target=caller, args=(i,)) for i in range(4)],
                                      failed, "C shared-connection floor")

        specs.append(("floor: 4 threads share one TCP connection, reading and routing in C, no GIL [socket]",
                      erl_conc, c_tcp_shared))
        # the same with some Python per call, as a call path in C would still run at its edges
        # (arguments in, result out): how much of it the 4-threads goal leaves room for
        specs.append((f"floor: the same in C, plus {_EDGE_US:.0f} us of Python per call [socket]",
                      erl_conc, lambda n: c_tcp_shared(n, _EDGE_US)))

    # echo
    dest = (A("bench_echo"), t)

    def erl_echo(n: int) -> float:
        return erl_us("echo_seq", [dest, A("ping"), n])

    def echo_seq(n: int) -> float:
        with py.mailbox() as mb:
            start = time.perf_counter()
            for _ in range(n):
                mb.send(("bench_echo", target), (mb.pid, A("ping")))
                mb.receive(timeout=10)
            return time.perf_counter() - start

    specs.append(("echo to a registered process, 1 at a time [BlockingNode]", erl_echo, echo_seq))
    specs.append(("echo to a registered process, 1 at a time [Node]", erl_echo,
                  lambda n: _async_run(py, _async_echo(target, n, 1))))
    specs.append(("echo, 64 in flight [Node]",
                  lambda n: erl_us("echo_inflight", [dest, A("ping"), n, 64]),
                  lambda n: _async_run(py, _async_echo(target, n, 64))))
    return specs


def _timed_threads(threads: list[threading.Thread], failed: list[BaseException], what: str) -> float:
    """Seconds from starting ``threads`` to their end; raises, not a figure, when one failed
    (``failed``, filled by the threads) or hung."""
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    elapsed = time.perf_counter() - start
    if failed or any(th.is_alive() for th in threads):
        raise RuntimeError(f"{what} failed: {failed or 'a thread hung'}")
    return elapsed


#: the Python a call costs at its edges in the last floor row, in microseconds of this machine
_EDGE_US = 20.0


def _python_spins(us: float) -> int:
    """Turns of an empty Python loop that take about ``us`` microseconds here (best of five)."""
    if us <= 0:
        return 0
    turns = 100_000
    best = min(_time_loop(turns) for _ in range(5))
    return max(1, round(us * 1e-6 / (best / turns)))


def _time_loop(turns: int) -> float:
    start = time.perf_counter()
    for _ in range(turns):
        pass
    return time.perf_counter() - start


def _shared_reader() -> Any:
    """bench/c/shared_reader.c built with the system's C compiler into a scratch folder and
    imported; None, saying why, when it cannot be built (that row is left out)."""
    import importlib.util
    import sysconfig
    out = Path(tempfile.mkdtemp(prefix="bb_reader_")) / ("shared_reader"
                                                          + str(sysconfig.get_config_var("EXT_SUFFIX")))
    cc = os.environ.get("CC", "cc")
    built = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-I", sysconfig.get_paths()["include"],
                            str(HERE / "c" / "shared_reader.c"), "-o", str(out), "-lpthread"],
                           capture_output=True, text=True)
    if built.returncode != 0:
        print(f"the C floor row is left out: {cc} failed: {built.stderr.strip()[:300]}")
        return None
    spec = importlib.util.spec_from_file_location("shared_reader", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shutil.rmtree(out.parent, ignore_errors=True)  # loaded: the file is no longer needed
    return module


def _async_run(py: BlockingNode, make: Callable[[Node], Any]) -> float:
    async def go() -> float:
        start = time.perf_counter()
        await make(py.node)
        return time.perf_counter() - start
    return asyncio.run_coroutine_threadsafe(go(), py.loop).result(600)


def _async_seq(target: str, m: str, f: str, a: list[Any], n: int) -> Callable[[Node], Any]:
    async def run(node: Node) -> None:
        for _ in range(n):
            await node.rpc(target, m, f, a)
    return run


def _async_window(target: str, n: int, window: int) -> Callable[[Node], Any]:
    async def run(node: Node) -> None:
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await node.rpc(target, "erlang", "node", [])
        await asyncio.gather(*(worker() for _ in range(window)))
    return run


def _async_tasks(target: str, n: int, tasks: int) -> Callable[[Node], Any]:
    async def run(node: Node) -> None:
        async def worker() -> None:
            for _ in range(n // tasks):
                await node.rpc(target, "erlang", "node", [])
        await asyncio.gather(*(worker() for _ in range(tasks)))
    return run


def _async_echo(target: str, n: int, window: int) -> Callable[[Node], Any]:
    async def run(node: Node) -> None:
        mb = node.mailbox()
        msg = (mb.pid, A("ping"))
        dest = ("bench_echo", target)
        first = min(window, n)
        for _ in range(first):
            await node.send(dest, msg, sender=mb)
        left = n - first
        for _ in range(n):
            await mb.receive(10)
            if left:
                left -= 1
                await node.send(dest, msg, sender=mb)
        mb.close()
    return run


if __name__ == "__main__":
    sys.exit(main())
