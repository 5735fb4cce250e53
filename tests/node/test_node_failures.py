"""Failure modes against real nodes: dead peers, restarts, wrong cookies, taken names, no EPMD,
half handshakes, simultaneous connects, ticks, 100 MB messages, fork."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from beambridge import Atom, Timeout, otp
from beambridge.node import (
    BlockingNode,
    EpmdUnavailable,
    HandshakeFailed,
    NameTaken,
    NoConnection,
    Node,
    epmd_names,
)
from beambridge.protocol import epmd as epmd_messages

from .conftest import COOKIE, ErlNode, free_port, unique, wait_until

pytestmark = pytest.mark.erlang
A = Atom


def test_kill_erlang_mid_call_then_restart(py: BlockingNode, fresh_erl: ErlNode) -> None:
    assert py.rpc(fresh_erl.name, "erlang", "node") == A(fresh_erl.name)
    errors: list[BaseException] = []
    started = time.monotonic()

    def call() -> None:
        try:
            py.rpc(fresh_erl.name, "timer", "sleep", [20000], timeout=30)
        except BaseException as error:
            errors.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)
    fresh_erl.stop()
    caller.join(15)
    assert len(errors) == 1 and isinstance(errors[0], NoConnection), errors
    assert time.monotonic() - started < 10
    assert fresh_erl.name not in py.nodes()
    fresh_erl.start()
    assert py.rpc(fresh_erl.name, "erlang", "node") == A(fresh_erl.name)  # reconnects on demand


def test_links_and_monitors_see_noconnection(py: BlockingNode, fresh_erl: ErlNode) -> None:
    with py.mailbox() as mb:
        remote = py.rpc(fresh_erl.name, "bb_test", "linker", [mb.pid])
        ref = mb.monitor(remote)
        mb.monitor_node(fresh_erl.name)
        fresh_erl.stop()
        got = [mb.receive(timeout=10) for _ in range(3)]
        assert (A("EXIT"), remote, A("noconnection")) in got
        assert (A("DOWN"), ref, A("process"), remote, A("noconnection")) in got
        assert (A("nodedown"), A(fresh_erl.name)) in got


def test_wrong_cookie_both_directions(epmd_port: int, erl: ErlNode) -> None:
    with BlockingNode(unique("badcookie") + "@127.0.0.1", "not-the-cookie", epmd_port=epmd_port) as bad:
        with pytest.raises(HandshakeFailed) as info:
            bad.rpc(erl.name, "erlang", "node", [], timeout=10)
        assert "cookie" in str(info.value)
        # Erlang connecting to us with its (different) cookie gets pang; we stay up
        with BlockingNode(unique("good") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as good:
            assert good.rpc(erl.name, "net_adm", "ping", [A(bad.name)]) == A("pang")
        assert bad.names()  # still working


def test_name_taken_and_no_epmd(epmd_port: int) -> None:
    name = unique("taken") + "@127.0.0.1"
    with BlockingNode(name, COOKIE, epmd_port=epmd_port):
        with pytest.raises(NameTaken):
            BlockingNode(name, COOKIE, epmd_port=epmd_port)
        assert name.split("@")[0] in [n for n, _ in epmd_names(port=epmd_port)]
    deadline = time.monotonic() + 5  # close() unregistered it
    while name.split("@")[0] in [n for n, _ in epmd_names(port=epmd_port)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert name.split("@")[0] not in [n for n, _ in epmd_names(port=epmd_port)]
    with pytest.raises(EpmdUnavailable):
        epmd_names(port=free_port(), timeout=2)
    with pytest.raises(EpmdUnavailable, match="epmd -daemon"):
        BlockingNode(unique("noepmd") + "@127.0.0.1", COOKIE, epmd_port=free_port(), connect_timeout=2)


def test_peer_dies_mid_handshake(py: BlockingNode, epmd_port: int) -> None:
    # 1. something connects to us, sends half a name and goes away: we carry on
    port = py.node.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x00\x20N\x00\x00")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    # 2. a "node" registered in EPMD that hangs up after reading our name
    fake = unique("fake")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    registration = socket.create_connection(("127.0.0.1", epmd_port), timeout=5)
    registration.sendall(epmd_messages.alive2_request(fake, listener.getsockname()[1]))
    assert epmd_messages.parse_alive2_reply(registration.recv(16)) is not None

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(100)
        conn.close()

    server = threading.Thread(target=serve)
    server.start()
    started = time.monotonic()
    with pytest.raises((HandshakeFailed, NoConnection)):
        py.rpc(f"{fake}@127.0.0.1", "erlang", "node", [], timeout=10)
    assert time.monotonic() - started < 5
    server.join(5)
    registration.close()
    listener.close()
    assert py.names()


def test_simultaneous_connect_python_python(epmd_port: int) -> None:
    async def main() -> None:
        for _ in range(5):
            a = Node(unique("sima") + "@127.0.0.1", COOKIE, epmd_port=epmd_port)
            b = Node(unique("simb") + "@127.0.0.1", COOKIE, epmd_port=epmd_port)
            async with a, b:
                mb_a, mb_b = a.mailbox("ma"), b.mailbox("mb")
                await asyncio.wait_for(asyncio.gather(a.connect(b.name), b.connect(a.name)), 10)
                await asyncio.gather(a.send(("mb", b.name), 1), b.send(("ma", a.name), 2))
                assert await mb_b.receive(timeout=5) == 1
                assert await mb_a.receive(timeout=5) == 2
                assert a.nodes() == [b.name] and b.nodes() == [a.name]

    asyncio.run(main())


def test_simultaneous_connect_with_erlang(epmd_port: int, fresh_erl: ErlNode) -> None:
    async def main() -> None:
        async with Node(unique("simpy") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as node:
            mb = node.mailbox("here")
            # Erlang (told through a second node) dials us while we dial it
            async with Node(unique("helper") + "@127.0.0.1", COOKIE, epmd_port=epmd_port) as helper:
                await helper.rpc(fresh_erl.name, "erlang", "node", [])
                dial = helper.rpc(fresh_erl.name, "net_kernel", "connect_node", [A(node.name)])
                results = await asyncio.gather(dial, node.connect(fresh_erl.name))
                assert results[0] is True
            await node.send(("here", node.name), 0)
            assert await node.rpc(fresh_erl.name, "erlang", "node", []) == A(fresh_erl.name)
            assert await mb.receive(timeout=1) == 0

    asyncio.run(main())


@pytest.mark.slow
def test_idle_connection_survives_ticks(otp_runtime: otp.Runtime, epmd_port: int, test_ebin: Path) -> None:
    if (os.environ.get("BEAMBRIDGE_PURE_PYTHON", "") not in ("", "0")
            and otp_runtime.major != min(r.major for r in otp.find_runtimes())):
        # ticks are empty packets no codec reads: the pure run (on asyncio's loop) waits for
        # them on one release; the default run waited on each
        pytest.skip("the pure-codec run waits for ticks on one OTP release")
    erl = ErlNode(otp_runtime, epmd_port, test_ebin, ticktime=2)
    try:
        with BlockingNode(unique("ticky") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                          net_ticktime=2) as py:
            assert py.rpc(erl.name, "net_kernel", "get_net_ticktime", []) == 2
            time.sleep(6)  # three tick periods with no traffic
            assert erl.name in py.nodes()
            assert py.rpc(erl.name, "erlang", "nodes", [A("hidden")]) == [A(py.name)]
            dist_port = dict(py.names())[erl.name.split("@")[0]]
            assert _connections_to(dist_port) == 2  # the transport's descriptor and our duplicate
            # a peer that stops answering (frozen, not closed) is dropped within the tick time,
            # and really closed, though megabytes were still queued for it (close() alone waits
            # for them to go out: a peer that reads nothing would keep the connection for ever)
            assert erl.proc is not None
            os.kill(erl.proc.pid, signal.SIGSTOP)
            flood = threading.Thread(target=_flood, args=(py, erl.name), daemon=True)
            try:
                frozen = time.monotonic()
                flood.start()
                while erl.name in py.nodes() and time.monotonic() - frozen < 10:
                    time.sleep(0.1)
                assert erl.name not in py.nodes()
                assert time.monotonic() - frozen < 4.5
                assert wait_until(lambda: _connections_to(dist_port) == 0, 5)
                flood.join(10)
                assert not flood.is_alive()  # its sends failed (NoConnection), none hangs
            finally:
                os.kill(erl.proc.pid, signal.SIGCONT)
    finally:
        erl.stop()


def _flood(py: BlockingNode, node: str) -> None:
    """Megabytes for ``node`` until the connection is gone."""
    with contextlib.suppress(NoConnection, Timeout):
        for _ in range(64):
            py.send(("nobody", node), b"x" * (1 << 20), timeout=30)


def _connections_to(port: int) -> int:
    """This process's descriptors of established TCP connections to ``port`` on loopback."""
    sockets = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
            sockets.add(f"socket:[{fields[9]}]")
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}") in sockets
    return count


@pytest.mark.slow
def test_100mb_binary_each_way(py: BlockingNode, erl: ErlNode) -> None:
    size = 100 * 1024 * 1024
    payload = b"\x01" * size
    with py.mailbox() as mb:
        echo = unique("bigecho")
        py.rpc(erl.name, "bb_test", "start_echo", [A(echo)])
        py.send((echo, erl.name), (mb.pid, payload), timeout=120)  # out in fragments, back
        back = mb.receive(timeout=120)
        assert len(back) == size and back == payload
    del payload, back
    assert py.rpc(erl.name, "erlang", "byte_size", [b"x" * size], timeout=120) == size
    got = py.rpc(erl.name, "bb_test", "big", [size], timeout=120)
    assert len(got) == size and got[:3] == b"xxx"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_gets_a_fresh_node(py: BlockingNode, erl: ErlNode) -> None:
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)
    py_parent_name = py.name
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            result = py.rpc(erl.name, "erlang", "node", [], timeout=10)
            name = py.name
            ok = result == A(erl.name) and name != py_parent_name and str(os.getpid()) in name
            os.write(write_end, struct.pack(">B", 1 if ok else 0) + name.encode())
            code = 0
        except BaseException as error:
            os.write(write_end, b"\x00" + repr(error).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(child, 0)
    answer = os.read(read_end, 1000)
    os.close(read_end)
    assert status == 0 and answer[:1] == b"\x01", answer
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)  # the parent's node is untouched


def test_garbage_after_handshake_ends_only_that_connection(py: BlockingNode, erl: ErlNode) -> None:
    from beambridge.protocol import NEED_DATA as NEED
    from beambridge.protocol import Connected, Connection, Role

    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)
    fake = unique("rawpeer") + "@127.0.0.1"
    proto = Connection(Role.INITIATOR, this_node=fake, cookie=COOKIE, creation=1, peer_node=py.name)
    with socket.create_connection(("127.0.0.1", py.node.port), timeout=5) as sock:
        sock.sendall(proto.start())
        connected = False
        while not connected:
            event = proto.next_event()
            out = proto.data_to_send()
            if out:
                sock.sendall(out)
            if event is NEED:
                proto.receive_data(sock.recv(4096))
            connected = isinstance(event, Connected)
        deadline = time.monotonic() + 5
        while fake not in py.nodes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake in py.nodes()
        sock.sendall(b"\x00\x00\x00\x04\x83D\x00\xff")  # a header followed by a bad term
        deadline = time.monotonic() + 5
        while fake in py.nodes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake not in py.nodes()
    assert py.rpc(erl.name, "erlang", "node") == A(erl.name)  # the other connection is untouched
