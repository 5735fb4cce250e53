"""EPMD (the Erlang port mapper) requests and replies, as bytes.

Each request is a 2-byte length then the payload. Parsers take everything received so far and
return ``None`` while the reply is incomplete, so the caller owns the socket and its deadlines.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_PORT",
    "Alive2Reply",
    "NodeInfo",
    "PortReply",
    "alive2_request",
    "names_request",
    "parse_alive2_reply",
    "parse_names_reply",
    "parse_port2_reply",
    "port_please2_request",
]

DEFAULT_PORT = 4369
ALIVE2_REQ = 120
ALIVE2_RESP = 121
ALIVE2_X_RESP = 118
PORT_PLEASE2_REQ = 122
PORT2_RESP = 119
NAMES_REQ = 110

NODE_TYPE_NORMAL = 77
NODE_TYPE_HIDDEN = 72
DIST_VERSION = 6


@dataclass(frozen=True, slots=True)
class Alive2Reply:
    """``result`` 0 means registered; ``creation`` is this incarnation's number (pids carry it)."""

    result: int
    creation: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What EPMD knows about one registered node."""

    port: int
    node_type: int
    protocol: int
    highest_version: int
    lowest_version: int
    name: str
    extra: bytes = b""

    @property
    def hidden(self) -> bool:
        return self.node_type == NODE_TYPE_HIDDEN


@dataclass(frozen=True, slots=True)
class PortReply:
    """``result`` 0 with ``info``, or an error result (the name is not registered)."""

    result: int
    info: NodeInfo | None


def _request(payload: bytes) -> bytes:
    if len(payload) > 0xFFFF:
        raise LocalProtocolError("EPMD request too long")
    return struct.pack(">H", len(payload)) + payload


def _name_bytes(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not raw or b"@" in raw or len(raw) > 255:
        raise LocalProtocolError(f"EPMD wants the alive part of a node name (no '@'), not {name!r}")
    return raw


def alive2_request(name: str, port: int, *, hidden: bool = True, extra: bytes = b"") -> bytes:
    """Register ``name`` (the part before ``@``) as listening on ``port``; keep the socket open."""
    if not 0 < port < 65536:
        raise LocalProtocolError(f"bad port {port!r}")
    raw = _name_bytes(name)
    node_type = NODE_TYPE_HIDDEN if hidden else NODE_TYPE_NORMAL
    payload = struct.pack(">BHBBHHH", ALIVE2_REQ, port, node_type, 0, DIST_VERSION, DIST_VERSION,
                          len(raw)) + raw + struct.pack(">H", len(extra)) + extra
    return _request(payload)


def parse_alive2_reply(data: bytes) -> Alive2Reply | None:
    """Both reply forms: ``ALIVE2_X_RESP`` (32-bit creation, OTP 23+) and ``ALIVE2_RESP``."""
    if not data:
        return None
    tag = data[0]
    if tag == ALIVE2_X_RESP:
        if len(data) < 6:
            return None
        result, creation = struct.unpack_from(">BI", data, 1)
        return Alive2Reply(result, creation)
    if tag == ALIVE2_RESP:
        if len(data) < 4:
            return None
        result, creation = struct.unpack_from(">BH", data, 1)
        return Alive2Reply(result, creation)
    raise RemoteProtocolError(f"EPMD sent {tag} where an ALIVE2 reply was expected")


def port_please2_request(name: str) -> bytes:
    """Ask for the port of ``name`` (the part before ``@``); EPMD closes after replying."""
    return _request(bytes((PORT_PLEASE2_REQ,)) + _name_bytes(name))


def parse_port2_reply(data: bytes) -> PortReply | None:
    if len(data) < 2:
        return None
    if data[0] != PORT2_RESP:
        raise RemoteProtocolError(f"EPMD sent {data[0]} where a PORT2 reply was expected")
    result = data[1]
    if result != 0:
        return PortReply(result, None)
    if len(data) < 12:
        return None
    port, node_type, protocol, high, low, nlen = struct.unpack_from(">HBBHHH", data, 2)
    end = 12 + nlen
    if len(data) < end + 2:
        return None
    (elen,) = struct.unpack_from(">H", data, end)
    if len(data) < end + 2 + elen:
        return None
    name = data[12:end].decode("utf-8", "replace")
    extra = bytes(data[end + 2:end + 2 + elen])
    return PortReply(0, NodeInfo(port, node_type, protocol, high, low, name, extra))


def names_request() -> bytes:
    """List registered names; EPMD replies with its port and text lines, then closes."""
    return _request(bytes((NAMES_REQ,)))


_NAME_LINE = re.compile(r"^name (.+) at port (\d+)$")


def parse_names_reply(data: bytes) -> tuple[int, list[tuple[str, int]]]:
    """Parse the whole reply (read until EPMD closed): ``(epmd_port, [(name, port), ...])``."""
    if len(data) < 4:
        raise RemoteProtocolError("EPMD NAMES reply shorter than its 4-byte header")
    (epmd_port,) = struct.unpack_from(">I", data, 0)
    names = []
    for line in data[4:].decode("utf-8", "replace").splitlines():
        match = _NAME_LINE.match(line.strip())
        if match:
            names.append((match.group(1), int(match.group(2))))
    return epmd_port, names
