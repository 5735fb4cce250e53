"""A test network of real hosts made of Linux network namespaces.

Each host is a namespace with a loopback, one veth link (``eth0``, ``10.77.X.Y/24``) and its
own processes; the other ends of the links sit on a bridge in a namespace of its own (the
switch). Nothing is made in the root namespace: the only non-loopback addresses exist inside
namespaces this module made, so no packet of a test leaves them. Every name carries a random
tag, so runs side by side do not collide; ``Network.close`` kills what runs in the namespaces
(by pid) and deletes them, also after a failure.

A host runs processes with ``ip netns exec`` (``Host.popen``); Python code of the test process
runs inside a host with ``Host.call`` (a thread that joins the namespace with ``setns``: a
``BlockingNode`` made there keeps its loop thread, hence its sockets, in that host).

Faults: ``Host.cut``/``Host.restore`` take the switch's end of the host's link down and up (a
pulled cable: the host's own interface and routes stay, packets are lost, nothing is reset);
``Host.freeze``/``Host.thaw`` SIGSTOP/SIGCONT every process of the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why namespaces cannot be made here (``None`` when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (Debian package iproute2)"
    probe = f"bbprobe{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {path}: {os.strerror(error)}")
    finally:
        os.close(fd)


def _used_subnets() -> set[int]:
    """Third octets of 10.77.X.0/24 networks the root namespace already has (avoided)."""
    out = _ip("-o", "-4", "addr", "show", check=False).stdout
    found = set()
    for word in out.split():
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_interface(word).network
            if net.overlaps(ipaddress.ip_network("10.77.0.0/16")):
                found.add(int(str(net.network_address).split(".")[2]))
    return found


class Host:
    """One host: its namespace, address and link; what runs there is killed with the network."""

    def __init__(self, net: Network, name: str, index: int) -> None:
        self.net = net
        self.name = name
        self.ns = f"bb{net.tag}{name}"
        self.ip = f"{net.prefix}.{index}"
        self.port = f"bb{net.tag}p{index}"  # the switch's end of the link
        self.procs: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ip} ({self.ns})>"

    def popen(self, args: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
        """Start ``args`` on this host (``ip netns exec``; it execs, so the pid is the program's)."""
        options.setdefault("stdin", subprocess.DEVNULL)
        options.setdefault("stdout", subprocess.DEVNULL)
        options.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *args], **options)
        self.procs.append(proc)
        return proc

    def call(self, fn: Callable[[], T], timeout: float = 60.0) -> T:
        """``fn()`` in a thread inside this host's namespace (threads it starts stay there)."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                _setns(f"/run/netns/{self.ns}")
                box["value"] = fn()
            except BaseException as error:  # handed to the caller
                box["error"] = error

        thread = threading.Thread(target=run, name=f"netns-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{fn!r} on {self.name} did not finish within {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def pids(self) -> list[int]:
        """Processes in this namespace (never this test process itself)."""
        out = _ip("netns", "pids", self.ns, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]

    def cut(self) -> None:
        _ip("-n", self.net.switch, "link", "set", self.port, "down")

    def restore(self) -> None:
        _ip("-n", self.net.switch, "link", "set", self.port, "up")

    def freeze(self) -> list[int]:
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def kill_all(self) -> None:
        """Kill every process of this host by pid (thawed first), and reap ours."""
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
            for proc in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            deadline = time.monotonic() + 5
            while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
                time.sleep(0.02)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)


class Network:
    """Hosts named ``names`` on one switch, addresses ``10.77.X.1``, ``.2``, ... in that order."""

    def __init__(self, names: Sequence[str]) -> None:
        self.tag = secrets.token_hex(3)
        used = _used_subnets()
        third = next(x for x in (secrets.randbelow(250) + 1 for _ in range(100)) if x not in used)
        self.prefix = f"10.77.{third}"
        self.switch = f"bb{self.tag}sw"
        self.hosts = {name: Host(self, name, i) for i, name in enumerate(names, 1)}
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_ns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts.values():
            self._add_ns(host.ns)
            # both ends made where they live: nothing ever appears in the root namespace
            _ip("-n", self.switch, "link", "add", host.port, "type", "veth",
                "peer", "name", "eth0", "netns", host.ns)
            _ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")

    def close(self) -> None:
        """Kill every process in the namespaces (by pid), then delete the namespaces."""
        for host in self.hosts.values():
            if host.ns in self._made:
                host.kill_all()
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()
