"""Distribution capability flags, and which ones beambridge advertises.

We advertise exactly what this implementation handles. OTP 25 refuses peers that lack the flags
in ``MANDATORY_25`` (summed up by ``MANDATORY_25_DIGEST``), OTP 26+ also requires ``V4_NC`` and
``UNLINK_ID``; every one of them is implemented here.
"""

from __future__ import annotations

import enum

__all__ = ["DEFAULT_FLAGS", "MANDATORY_25", "MANDATORY_26", "Flag", "missing_mandatory"]


class Flag(enum.IntFlag):
    PUBLISHED = 0x1
    ATOM_CACHE = 0x2
    EXTENDED_REFERENCES = 0x4
    DIST_MONITOR = 0x8
    FUN_TAGS = 0x10
    DIST_MONITOR_NAME = 0x20
    HIDDEN_ATOM_CACHE = 0x40
    NEW_FUN_TAGS = 0x80
    EXTENDED_PIDS_PORTS = 0x100
    EXPORT_PTR_TAG = 0x200
    BIT_BINARIES = 0x400
    NEW_FLOATS = 0x800
    UNICODE_IO = 0x1000
    DIST_HDR_ATOM_CACHE = 0x2000
    SMALL_ATOM_TAGS = 0x4000
    ETS_COMPRESSED = 0x8000
    UTF8_ATOMS = 0x10000
    MAP_TAG = 0x20000
    BIG_CREATION = 0x40000
    SEND_SENDER = 0x80000
    BIG_SEQTRACE_LABELS = 0x100000
    PENDING_CONNECT = 0x200000
    EXIT_PAYLOAD = 0x400000
    FRAGMENTS = 0x800000
    HANDSHAKE_23 = 0x1000000
    UNLINK_ID = 0x2000000
    MANDATORY_25_DIGEST = 0x4000000
    SPAWN = 1 << 32
    NAME_ME = 1 << 33
    V4_NC = 1 << 34
    ALIAS = 1 << 35


MANDATORY_25 = (
    Flag.EXTENDED_REFERENCES | Flag.FUN_TAGS | Flag.EXTENDED_PIDS_PORTS | Flag.NEW_FUN_TAGS
    | Flag.EXPORT_PTR_TAG | Flag.BIT_BINARIES | Flag.NEW_FLOATS | Flag.UTF8_ATOMS | Flag.MAP_TAG
    | Flag.BIG_CREATION | Flag.HANDSHAKE_23
)
MANDATORY_26 = MANDATORY_25 | Flag.V4_NC | Flag.UNLINK_ID

#: What beambridge implements (``PUBLISHED`` is added for a visible node).
DEFAULT_FLAGS = (
    MANDATORY_26 | Flag.MANDATORY_25_DIGEST | Flag.DIST_MONITOR | Flag.DIST_MONITOR_NAME
    | Flag.UNICODE_IO | Flag.DIST_HDR_ATOM_CACHE | Flag.SMALL_ATOM_TAGS | Flag.SEND_SENDER
    | Flag.BIG_SEQTRACE_LABELS | Flag.EXIT_PAYLOAD | Flag.FRAGMENTS | Flag.SPAWN | Flag.ALIAS
)


def missing_mandatory(flags: int) -> Flag:
    """The OTP 25 mandatory flags a peer lacks (none when it sets ``MANDATORY_25_DIGEST``)."""
    if flags & Flag.MANDATORY_25_DIGEST:
        return Flag(0)
    return Flag(MANDATORY_25 & ~flags)
