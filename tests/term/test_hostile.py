"""Hostile input: any bytes give a value or a DecodeError, never another exception or a hang.

This is the fuzz target CI runs for a bounded time (hypothesis drives it; ``fuzz/fuzz_decode.py``
runs the same check under atheris for longer, coverage-guided sessions).
"""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from beambridge import DecodeError, Limits, Mapping, binary_to_term, term_to_binary

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


@settings(max_examples=2000, deadline=None)
@given(mutated())
def test_mutated_valid_terms(data: bytes) -> None:
    check_input(data)
