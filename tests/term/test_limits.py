"""Decoding is bounded by the work it does (``Limits.max_terms``, ``max_memory``), not only by bytes.

A compressed message of ~15 KB can announce 16M ``[]``: ~1 GB of Python objects and seconds of
CPU before this budget existed. Each check runs on both implementations (the compiled one when it
is built), which must refuse at the same offset with the same reason.
"""

from __future__ import annotations

import struct
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from beambridge import Atom, DecodeError, Limits, Mapping, binary_to_term, term_to_binary
from beambridge.term import _pure

try:
    from beambridge.term import _cterm  # type: ignore[attr-defined]
except ImportError:
    _cterm = None

Decode = Callable[..., Any]
CODECS = [pytest.param(_pure.decode, id="pure"),
          pytest.param(_cterm.decode if _cterm else None, id="compiled",
                       marks=pytest.mark.skipif(_cterm is None, reason="not built"))]
BODY_CODECS = [pytest.param(_pure.decode_body, id="pure"),
               pytest.param(_cterm.decode_body if _cterm else None, id="compiled",
                            marks=pytest.mark.skipif(_cterm is None, reason="not built"))]

# What the distribution layer passes for one message's control term or payload.
DIST = Limits(max_terms=10_000_000, max_memory=512 << 20)


def compressed(body: bytes) -> bytes:
    return b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, 9)


def list_header(n: int) -> bytes:
    return b"l" + struct.pack(">I", n)


def refusal(decode: Decode, data: bytes, limits: Limits, *args: Any) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data, Mapping.EXACT, limits, *args)
    return info.value


def test_limits_are_positive_ints() -> None:
    assert Limits().max_terms == 1 << 24 and Limits().max_memory == 1 << 30
    for bad in (0, -1, None, 1.5, True):
        with pytest.raises(ValueError, match="max_terms"):
            Limits(max_terms=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_memory"):
            Limits(max_memory=bad)  # type: ignore[arg-type]
    huge = Limits(max_terms=1 << 80, max_memory=1 << 80)  # as good as unlimited, not an error
    assert binary_to_term(term_to_binary([1, [2]]), limits=huge) == [1, [2]]


@pytest.mark.parametrize("decode", CODECS)
@pytest.mark.parametrize("limits", [DIST, Limits()], ids=["dist", "default"])
def test_compressed_bomb_is_refused_at_its_header(decode: Decode, limits: Limits) -> None:
    n = 16 << 20
    bomb = compressed(list_header(n) + b"j" * n + b"j")
    assert len(bomb) < 20_000
    tracemalloc.start()
    started = time.monotonic()
    try:
        error = refusal(decode, bomb, limits)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "max_terms" in error.reason and error.compressed and error.offset == 0
    # The inflated 16 MB is all it costs: not the ~1 GB of lists, nor the seconds to build them.
    assert peak < 50 << 20, f"{peak >> 20} MB"
    assert elapsed < 2, f"{elapsed:.1f} s"


@pytest.mark.parametrize("decode", CODECS)
def test_memory_limit_refuses_a_header_before_its_allocation(decode: Decode) -> None:
    n = 8 << 20  # under max_terms, but 8M slots and elements: ~320 MB estimated
    data = b"\x83" + list_header(n) + b"j" * n + b"j"
    limits = Limits(max_terms=10_000_000, max_memory=256 << 20)
    tracemalloc.start()
    try:
        error = refusal(decode, data, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "max_memory" in error.reason and error.offset == 1
    assert peak < 8 << 20


@pytest.mark.parametrize("decode", CODECS)
def test_nested_bombs_are_refused_by_the_running_count(decode: Decode) -> None:
    # 4096 lists of 4096 small ints: no header announces much, their sum does.
    inner = list_header(4096) + b"a\x01" * 4096 + b"j"
    bomb = compressed(list_header(4096) + inner * 4096 + b"j")
    error = refusal(decode, bomb, DIST)
    assert "max_terms" in error.reason and error.compressed
    # Refused at the header of the inner list that crosses 10M terms, not at the start.
    fit = (DIST.max_terms - 1 - 4096) // 4096  # inner lists that still fit
    assert error.offset == 5 + fit * len(inner)
    # Tuples of tuples with a memory budget: the running estimate, not a header, refuses them.
    nested = b"\x83" + list_header(50_000) + b"h\x02h\x01ja\x01" * 50_000 + b"j"
    error = refusal(decode, nested, Limits(max_memory=4 << 20))
    assert "max_memory" in error.reason and 5 < error.offset < len(nested)


@pytest.mark.parametrize("decode", CODECS)
def test_binaries_count_their_length(decode: Decode) -> None:
    size = 1 << 18
    chunk = b"m" + struct.pack(">I", size) + bytes(size)
    data = b"\x83" + list_header(100) + chunk * 100 + b"j"
    for mapping in (Mapping.EXACT, Mapping.TEXT):
        with pytest.raises(DecodeError, match="max_memory") as info:
            decode(data, mapping, Limits(max_memory=10 << 20), None, False)
        error = info.value
        # Top term and list header (32 + 32 + 40 * 100 bytes), then each binary its length.
        fit = ((10 << 20) - 64 - 4000) // size
        assert error.offset == 6 + fit * len(chunk)
        limits = Limits(max_memory=64 + 4000 + 100 * size)
        assert len(decode(data, mapping, limits, None, False)) == 100


@pytest.mark.parametrize("decode", CODECS)
def test_the_estimate_is_the_documented_one(decode: Decode) -> None:
    # [1, {2, <<"abc">>}, []]: 6 terms; 32 (top) + 32 + 3 * 40 (list) + 32 + 2 * 40 (tuple)
    # + 3 (binary) + 32 ([] as an element: a new list object).
    data = term_to_binary([1, (2, b"abc"), []])
    terms, memory = 6, 32 + 152 + 112 + 3 + 32
    for mapping in (Mapping.EXACT, Mapping.TEXT):
        assert decode(data, mapping, Limits(max_terms=terms, max_memory=memory), None, False)
        with pytest.raises(DecodeError, match="max_terms=5"):
            decode(data, mapping, Limits(max_terms=terms - 1), None, False)
        with pytest.raises(DecodeError, match="max_memory"):
            decode(data, mapping, Limits(max_memory=memory - 1), None, False)
    # Structures (pids, references, ports, export funs) cost 96; maps 32 + 112 per pair.
    pid = term_to_binary(_pure.decode(b"\x83X" + b"w\x03n@h" + bytes(12)))
    assert decode(pid, Mapping.EXACT, Limits(max_memory=32 + 96), None, False)
    with pytest.raises(DecodeError, match="max_memory"):
        decode(pid, Mapping.EXACT, Limits(max_memory=32 + 95), None, False)
    pairs = term_to_binary({1: 2, 3: 4})
    assert decode(pairs, Mapping.EXACT, Limits(max_terms=5, max_memory=32 + 32 + 224), None, False)
    with pytest.raises(DecodeError, match="max_memory"):
        decode(pairs, Mapping.EXACT, Limits(max_memory=32 + 32 + 223), None, False)


@pytest.mark.parametrize("decode", BODY_CODECS)
def test_decode_body_honours_the_budget_per_call(decode: Decode) -> None:
    # As the distribution layer calls it: a control term then a payload, each its own budget,
    # with atom cache references resolved.
    control = term_to_binary((2, Atom(""), Atom("x")))[1:]
    payload = b"l" + struct.pack(">I", 3) + b"R\x00R\x01a\x07j"
    data = b"\x00\x00" + control + payload
    limits = Limits(max_terms=5)
    term, end = decode(data, 2, Mapping.EXACT, limits, [Atom("a"), Atom("b")])
    assert term == (2, Atom(""), Atom("x"))
    value, end = decode(data, end, Mapping.EXACT, limits, [Atom("a"), Atom("b")])
    assert value == [Atom("a"), Atom("b"), 7] and end == len(data)
    with pytest.raises(DecodeError, match="max_terms=3") as info:
        decode(data, end - len(payload), Mapping.EXACT, Limits(max_terms=3), [Atom("a"), Atom("b")])
    assert info.value.offset == len(data) - len(payload)


def test_legitimate_large_traffic_passes_the_dist_limits() -> None:
    big = b"\x83m" + struct.pack(">I", 100 << 20) + bytes(100 << 20)
    small_tuples = term_to_binary([(i, Atom("ok")) for i in range(1_000_000)])
    for decode in (_pure.decode, *((_cterm.decode,) if _cterm else ())):
        assert len(decode(big, Mapping.EXACT, DIST, None, False)) == 100 << 20
        value = decode(small_tuples, Mapping.EXACT, DIST, None, False)
        assert len(value) == 1_000_000 and value[-1] == (999_999, Atom("ok"))
        del value
    assert binary_to_term(term_to_binary(list(range(70_000))), limits=DIST) == list(range(70_000))


def test_pure_decoders_keep_one_budget_per_call_across_threads() -> None:
    # Every decode uses its whole budget: if threads shared one, some would be refused.
    data = term_to_binary([(i, [i]) for i in range(2_000)])
    used = 1 + 2_000 + 2_000 * 3  # top, the list's elements, each tuple's two and [i]'s one
    limits = Limits(max_terms=used)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(15):
                _pure.decode(data, Mapping.EXACT, limits)
        except BaseException as error:  # reported below, not swallowed
            failures.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not failures, failures[:1]
    with pytest.raises(DecodeError, match="max_terms"):
        _pure.decode(data, Mapping.EXACT, Limits(max_terms=used - 1))
