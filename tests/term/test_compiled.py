"""The compiled codec against the pure one: same bytes, same values, same errors.

The pure codec is the reference semantics; the compiled one must agree with it on every input,
hostile ones included (reason and offset of each ``DecodeError``, path of each ``EncodeError``).
The whole term suite also runs twice (``make test``), once per implementation; this file checks
that the default run really is the compiled one and compares the two directly.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beambridge import (
    Atom,
    ExportFun,
    Fun,
    ImproperList,
    Limits,
    LocalTerm,
    Map,
    Mapping,
    Pid,
    term_to_binary,
)
from beambridge.term import _api, _pure

from ._strict import strict_eq
from .strategies import terms

FORCED_PURE = os.environ.get("BEAMBRIDGE_PURE_PYTHON", "") not in ("", "0")

try:
    from beambridge.term import _cterm  # type: ignore[attr-defined]
except ImportError:
    _cterm = None

# The comparisons call both implementations directly, whatever the run forces: the run that
# forces the pure codec (``make test``'s second) would only draw another sample of examples
# (hypothesis draws new ones each run), so it leaves them out and ``make test`` draws one.
needs_compiled = pytest.mark.skipif(
    _cterm is None or FORCED_PURE,
    reason="the compiled codec is not built" if _cterm is None else
    "compares both implementations directly: the default run did")

MAPPINGS = [Mapping.EXACT, Mapping.TEXT, Mapping.CHARLIST, Mapping.UWSGI,
            Mapping(bool_atoms=False, none_atom=None)]
LIMITS = [Limits(max_decompressed_size=1 << 20), Limits(max_depth=3)]


@pytest.mark.skipif(FORCED_PURE, reason="BEAMBRIDGE_PURE_PYTHON forces the pure codec")
def test_default_run_uses_the_compiled_codec() -> None:
    # CI builds the extension (make setup): a default run on pure would test pure twice.
    assert _api.IMPLEMENTATION == "compiled"


def outcome(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as error:  # compared, not swallowed
        # The pure codec's inlined container loops word a few reasons without the size
        # ("binary runs past ..." vs "binary of 6 bytes runs past ..."): compare without it.
        reason = getattr(error, "reason", None)
        if isinstance(reason, str):
            reason = re.sub(r" of \d+ \w+ runs past", " runs past", reason)
        detail = (reason, getattr(error, "offset", None),
                  getattr(error, "compressed", None), getattr(error, "path", None))
        return ("error", type(error), detail)


def same(a: Any, b: Any) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return bool(a == b)
    return strict_eq(a[1], b[1])


def check_decode(data: bytes) -> None:
    assert _cterm is not None
    for mapping in MAPPINGS:
        for limits in LIMITS:
            for used in (False, True):
                want = outcome(_pure.decode, data, mapping, limits, None, used)
                got = outcome(_cterm.decode, data, mapping, limits, None, used)
                assert same(want, got), f"{data!r} {mapping} {limits}: pure {want!r}, compiled {got!r}"
    body = outcome(_pure.decode_body, data, 1, Mapping.EXACT, LIMITS[0], [Atom("c0"), True])
    got = outcome(_cterm.decode_body, memoryview(data), 1, Mapping.EXACT, LIMITS[0], [Atom("c0"), True])
    assert same(body, got), f"{data!r} decode_body: pure {body!r}, compiled {got!r}"


def check_encode(term: Any) -> None:
    assert _cterm is not None
    for minor in (0, 1, 2):
        for mapping in (Mapping.EXACT, Mapping.TEXT, Mapping.CHARLIST, Mapping.UWSGI):
            want = outcome(_pure.encode, term, False, minor, mapping)
            got = outcome(_cterm.encode, term, False, minor, mapping)
            assert want == got, f"{term!r} minor={minor} {mapping}: pure {want!r}, compiled {got!r}"
    assert outcome(_pure.encode_body, term) == outcome(_cterm.encode_body, term)


@needs_compiled
@settings(max_examples=400, deadline=None)
@given(terms)
def test_same_bytes_and_values(term: Any) -> None:
    check_encode(term)
    check_decode(_pure.encode(term))


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(terms, terms, st.sampled_from(MAPPINGS))
def test_same_distribution_packets(control: Any, payload: Any, mapping: Mapping) -> None:
    """``encode_dist`` (a node's framing of each message): same packet, or the same error, and
    the packet's parts are the terms' own encodings."""
    for args in ((control, Mapping.EXACT), (control, Mapping.EXACT, payload, mapping)):
        pure, compiled = outcome(_pure.encode_dist, *args), outcome(_cterm.encode_dist, *args)
        assert pure == compiled
        if pure[0] == "ok":
            packet = pure[1]
            body = _pure.encode_body(control) + (
                _pure.encode_body(payload, 2, mapping) if len(args) == 4 else b"")
            assert packet == struct.pack(">I", len(body) + 3) + b"\x83D\x00" + body
    with pytest.raises(TypeError):
        _cterm.encode_dist(control, Mapping.EXACT, payload)


_TAGS = frozenset({2, 6, 22, 29})
_MARK = object()


def _packets(draw: Any) -> tuple[bytes, dict[bytes, Any]]:
    """A distribution packet as a node receives it: control and payload terms behind a normal
    header (no atom cache references, or known ones), then cut or mutated, and maybe followed
    by more bytes."""
    control = draw(st.one_of(st.tuples(st.sampled_from([2, 6, 22, 29, 31, 1.5]), terms), terms))
    body = _pure.encode_body(control) + _pure.encode_body(draw(terms))
    memo: dict[bytes, Any] = {}
    header = b"\x83D\x00"
    if draw(st.booleans()):  # one cached atom: 2 references known to the memo
        header = b"\x83D\x02\x00\x01\x02\x05"
        memo[header[2:]] = [Atom("a"), Atom("b")]
        body = body.replace(b"w\x01a", b"R\x00", 1)
    packet = struct.pack(">I", len(header) + len(body)) + header + body
    packet = draw(st.sampled_from([packet, packet[:draw(st.integers(0, len(packet)))],
                                   mutate_once(packet, draw(st.integers(0, 255)),
                                               draw(st.integers(0, len(packet))))]))
    return packet + draw(st.binary(max_size=8)), memo


def mutate_once(data: bytes, byte: int, at: int) -> bytes:
    return data[:at] + bytes([byte]) + data[at + 1:] if at < len(data) else data


@needs_compiled
@settings(max_examples=600, deadline=None)
@given(st.data(), st.sampled_from(MAPPINGS), st.sampled_from([1 << 30, 40]))
def test_same_distribution_packets_decoded(data: Any, mapping: Mapping, max_frame: int) -> None:
    """``decode_dist`` (a node's reading of each packet): the same outcome both ways, None or
    False or the terms or the error, on whole, cut and mutated packets."""
    packet, memo = _packets(data.draw)
    for pos in (0, 4):
        args = (packet, pos, max_frame, memo, Mapping.EXACT, mapping, Limits(max_depth=8), _MARK, _TAGS)
        pure = outcome(_pure.decode_dist, *args)
        assert pure == outcome(_cterm.decode_dist, bytearray(packet), *args[1:])
        if pure[0] == "ok" and type(pure[1]) is tuple:
            control, payload, end, used = pure[1]
            assert end == pos + 4 + int.from_bytes(packet[pos:pos + 4], "big") and used <= end
            assert (payload is _MARK) == (not (type(control) is tuple and control
                                                and type(control[0]) is int and control[0] in _TAGS))


@needs_compiled
@settings(max_examples=400, deadline=None)
@given(st.data(), st.sampled_from(MAPPINGS), st.integers(0, 5))
def test_same_packet_batches_decoded(data: Any, mapping: Mapping, max_count: int) -> None:
    """``decode_dist_batch`` (the packets of one read at once): the same packets taken, the
    same end and the same error both ways; and each packet taken is what ``decode_dist`` reads
    there, so that a batch stops before a malformed packet that follows good ones, and raises
    only when the malformed one comes first."""
    memo: dict[bytes, Any] = {}
    stream = b""
    for _ in range(data.draw(st.integers(1, 4))):
        packet, more = _packets(data.draw)
        stream += packet
        memo.update(more)
    args = (0, 1 << 30, memo, Mapping.EXACT, mapping, Limits(max_depth=8), _MARK, _TAGS)
    pure_out: list[Any] = []
    c_out: list[Any] = []
    pure = outcome(_pure.decode_dist_batch, stream, *args, pure_out, max_count)
    assert pure == outcome(_cterm.decode_dist_batch, bytearray(stream), *args, c_out, max_count)
    assert pure_out == c_out and len(pure_out) <= max_count
    first = outcome(_pure.decode_dist, stream, *args)
    if pure[0] == "error":
        assert pure == first and not pure_out
        return
    end, trailing = pure[1]
    pos = extra = 0
    for control, payload in pure_out:  # each one what decode_dist reads at its place
        got = _pure.decode_dist(stream, pos, *args[1:])
        assert type(got) is tuple and got[:2] == (control, payload)
        extra += got[3] != got[2]
        pos = got[2]
    assert (pos, extra) == (end, trailing)
    if len(pure_out) < max_count:  # it stopped where the next packet is not one to take
        after = outcome(_pure.decode_dist, stream, end, *args[1:])
        assert after[0] == "error" or after[1] is None or after[1] is False


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body) + 3) + b"\x83D\x00" + body


@needs_compiled
@pytest.mark.parametrize("bad", [
    _pure.encode_body(Atom("x"))[:-1] + b"\xff" * 3,  # a term cut short inside a whole packet
    b"\x01\x02\x03",  # no term at all
    _pure.encode_body((6, [1] * 3)).replace(b"l", b"\xfe", 1),  # an unknown tag mid-term
])
def test_a_batch_stops_before_a_whole_malformed_packet_after_good_ones(bad: bytes) -> None:
    """Good packets, then a whole packet whose terms do not decode: both twins take the good
    ones and end before it without raising; read first, the bad one raises the same error."""
    good = [_frame(_pure.encode_body((6, i)) + _pure.encode_body(Atom("m"))) for i in range(3)]
    stream = b"".join(good) + _frame(bad) + good[0]
    args = (0, 1 << 30, {}, Mapping.EXACT, Mapping.EXACT, Limits(), _MARK, _TAGS)
    for twin, data in ((_pure.decode_dist_batch, stream), (_cterm.decode_dist_batch, bytearray(stream))):
        out: list[Any] = []
        assert twin(data, *args, out, 8) == (sum(map(len, good)), 0)
        assert out == [((6, i), Atom("m")) for i in range(3)]
    at = sum(map(len, good))
    pure = outcome(_pure.decode_dist_batch, stream, at, *args[1:], [], 8)
    assert pure[0] == "error"
    assert pure == outcome(_cterm.decode_dist_batch, stream, at, *args[1:], [], 8)


class _Index:
    """An int-like that is no int (as numpy's are): read through ``__index__``."""

    def __index__(self) -> int:
        return 1 << 30


@needs_compiled
@pytest.mark.parametrize(("change", "expected"), [
    ({"memo": None}, TypeError), ({"memo": None, "count": 0}, TypeError),
    ({"tags": [2]}, TypeError), ({"out": ()}, TypeError), ({"out": (), "count": 0}, TypeError),
    ({"pos": "0"}, TypeError), ({"pos": 1 << 70}, OverflowError), ({"pos": -1}, ValueError),
    ({"pos": 99}, ValueError), ({"count": "1"}, TypeError), ({"count": 1 << 70}, OverflowError),
    ({"frame": None}, TypeError), ({"buf": "text"}, TypeError),
    ({"buf": [0, 0, 0, 5]}, "ok"), ({"buf": memoryview(b"\0\0")}, "ok"), ({"count": 0}, "ok"),
    ({"frame": _Index()}, "ok"),
])
def test_the_batch_twins_refuse_the_same_wrong_calls(change: dict[str, Any], expected: Any) -> None:
    """A wrong call is the same error both ways, checked in the same order (a bad memo with
    nothing to take is still an error, not an empty batch)."""
    a: dict[str, Any] = {"buf": _frame(_pure.encode_body((6, 1)) + _pure.encode_body(Atom("m"))),
                         "pos": 0, "frame": 1 << 30,
                         "memo": {}, "tags": _TAGS, "out": [], "count": 4} | change

    def run(twin: Any) -> Any:
        found = outcome(twin, a["buf"], a["pos"], a["frame"], a["memo"], Mapping.EXACT,
                        Mapping.EXACT, Limits(), _MARK, a["tags"], a["out"], a["count"])
        return found[0] if found[0] == "ok" else found[1]  # the wording is each twin's own

    assert run(_pure.decode_dist_batch) == run(_cterm.decode_dist_batch) == expected
    if "out" not in change and "count" not in change:  # the one-packet reader checks the same

        def one(twin: Any) -> Any:
            found = outcome(twin, a["buf"], a["pos"], a["frame"], a["memo"], Mapping.EXACT,
                            Mapping.EXACT, Limits(), _MARK, a["tags"])
            return found[0] if found[0] == "ok" else found[1]

        assert one(_pure.decode_dist) == one(_cterm.decode_dist) == expected



@needs_compiled
@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=48).map(lambda b: b"\x83" + b))
def test_same_errors_on_random_bytes(data: bytes) -> None:
    check_decode(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(_pure.encode(draw(terms), draw(st.sampled_from([False, True])), 2, Mapping.EXACT))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "big"]))
        if action == "flip" and data:
            data[where] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[where:]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=5))
        else:
            data[where:where] = b"\xff\xff\xff\xff"
    return bytes(data)


@needs_compiled
@settings(max_examples=1500, deadline=None)
@given(mutated())
def test_same_errors_on_mutated_terms(data: bytes) -> None:
    check_decode(data)


NODE = Atom("n@h")
PID = Pid(NODE, 1, 2, 3)
EDGE_TERMS: list[Any] = [
    "text", ["a", "é€"], {Atom("k"): [1, (2, "x")]}, {"k": 1}, {1: "v"}, [1.5, float("nan")],
    float("inf"), object(), {1, 2}, bytearray(b"ab"), memoryview(b"cd"), None, True, [True, 1],
    [0, 1, 255], [256], list(range(70000)), [2**64, -(2**64), 2**63, -(2**63), 2**31, -(2**31) - 1],
    Atom("x" * 255), Atom("é" * 200), Atom("\ud800"), "\ud800", ImproperList([1], "t"),
    ImproperList([1], 2), Map([(1, 2), (1.0, 3)]), Map([([1], "v")]),
    Fun(Atom("m"), 1, 2, PID, (1, "bad")), Fun(Atom("m"), 1, 2, PID, (Atom("a"),), None, None, None),
    ExportFun(Atom("m"), Atom("f"), 3), LocalTerm(b"y\x00\x00\x00\x01a\x05"),
    ("a" * 3, [["deep", "er"]]), 0.0, -0.0, 1e300, -1.5e-300, 5e-324,
]


@needs_compiled
@pytest.mark.parametrize("term", EDGE_TERMS, ids=range(len(EDGE_TERMS)))
def test_same_on_edge_terms(term: Any) -> None:
    check_encode(term)
    for compressed in (False, True, 0, 9):
        assert outcome(_pure.encode, term, compressed) == outcome(_cterm.encode, term, compressed)


class IntLike:
    def __index__(self) -> int:
        return 7


@needs_compiled
def test_subclasses_and_index_types_as_pure() -> None:
    import enum
    from collections import OrderedDict, namedtuple

    class Color(enum.IntEnum):
        RED = 1

    point = namedtuple("point", "x y")
    for term in ([Color.RED, 2], [Color.RED, 300], [IntLike(), 1], point(1, 2), OrderedDict(a=1),
                 [True, False], [Color.RED, True]):
        check_encode(term)


@needs_compiled
def test_same_errors_on_crafted_inputs() -> None:
    cases = [
        b"", b"\x84", b"\x83", b"\x83h\x02a\x01\xee", b"\x83a\x01\x00",
        b"\x83" + b"h\x01" * 300 + b"j", b"\x83" + b"l\x00\x00\x00\x01" * 300 + b"j" * 301,
        b"\x83" + b"l\x00\x00\x00\x01a\x07" * 5000 + b"j",
        b"\x83P" + struct.pack(">I", 10) + zlib.compress(b"m\x00\x00\x10\x00" + bytes(4096)),
        b"\x83P" + struct.pack(">I", 5) + zlib.compress(b"h\x02a\x01\xee"),
        b"\x83P" + struct.pack(">I", 4) + zlib.compress(b"a\x01a\x02"),
        b"\x83P\x00\x00", b"\x83w\x02\xff\xfe", b"\x83d\x01\x00" + b"a" * 256,
        b"\x83v\x03\x00" + "é".encode() * 256 * 2, b"\x83n\x01\x02\x05", b"\x83o\xff\xff\xff\xff\x00",
        b"\x83c" + b"1.5".ljust(31, b"\0"), b"\x83c" + b"nan".ljust(31, b"\0"), b"\x83c" + b"x" * 31,
        b"\x83c\xff" + bytes(30), b"\x83M\x00\x00\x00\x00\x03", b"\x83M\x00\x00\x00\x01\x09\x00",
        b"\x83F\x7f\xf0\x00\x00\x00\x00\x00\x00", b"\x83R\x00", b"\x83Xa\x01", b"\x83Xw\x01a",
        b"\x83Z\x00\x06w\x01a", b"\x83Z\x00\x01R\x00" + bytes(8), b"\x83qw\x01aw\x01bb",
        b"\x83y\x00\x00\x00\x01a\x05", b"\x83y\x00\x00", b"\x83yy\x00\x00\x00\x00",
        b"\x83t\x00\x00\x00\x02a\x01a\x02a\x01a\x03",
        term_to_binary(Fun(Atom("m"), 1, 2, PID, (1,)))[:-1] + b"a\x09",
        term_to_binary(Fun(Atom("m"), 1, 2, PID, (1,), None, None, None)),
        b"\x83k\x00\x03ab", b"\x83\x83", b"\x83P" + bytes(10),
    ]
    for data in cases:
        check_decode(data)
    check_decode(b"\x83" + b"h\x01" * 2500 + b"j")


@needs_compiled
def test_deep_nesting_cannot_crash_the_c_stack() -> None:
    assert _cterm is not None
    deep = b"\x83" + b"h\x01" * 100_000 + b"j"
    with pytest.raises(_pure.DecodeError) as info:
        _cterm.decode(deep, Mapping.EXACT, Limits(max_depth=1 << 30), None, False)
    assert "too deep" in info.value.reason
    nested: Any = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(_pure.EncodeError, match="deeply"):
        _cterm.encode(nested, False, 2, Mapping.EXACT)


@needs_compiled
def test_buffers_are_read_in_place() -> None:
    assert _cterm is not None
    data = term_to_binary((Atom("call"), [1, b"abc"], {b"k": 2.5}))
    framed = b"\x00\x00junk" + data[1:] + b"tail"
    term, end = _cterm.decode_body(memoryview(framed), 6)
    assert term == _pure.decode_body(framed, 6)[0] and end == len(framed) - 4
    assert _cterm.decode(bytearray(data)) == _cterm.decode(memoryview(data)) == _pure.decode(data)
    assert _cterm.decode(memoryview(data + b"xx")[:-2]) == _pure.decode(data)
    assert _cterm.encode_body(term) == data[1:]
    assert _cterm.encode(term, minor_version=1) == _pure.encode(term, minor_version=1)
