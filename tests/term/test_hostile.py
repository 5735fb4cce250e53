"""Hostile input: any bytes give a value or a DecodeError, never another exception or a hang.

This is the fuzz target CI runs for a bounded time (hypothesis drives it; ``fuzz/fuzz_decode.py``
runs the same check under atheris for longer, coverage-guided sessions).
"""

from __future__ import annotations

import os
import random
import re
import struct
import time
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beambridge import (
    Atom,
    DecodeError,
    Fun,
    Limits,
    Mapping,
    Pid,
    binary_to_term,
    term_to_binary,
)
from beambridge.term import _pure

try:
    from beambridge.term import _cterm  # type: ignore[attr-defined]
except ImportError:
    _cterm = None

from .strategies import terms

_LIMITS = Limits(max_decompressed_size=1 << 20)


def check_input(data: bytes) -> None:
    """The property every decoder input must satisfy (shared with the atheris target)."""
    for mapping in (Mapping.EXACT, Mapping.TEXT):
        started = time.monotonic()
        try:
            binary_to_term(data, mapping=mapping, limits=_LIMITS)
        except DecodeError as error:
            assert 0 <= error.offset <= max(len(data), 1 << 20)
            assert error.reason
        assert time.monotonic() - started < 5, "decoding took too long"


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=64).map(lambda b: b"\x83" + b))
def test_random_bytes(data: bytes) -> None:
    check_input(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(term_to_binary(draw(terms), compressed=draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "big"]))
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[where] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[where:]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=5))
        else:
            data[where:where] = b"\xff\xff\xff\xff"
    return bytes(data)


@settings(max_examples=1000, deadline=None)
@given(mutated())
def test_mutated_valid_terms(data: bytes) -> None:
    check_input(data)


# --------------------------------------------------------------------------------------------
# Both implementations, directly: nothing but DecodeError, offsets inside the input, same verdict
# --------------------------------------------------------------------------------------------

NODE = b"w\x03n@h"
#: One encoding per tag the decoder knows (without the version byte), each valid.
EVERY_TAG: dict[str, bytes] = {
    "SMALL_INTEGER": b"a\x05", "INTEGER": b"b\xff\xff\xff\xfe",
    "FLOAT": b"c" + b"1.5".ljust(31, b"\0"), "NEW_FLOAT": b"F?\xf8\x00\x00\x00\x00\x00\x00",
    "ATOM": b"d\x00\x02ok", "SMALL_ATOM": b"s\x02ok", "ATOM_UTF8": b"v\x00\x02ok",
    "SMALL_ATOM_UTF8": b"w\x02ok", "ATOM_CACHE_REF": b"R\x00",
    "REFERENCE": b"e" + NODE + b"\x00\x00\x00\x01\x02", "PORT": b"f" + NODE + b"\x00\x00\x00\x01\x02",
    "PID": b"g" + NODE + b"\x00\x00\x00\x01\x00\x00\x00\x02\x03",
    "NEW_PID": b"X" + NODE + bytes(11) + b"\x01", "NEW_PORT": b"Y" + NODE + bytes(8),
    "V4_PORT": b"x" + NODE + bytes(12), "NEW_REFERENCE": b"r\x00\x01" + NODE + b"\x00" + bytes(4),
    "NEWER_REFERENCE": b"Z\x00\x02" + NODE + bytes(12),
    "SMALL_TUPLE": b"h\x02a\x01a\x02", "LARGE_TUPLE": b"i\x00\x00\x00\x01a\x01", "NIL": b"j",
    "STRING": b"k\x00\x03abc", "LIST": b"l\x00\x00\x00\x02a\x01a\x02j",
    "IMPROPER_LIST": b"l\x00\x00\x00\x01a\x01a\x02", "BINARY": b"m\x00\x00\x00\x03abc",
    "BIT_BINARY": b"M\x00\x00\x00\x01\x03\xe0", "SMALL_BIG": b"n\x02\x00\x01\x02",
    "LARGE_BIG": b"o\x00\x00\x00\x02\x01\x01\x02", "MAP": b"t\x00\x00\x00\x01a\x01a\x02",
    "EXPORT": b"qw\x01mw\x01fa\x02",
    "NEW_FUN": term_to_binary(Fun(Atom("m"), 1, 2, Pid(Atom("n@h"), 1, 2, 3), (7,)))[1:],
    "FUN": term_to_binary(Fun(Atom("m"), 1, 2, Pid(Atom("n@h"), 1, 2, 3), (7,), None, None,
                              None))[1:],
    "LOCAL": b"y\x00\x00\x00\x00" + b"h\x02eh\x01a\x01\x00\x00\x00\x00\x00a\x01",
}
CACHE = [Atom("cached")]


def implementations() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = [("pure", _pure)]
    if _cterm is not None:
        found.append(("compiled", _cterm))
    return found


def verdict(codec: Any, data: bytes, limits: Limits, used: bool = False) -> tuple[Any, ...]:
    """What one implementation makes of ``data``; anything but a value or DecodeError fails."""
    try:
        return ("ok", repr(codec.decode(data, Mapping.EXACT, limits, CACHE, used)))
    except DecodeError as error:
        return ("error", re.sub(r" of \d+ \w+ runs past", " runs past", error.reason),
                error.offset, error.compressed)


def check_both(data: bytes, limits: Limits = _LIMITS) -> tuple[Any, ...]:
    results = [verdict(codec, data, limits, used) for _, codec in implementations()
               for used in (False, True)]
    for result in results:
        if result[0] == "error" and not result[3]:
            assert 0 <= result[2] <= len(data), (data, result)
    pure, pure_used = results[:2]
    for other, other_used in zip(results[2::2], results[3::2], strict=True):
        assert (other, other_used) == (pure, pure_used), data
    return pure


def test_every_tag_sample_decodes() -> None:
    for name, body in EVERY_TAG.items():
        assert check_both(b"\x83" + body)[0] == "ok", name


def test_truncated_inputs_of_every_tag_end_inside_the_input() -> None:
    for name, body in EVERY_TAG.items():
        for wrapped in (b"\x83" + body, b"\x83l\x00\x00\x00\x02" + body + b"a\x01j",
                        b"\x83y\x00\x00\x00\x00" + body):
            for cut in range(1, len(wrapped)):
                result = check_both(wrapped[:cut])
                assert result[0] == "error", (name, wrapped[:cut])
    packed = compressed_term(b"h\x02" + EVERY_TAG["MAP"] + EVERY_TAG["BINARY"])
    for cut in range(1, len(packed)):
        check_both(packed[:cut])


def compressed_term(body: bytes, size: int | None = None) -> bytes:
    return b"\x83P" + struct.pack(">I", len(body) if size is None else size) + zlib.compress(body)


def test_local_ext_cut_short_inside_is_a_decode_error() -> None:
    # LOCAL_EXT is walked leniently; a REFERENCE_EXT whose last byte is missing used to
    # end the walk past the input (SystemError in the compiled codec, a "-1 trailing bytes" at
    # an offset past the end in the pure one).
    data = b"\x83y\x00\x01\x00\x00ea\xbau\x02\x01R"
    assert len(data) == 13
    assert check_both(data) == ("error", "unexpected end of input", 13, False)
    assert check_both(b"\x83y\x00\x00\x00\x00qw\x01mw\x01fa")[1] == "unexpected end of input"


TAGS = [70, 77, 80, 82, 88, 89, 90, *range(97, 122), 131]
TIGHT = [Limits(max_decompressed_size=1 << 16, max_terms=terms, max_memory=memory)
         for terms in (1, 3, 8, 1 << 30) for memory in (40, 200, 2000, 1 << 40)]


def random_input(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # tags, small numbers and noise
        return b"\x83" + bytes(rng.choice(TAGS) if rng.random() < 0.4 else rng.randrange(4)
                               if rng.random() < 0.5 else rng.randrange(256)
                               for _ in range(rng.randrange(1, 24)))
    body = rng.choice(list(EVERY_TAG.values()))
    if kind == 1:
        body = b"l" + struct.pack(">I", 2) + body + rng.choice(list(EVERY_TAG.values())) + b"j"
    elif kind == 2:
        body = b"y" + rng.randbytes(4) + body
    data = bytearray(b"\x83" + body if rng.random() < 0.8 else compressed_term(body))
    for _ in range(rng.randrange(1, 4)):
        where = rng.randrange(max(len(data), 1))
        action = rng.randrange(4)
        if action == 0 and data:
            data[where] = rng.choice(TAGS) if rng.random() < 0.3 else rng.randrange(256)
        elif action == 1:
            del data[where:]
        elif action == 2:
            data[where:where] = rng.randbytes(rng.randrange(1, 5))
        else:
            data[where:where] = b"\xff\xff\xff\xff"
    return bytes(data)


@pytest.mark.skipif(os.environ.get("BEAMBRIDGE_PURE_PYTHON", "") not in ("", "0"),
                    reason="calls both implementations directly: the default run did")
def test_random_inputs_give_a_value_or_the_same_decode_error_in_both() -> None:
    rng = random.Random(20240611)
    deadline = time.monotonic() + 8
    count = 0
    while time.monotonic() < deadline or count < 2000:
        check_both(random_input(rng), rng.choice(TIGHT))
        count += 1


def test_python_stack_running_out_in_a_map_key_is_a_decode_error() -> None:
    # Hashing a key of nested improper lists runs Python code, one frame per level: with
    # max_depth raised past Python's stack, the compiled codec let a RecursionError out.
    key = b"l\x00\x00\x00\x01a\x01h\x01" * 900 + b"a\x02"
    data = b"\x83t\x00\x00\x00\x01" + key + b"a\x01"
    for _, codec in implementations():
        with pytest.raises(DecodeError, match="too deep for the Python stack") as info:
            codec.decode(data, Mapping.EXACT, Limits(max_depth=5000), None, False)
        assert info.value.offset == 1


def test_negative_body_offsets_are_refused_alike() -> None:
    for _, codec in implementations():
        with pytest.raises(ValueError, match="negative"):
            codec.decode_body(b"a\x01", -1)
