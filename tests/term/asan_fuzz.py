"""Fuzz driver for the compiled decoder under AddressSanitizer (run by test_sanitizer.py).

Usage: python asan_fuzz.py PATH_TO_ASAN_BUILT_CTERM_SO SECONDS. Every input is handed over in an
``array.array`` whose buffer is exactly as long as the input (with PYTHONMALLOC=malloc, a read one
byte past it lands in ASan's red zone), mutated from valid encodings and random bytes; encodes of
random terms exercise the encoder. Exits 0 after the time is up; ASan aborts the process on the
first bad access, and leaks are read from its report by the caller.
"""

from __future__ import annotations

import array
import contextlib
import importlib.util
import random
import struct
import sys
import time
import zlib
from typing import Any

import beambridge.term._api  # noqa: F401  (the Python side the module imports at init)
from beambridge import Atom, BitString, DecodeError, EncodeError, ImproperList, Limits, Map, Mapping, Pid
from beambridge.term import _pure


def load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("beambridge.term._cterm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_term(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(14 if depth < 4 else 8)
    if kind == 0:
        return rng.randrange(256)
    if kind == 1:
        return rng.randrange(-(1 << 70), 1 << 70) >> rng.randrange(70)
    if kind == 2:
        return rng.uniform(-1e10, 1e10)
    if kind == 3:
        return Atom("".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(6))))
    if kind == 4:
        return rng.randbytes(rng.randrange(40))
    if kind == 5:
        return Pid(Atom("n@h"), rng.randrange(1 << 32), rng.randrange(9), rng.randrange(1 << 32))
    if kind == 6:
        return BitString(rng.randbytes(2), rng.randrange(9, 16))
    if kind == 7:
        return rng.choice([True, False, None, [], (), {}])
    children = [random_term(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind in (8, 9):
        return children
    if kind == 10:
        return tuple(children)
    if kind == 11:
        return {i: c for i, c in enumerate(children)}
    if kind == 12:
        return Map([([i], c) for i, c in enumerate(children)])
    return ImproperList([1, *children], Atom("t"))


def exact_buffer(data: bytes) -> array.array[int]:
    """A buffer of exactly len(data) bytes (array("B", data) would over-allocate)."""
    exact = array.array("B", b"\0") * len(data)
    exact[:] = array.array("B", data)
    return exact


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        where = rng.randrange(max(len(out), 1))
        action = rng.randrange(4)
        if action == 0 and out:
            out[where] = rng.randrange(256)
        elif action == 1:
            del out[where:]
        elif action == 2:
            out[where:where] = rng.randbytes(rng.randrange(1, 5))
        else:
            out[where:where] = b"\xff\xff\xff\xff"
    return bytes(out)


# Inputs that once escaped as another exception, or that take the budget and text-float paths.
_GOOD_BODY = _pure.encode((6, 1))[1:] + _pure.encode(7)[1:]
GOOD_PACKET = struct.pack(">I", len(_GOOD_BODY) + 3) + b"\x83D\x00" + _GOOD_BODY

CORPUS = [
    b"\x83y\x00\x01\x00\x00ea\xbau\x02\x01R", b"\x83y\x00\x00\x00\x00qw\x01mw\x01fa",
    b"\x83y\x00\x00\x00\x00h\x02eh\x01a\x01\x00\x00\x00\x00\x00a\x01",
    b"\x83c" + b"1." + b"5" * 29, b"\x83c1,5e3" + bytes(26), b"\x83c1_0" + bytes(28),
    b"\x83l\x00\x00\x10\x00" + b"j" * 4096 + b"j",
    b"\x83l\x00\x00\x00\x03m\x00\x00\x00\x02abh\x02jjt\x00\x00\x00\x01a\x01jj",
    b"\x83P" + struct.pack(">I", 4102) + zlib.compress(b"l\x00\x00\x10\x00" + b"j" * 4097),
    # Documents: repeated short binaries (the per-call cache; text and not-text under TEXT) and
    # enough containers to be held out of the GC while built, cut and mutated midway.
    _pure.encode([{b"id": i, b"name": b"user-%d" % i,
                   b"tags": [b"alpha", b"beta", "\u00e9".encode(), b"\xff"],
                   b"pos": (i, [i]), Atom("k"): {b"alpha": []}} for i in range(30)], False, 2, Mapping.EXACT),
]


def main() -> None:
    cterm = load(sys.argv[1])
    deadline = time.monotonic() + float(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    mappings = [Mapping.EXACT, Mapping.TEXT, Mapping.CHARLIST, Mapping.UWSGI]
    limits = Limits(max_decompressed_size=1 << 20)
    # Budgets small enough to run out mid-term, at every kind of header.
    tight = [Limits(max_decompressed_size=1 << 20, max_terms=t, max_memory=m)
             for t in (1, 4, 50) for m in (40, 300, 5000)]
    cache = [Atom("a"), Atom("true")]
    runs = 0
    for data in (b"\x83m\x00\x00\x00\x03ab", b"\x83w\x03ab", b"\x83h\x02a"):  # ends early
        with contextlib.suppress(DecodeError):
            cterm.decode(exact_buffer(data))
    for data in CORPUS:
        for cut in range(1, len(data) + 1):
            for budget in (limits, *tight):
                with contextlib.suppress(DecodeError):
                    cterm.decode(exact_buffer(data[:cut]), Mapping.EXACT, budget, cache, True)
    while time.monotonic() < deadline:
        term = random_term(rng)
        mapping = rng.choice(mappings)
        try:
            valid = cterm.encode(term, rng.choice([False, False, True]), rng.randrange(3), mapping)
        except EncodeError:
            valid = _pure.encode(term, False, 2, Mapping.EXACT)
        with contextlib.suppress(EncodeError):
            cterm.encode_dist((2, term), Mapping.EXACT, term, mapping)
        assert cterm.decode(valid) is not None or True
        seed = rng.choice(CORPUS) if rng.random() < 0.1 else valid
        for data in (mutate(rng, seed), b"\x83" + rng.randbytes(rng.randrange(24))):
            exact = exact_buffer(data)
            with contextlib.suppress(DecodeError):
                cterm.decode(exact, mapping, rng.choice([limits, limits, *tight]), cache,
                             rng.random() < 0.5)
            with contextlib.suppress(DecodeError):
                cterm.decode_body(exact, 1, mapping, limits, cache)
            packet = (len(data) + 2).to_bytes(4, "big") + b"\x83D\x00" + data[1:]  # as a node reads it
            with contextlib.suppress(DecodeError):
                cterm.decode_dist(exact_buffer(packet[:rng.randrange(len(packet) + 1)]), 0, 1 << 30,
                                  {}, mapping, mapping, limits, None, frozenset({2, 6, 22}))
            with contextlib.suppress(DecodeError):  # two packets, the second maybe cut
                cterm.decode_dist_batch(exact_buffer(packet + packet[:rng.randrange(len(packet) + 1)]),
                                        0, 1 << 30, {}, mapping, mapping, limits, None,
                                        frozenset({2, 6, 22}), [], 4)
            # a good packet first: a malformed one after it ends the batch (its error cleared)
            taken: list[object] = []
            cterm.decode_dist_batch(exact_buffer(GOOD_PACKET + packet), 0, 1 << 30, {}, mapping,
                                    mapping, limits, None, frozenset({2, 6, 22}), taken, 4)
            assert taken[0] == ((6, 1), 7)
            runs += 1
    print(f"asan fuzz: {runs} inputs decoded")


if __name__ == "__main__":
    main()
