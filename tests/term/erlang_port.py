"""The Python half of ``bb_term_port``: BEAM's own codec as a test oracle, one erl per release."""

from __future__ import annotations

import struct
from typing import Any

from beambridge import otp


class TermOracle:
    """Asks a real BEAM to decode, re-encode, generate and check terms (see bb_term_port.erl)."""

    def __init__(self, runtime: otp.Runtime) -> None:
        ebin = otp.build_erlang_app("beambridge")
        self.runtime = runtime
        self.port = otp.ErlangPort("bb_term_port", runtime=runtime, paths=(ebin,), timeout=120)

    def close(self) -> None:
        self.port.close()

    def _ok(self, reply: bytes) -> bytes:
        if reply[:1] != b"\x00":
            raise AssertionError(f"{self.runtime}: {reply[1:].decode('utf-8', 'replace')}")
        return reply[1:]

    def reencode(self, etf: bytes, minor_version: int = 2, level: int = 0) -> bytes:
        """``term_to_binary(binary_to_term(Etf), Options)`` in BEAM."""
        return self._ok(self.port.request(bytes((1, minor_version, level)) + etf))

    def generate(self, seed: int, count: int, size: int, minor_version: int, level: int) -> list[bytes]:
        reply = self._ok(self.port.request(
            b"\x02" + struct.pack(">IIHBB", seed, count, size, minor_version, level)))
        return _split(reply[4:])

    def check(self, encodings: list[bytes]) -> None:
        """Raise unless each encoding decodes (in BEAM) to the generated term, with BEAM's bytes."""
        self._ok(self.port.request(b"\x03" + b"".join(struct.pack(">I", len(e)) + e for e in encodings)))

    def apply(self, etf_mfa: bytes) -> bytes:
        return self._ok(self.port.request(b"\x04" + etf_mfa))

    def local(self, etf: bytes) -> bytes:
        return self._ok(self.port.request(b"\x05" + etf))

    def rejects(self, data: bytes) -> bool:
        return self.port.request(b"\x06" + data)[:1] == b"\x00"


def _split(body: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(body):
        (size,) = struct.unpack_from(">I", body, pos)
        out.append(body[pos + 4:pos + 4 + size])
        pos += 4 + size
    return out


def contains(term: Any, kinds: tuple[type, ...]) -> bool:
    """Whether ``term`` holds a value of one of ``kinds`` anywhere inside."""
    from beambridge import Fun, ImproperList, Map

    if isinstance(term, kinds):
        return True
    if isinstance(term, (list, tuple)):
        return any(contains(t, kinds) for t in term)
    if isinstance(term, dict):
        return any(contains(k, kinds) or contains(v, kinds) for k, v in term.items())
    if isinstance(term, Map):
        return any(contains(k, kinds) or contains(v, kinds) for k, v in term.items())
    if isinstance(term, ImproperList):
        return contains(term.items, kinds) or contains(term.tail, kinds)
    if isinstance(term, Fun):
        return contains(term.free_vars, kinds)
    return False
