"""Talking to EPMD over asyncio, with the sans-IO messages of ``beambridge.protocol.epmd``."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
from collections.abc import Callable

from ..protocol import RemoteProtocolError, epmd
from ._errors import EpmdUnavailable, NameTaken

log = logging.getLogger("beambridge.node")

#: the end of "no EPMD" messages, for Python callers; the command line swaps it for its flag
START_EPMD_HINT = ", or pass start_epmd=True"


async def _open(host: str, port: int, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as error:
        why = str(error) or f"no answer within {timeout} s"  # a timeout's text is empty
        if not _is_local(host):  # nothing to start here: that host's EPMD is down or cut off
            raise EpmdUnavailable(f"no EPMD at {host}:{port} ({why}): is the host up and "
                                  "reachable, and its EPMD running?") from None
        raise EpmdUnavailable(
            f"no EPMD at {host}:{port} ({why}); start one with `epmd -daemon"
            f"{'' if port == epmd.DEFAULT_PORT else f' -port {port}'}`{START_EPMD_HINT}"
        ) from None


def _is_local(host: str) -> bool:
    """Whether ``host`` is this machine (where starting an EPMD is the fix)."""
    if host in ("localhost", "") or host.startswith("127.") or host == "::1":
        return True
    try:
        return host in {socket.gethostname(), socket.getfqdn()}
    except OSError:
        return False


async def register(host: str, port: int, name: str, listen_port: int, *, hidden: bool,
                   timeout: float) -> tuple[asyncio.StreamWriter, int]:
    """Register ``name``; returns the socket to keep open (closing it unregisters) and the creation."""
    reader, writer = await _open(host, port, timeout)
    try:
        writer.write(epmd.alive2_request(name, listen_port, hidden=hidden))
        data = b""
        async with asyncio.timeout(timeout):
            while True:
                reply = epmd.parse_alive2_reply(data)
                if reply is not None:
                    break
                chunk = await reader.read(64)
                if not chunk:
                    raise EpmdUnavailable(f"EPMD at {host}:{port} closed before answering ALIVE2")
                data += chunk
    except BaseException:
        writer.close()
        raise
    if reply.result != 0:
        writer.close()
        raise NameTaken(f"EPMD at {host}:{port} refused the name {name!r} (result {reply.result}): "
                        "a node of that name is already running")
    return writer, reply.creation


#: The longest PORT2 reply: a 12-byte head, a name of up to 65,535 bytes, extra of up to 65,535.
_MAX_PORT2_REPLY = 12 + 2 * 0xFFFF + 2
#: A NAMES reply is a line per registered node (~40 bytes): 1 MiB is about 25,000 nodes.
_MAX_NAMES_REPLY = 1 << 20


async def _request(host: str, port: int, request: bytes, timeout: float, limit: int,
                   complete: Callable[[bytes], bool] | None = None) -> bytes:
    """Send ``request`` and read the reply until EPMD closes (or ``complete`` says it is whole),
    at most ``limit`` bytes: whatever answers at the EPMD port need not be EPMD."""
    reader, writer = await _open(host, port, timeout)
    data = bytearray()
    try:
        writer.write(request)
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(min(65536, limit + 1 - len(data)))
                if not chunk:
                    return bytes(data)
                data += chunk
                if len(data) > limit:
                    raise EpmdUnavailable(f"EPMD at {host}:{port} sent more than {limit} bytes "
                                          "of reply: not EPMD?")
                if complete is not None and complete(bytes(data)):
                    return bytes(data)
    except TimeoutError:
        raise EpmdUnavailable(f"EPMD at {host}:{port} did not answer within {timeout} s") from None
    finally:
        writer.close()


async def lookup(host: str, port: int, name: str, timeout: float) -> epmd.NodeInfo | None:
    """The port of ``name`` on ``host``, or ``None`` when it is not registered."""
    try:
        data = await _request(host, port, epmd.port_please2_request(name), timeout, _MAX_PORT2_REPLY,
                              lambda got: epmd.parse_port2_reply(got) is not None)
        reply = epmd.parse_port2_reply(data)
    except RemoteProtocolError as error:
        raise EpmdUnavailable(f"EPMD at {host}:{port}: {error}") from None
    if reply is None:
        raise EpmdUnavailable(f"EPMD at {host}:{port} sent a truncated PORT2 reply")
    return reply.info


async def names(host: str, port: int, timeout: float) -> list[tuple[str, int]]:
    """What EPMD on ``host`` knows: ``[(name, port), ...]``."""
    data = await _request(host, port, epmd.names_request(), timeout, _MAX_NAMES_REPLY)
    try:
        return epmd.parse_names_reply(data)[1]
    except RemoteProtocolError as error:
        raise EpmdUnavailable(f"EPMD at {host}:{port}: {error}") from None


def start_daemon(port: int) -> None:
    """Start an EPMD daemon on loopback (as ``erl`` would); it outlives this process."""
    program = shutil.which("epmd")
    if program is None:
        raise EpmdUnavailable("no EPMD running and no `epmd` program found to start one")
    log.info("starting epmd on 127.0.0.1:%d", port)
    subprocess.run([program, "-daemon", "-port", str(port), "-address", "127.0.0.1"],
                   check=False, timeout=10, capture_output=True)
