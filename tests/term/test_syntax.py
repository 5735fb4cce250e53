"""Erlang term syntax: ``parse_term`` and ``format_term``, alone and against a real Erlang.

The Erlang tests keep one ``erl`` per release and printable range running for the module; each
request is a batch of terms (one hex-encoded ETF line each way), so hundreds of terms cost a
fraction of a second. Erlang checks that it parses our text to the same term (``=:=``), and
returns its own ``~0tp``/``~tp``/``~0p`` text, which we must print identically and read back.
"""

from __future__ import annotations

import math
import os
import selectors
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beambridge import otp
from beambridge._errors import EncodeError, UsageError
from beambridge.term import (
    Atom,
    BitString,
    ExportFun,
    Fun,
    ImproperList,
    LocalTerm,
    Map,
    Mapping,
    Pid,
    Port,
    Reference,
    binary_to_term,
    term_to_binary,
)
from beambridge.term._syntax import _RESERVED, TermSyntaxError, _strict_key, format_term, parse_term

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def strict(x: Any) -> Any:
    """A comparable form that tells apart what ``==`` merges: types, ``-0.0``, ``1`` vs ``1.0``."""
    t = type(x)
    if t is float:
        return (t, struct.pack(">d", x))
    if t is list or t is tuple:
        return (t, tuple(map(strict, x)))
    if t is dict or t is Map:
        return (t, frozenset((strict(k), strict(v)) for k, v in x.items()))
    if t is ImproperList:
        return (t, strict(x.items), strict(x.tail))
    if t is Fun:
        return (t, x.module, x.old_index, x.old_uniq, x.pid, strict(x.free_vars), x.arity, x.uniq,
                x.index)
    return (t, x)


def assert_same(got: Any, want: Any) -> None:
    assert strict(got) == strict(want), f"{got!r} != {want!r}"


def norm(x: Any) -> Any:
    """What the codec gives back for ``x``: the canonical Python form of that Erlang term."""
    return binary_to_term(term_to_binary(x))


A = Atom

# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------

PARSE_CASES: list[tuple[str, Any]] = [
    ("0", 0),
    ("-17", -17),
    ("+5", 5),
    ("- 5", -5),
    ("-(5)", -5),
    ("1_000_000", 1_000_000),
    ("16#ff", 255),
    ("16#FF_ff", 0xFFFF),
    ("2#1010", 10),
    ("36#zZ", 1295),
    ("-16#10", -16),
    ("$a", 97),
    ("$\\n", 10),
    ("$\\s", 32),
    ("$ ", 32),
    ("$\\^M", 13),
    ("$\\x{1F600}", 0x1F600),
    ("$\\101", 65),
    ("123456789012345678901234567890", 123456789012345678901234567890),
    ("1.0", 1.0),
    ("-0.0", -0.0),
    ("1.5e3", 1500.0),
    ("1.0E-5", 1e-5),
    ("1.0e+3", 1000.0),
    ("1.0e1_0", 1e10),
    ("1.0e-400", 0.0),
    ("ok", A("ok")),
    ("a@b", A("a@b")),
    ("aB_9@", A("aB_9@")),
    ("'Hello World'", A("Hello World")),
    ("'it\\'s'", A("it's")),
    ("'\\x{43F}\\x{440}'", A("пр")),
    ("'привет'", A("привет")),
    ("ÿx", A("ÿx")),
    ("''", A("")),
    ("maybe", A("maybe")),
    ("'after'", A("after")),
    ("true", True),
    ("false", False),
    ("undefined", None),
    ("'true'", True),
    ('"abc"', [97, 98, 99]),
    ('""', []),
    ('"a" "b"  "c"', [97, 98, 99]),
    ('"\\b\\d\\e\\f\\n\\r\\s\\t\\v\\\\\\"\\z"', [8, 127, 27, 12, 10, 13, 32, 9, 11, 92, 34, 122]),
    ('"\\x41\\101\\1\\^a\\^Z"', [65, 65, 1, 1, 26]),
    ('"\\^?"', [127]),  # OTP 26+; OTP 25 read it as 31
    ('"é€"', [233, 0x20AC]),
    ('"line\nbreak"', [108, 105, 110, 101, 10, 98, 114, 101, 97, 107]),
    ("<<>>", b""),
    ('<<"">>', b""),
    ('<<"abc">>', b"abc"),
    ("<<1,2,3>>", b"\x01\x02\x03"),
    ('<<"é">>', b"\xe9"),
    ('<<"é"/utf8>>', "é".encode()),
    ('<<"ab","cd">>', b"abcd"),
    ('<<"a" "b">>', b"ab"),
    ("<<$a, -1>>", b"a\xff"),
    ("<<256>>", b"\x00"),
    ("<<1:16>>", b"\x00\x01"),
    ("<<1:16/little>>", b"\x01\x00"),
    ("<<-1:16/little-signed>>", b"\xff\xff"),
    ("<<16#123:12/little>>", BitString(b"\x23\x10", 12)),
    ("<<16#12345:20/little>>", BitString(b"\x45\x23\x10", 20)),
    ("<<1:3>>", BitString(b"\x20", 3)),
    ("<<1:4/unit:2>>", b"\x01"),
    ("<<3:2, 1:6>>", b"\xc1"),
    ("<<1:0>>", b""),
    ('<<"abc":16>>', b"\x00a\x00b\x00c"),
    ("<<1.5/float>>", struct.pack(">d", 1.5)),
    ("<<1.5:32/float-little>>", struct.pack("<f", 1.5)),
    ("<<1:16/float>>", struct.pack(">e", 1.0)),
    ("<<300/utf16-little>>", b"\x2c\x01"),
    ('<<"é"/utf32>>', b"\x00\x00\x00\xe9"),
    ("<<<<1,2>>/binary, 3>>", b"\x01\x02\x03"),
    ("<<(<<1:3>>)/bitstring, 1:5>>", b"\x21"),
    ("<<(<<\"abcd\">>):2/binary>>", b"ab"),
    ("{}", ()),
    ("{a}", (A("a"),)),
    ("{1, {2, {}}}", (1, (2, ()))),
    ("[]", []),
    ("[1, 2, 3]", [1, 2, 3]),
    ("[a | b]", ImproperList([A("a")], A("b"))),
    ("[1, 2 | 3.0]", ImproperList([1, 2], 3.0)),
    ("[1 | [2, 3]]", [1, 2, 3]),
    ("[1 | [2 | x]]", ImproperList([1, 2], A("x"))),
    ('[$a | "bc"]', [97, 98, 99]),
    ("[1 | []]", [1]),
    ("#{}", {}),
    ("#{a => 1, b => [2]}", {A("a"): 1, A("b"): [2]}),
    ("#{a => 1, a => 2}", {A("a"): 2}),
    ("#{1 => a, 1.0 => b}", Map([(1, A("a")), (1.0, A("b"))])),
    ("#{[1] => a}", Map([([1], A("a"))])),
    ("#{{1} => a, {1.0} => b}", Map([((1,), A("a")), ((1.0,), A("b"))])),
    ("#{#{} => 1, #{} => 2}", Map([({}, 2)])),
    ("fun lists:map/2", ExportFun(A("lists"), A("map"), 2)),
    ("fun 'a b':'C'/0", ExportFun(A("a b"), A("C"), 0)),
    ("<nonode@nohost.12.0>", Pid(A("nonode@nohost"), 12, 0, 0)),
    ("<'n@host.example.com'/4294967295.1.2>", Pid(A("n@host.example.com"), 1, 2, 0xFFFFFFFF)),
    ("#Ref<a@b/3.1.2.3>", Reference(A("a@b"), 3, (3, 2, 1))),
    ("#Ref<a@b.7>", Reference(A("a@b"), 0, (7,))),
    ("#Port<a@b/3.18446744073709551615>", Port(A("a@b"), 2**64 - 1, 3)),
    ("#LocalTerm{<<121,1,2>>}", LocalTerm(b"y\x01\x02")),
    ("#Fun{m,1,2,<a@b.1.0>,{x,\"y\"},3,<<0:128>>,4}",
     Fun(A("m"), 1, 2, Pid(A("a@b"), 1, 0, 0), (A("x"), [121]), 3, bytes(16), 4)),
    ("#Fun{m,1,2,<a@b.1.0>,{}}", Fun(A("m"), 1, 2, Pid(A("a@b"), 1, 0, 0), (), None, None, None)),
    ("(ok)", A("ok")),
    ("ok.", A("ok")),
    ("  ok .  ", A("ok")),
    ("% comment\n{1, % inside\n 2}. % after\n", (1, 2)),
    ('[1, "abc", {ok, <<"x">>}]', [1, [97, 98, 99], (A("ok"), b"x")]),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES, ids=[c[0][:40] for c in PARSE_CASES])
def test_parse(text: str, expected: Any) -> None:
    assert_same(parse_term(text), expected)


ERROR_CASES: list[tuple[str, int, int, str]] = [
    ("", 1, 1, "expected a term"),
    ("   \n", 2, 1, "expected a term"),
    ("[1, 2", 1, 6, "expected ',', '|' or ']'"),
    ("{a,,b}", 1, 4, "expected a term"),
    ("{1,\n  2,\n  @}", 3, 3, "unexpected character"),
    ("a b", 1, 3, "after the term"),
    ("ok. ok", 1, 5, "after the term"),
    ("X", 1, 1, "variable"),
    ("_", 1, 1, "variable"),
    ("after", 1, 1, "reserved word"),
    ("1e10", 1, 1, "1.0e10"),
    ("1. 2", 1, 4, "after the term"),
    ("1.x", 1, 2, "unexpected '.'"),
    ("16#", 1, 1, "bad integer"),
    ("16#fg", 1, 1, "bad digit"),
    ("37#1", 1, 1, "2 to 36"),
    ("12ab", 1, 1, "bad number"),
    ("1.0e400", 1, 1, "out of range"),
    ('"abc', 1, 1, "unterminated string"),
    ("'abc", 1, 1, "unterminated atom"),
    ("'" + "a" * 256 + "'", 1, 1, "at most 255"),
    ('"\\x{D800}"', 1, 2, "not a Unicode character"),
    ('"\\x{110000}"', 1, 2, "not a Unicode character"),
    ('"\\xZ1"', 1, 2, "two hex digits"),
    ("$", 1, 1, "needs a character"),
    ("- a", 1, 3, "go before a number"),
    ("-[1]", 1, 2, "go before a number"),
    ("[a | b | c]", 1, 8, "after the tail"),
    ("#{a := 1}", 1, 5, "=>"),
    ("#{a}", 1, 4, "'=>'"),
    ("#rec{a, b}", 1, 1, "records"),
    ("fun m:f/256", 1, 9, "above 255"),
    ("fun m/2", 1, 6, "':'"),
    ("fun (X) -> X end", 1, 6, "variable"),
    ("<0.12.0>", 1, 1, "no node name"),
    ("#Ref<0.1.2.3>", 1, 1, "no node name"),
    ("#Port<0.5>", 1, 1, "no node name"),
    ("#Fun<erl_eval.6.123>", 1, 1, "cannot be read back"),
    ("<a@b.1>", 1, 1, "bad pid"),
    ("<a@b.1.2.3>", 1, 1, "bad pid"),
    ("#Ref<a@b.1.2.3.4.5.6>", 1, 1, "bad ref"),
    ("<a@b.4294967296.0>", 1, 1, "Pid.id"),
    ("#LocalTerm{1}", 1, 1, "#LocalTerm"),
    ("#LocalTerm{<<1>>}", 1, 1, "LOCAL_EXT"),
    ("#Fun{m,1,2}", 1, 1, "#Fun{Module"),
    ("#Fun{m,1,2,3,{}}", 1, 1, "Fun.pid"),
    ("<<1.5>>", 1, 3, "needs an integer"),
    ("<<a>>", 1, 3, "a binary segment is"),
    ('<<"ab"/binary>>', 1, 3, "string segment"),
    ("<<1/binary>>", 1, 3, "needs a binary"),
    ("<<(<<1:3>>)/binary>>", 1, 3, "multiple of its unit"),
    ("<<(<<1>>):2/binary>>", 1, 3, "fewer than"),
    ("<<1:8/utf8>>", 1, 3, "no size"),
    ("<<16#D800/utf8>>", 1, 3, "code point"),
    ("<<1:24/float>>", 1, 3, "16, 32 or 64"),
    ("<<1.0e300:32/float>>", 1, 3, "does not fit"),
    ("<<1/foo>>", 1, 5, "unknown binary type"),
    ("<<1/unit:0>>", 1, 10, "1 to 256"),
    ("<<1:a>>", 1, 5, "segment size"),
    ("[" * 300 + "]" * 300, 1, 257, "nesting deeper"),
    ("(" * 300 + "1" + ")" * 300, 1, 257, "nesting deeper"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), ERROR_CASES,
                         ids=[c[0][:30] for c in ERROR_CASES])
def test_parse_errors(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(TermSyntaxError) as caught:
        parse_term(text)
    error = caught.value
    assert fragment in error.reason
    assert (error.line, error.column) == (line, column)
    assert str(error).startswith(f"line {line}, column {column}: ")
    assert isinstance(error, UsageError) and isinstance(error, ValueError)


def test_parse_refuses_non_text() -> None:
    with pytest.raises(UsageError):
        parse_term(b"ok")  # type: ignore[arg-type]


def test_parse_big_integers_beyond_pythons_digit_limit() -> None:
    n = 7**20000  # about 16900 digits: str()/int() alone would refuse it
    text = format_term(-n)
    assert text.startswith("-") and len(text) > 16000
    assert parse_term(text) == -n
    assert parse_term("36#" + "z" * 5000) == 36**5000 - 1


def test_large_values_round_trip() -> None:
    """Big binaries and lists take the scanner's fast paths; they must mean the same."""
    data = bytes(range(256)) * 800
    values = [data, list(range(-1000, 50000)), [data[:1000]] * 100, "é".encode() * 50000,
              {A(f"k{i}"): [i, float(i)] for i in range(5000)}]
    for value in values:
        assert_same(parse_term(format_term(value)), value)
    assert parse_term("<< 1 ,\n 2 >>") == b"\x01\x02"
    assert parse_term("<<<<1,2>>/binary, 300>>") == b"\x01\x02\x2c"


def test_parse_with_mappings() -> None:
    text = '[ok, "abc", <<"é"/utf8>>, true, nil, undefined, {}]'
    assert_same(parse_term(text, mapping=Mapping.CHARLIST),
                [A("ok"), "abc", "é".encode(), True, A("nil"), None, ()])
    assert_same(parse_term(text, mapping=Mapping.TEXT),
                [A("ok"), [97, 98, 99], "é", True, A("nil"), None, ()])
    assert_same(parse_term(text, mapping=Mapping.UWSGI),
                ["ok", [97, 98, 99], "é".encode(), True, "nil", None, ()])
    assert_same(parse_term(text, mapping=Mapping(none_atom="nil", bool_atoms=False)),
                [A("ok"), [97, 98, 99], "é".encode(), A("true"), None, A("undefined"), ()])


# --------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------

FORMAT_CASES: list[tuple[Any, str]] = [
    (0, "0"),
    (-5, "-5"),
    (2**70, "1180591620717411303424"),
    (True, "true"),
    (False, "false"),
    (None, "undefined"),
    (A("ok"), "ok"),
    (A("true"), "true"),
    (A(""), "''"),
    (A("Ok"), "'Ok'"),
    (A("_x"), "'_x'"),
    (A("a b"), "'a b'"),
    (A("a.b"), "'a.b'"),
    (A("a@b_C9"), "a@b_C9"),
    (A("ÿx"), "ÿx"),
    (A("ab÷"), "'ab÷'"),
    (A("after"), "'after'"),
    (A("maybe"), "'maybe'"),
    (A("else"), "'else'"),
    (A("spec"), "spec"),
    (A("it's"), "'it\\'s'"),
    (A("a\\b"), "'a\\\\b'"),
    (A('a"b'), "'a\"b'"),
    (A("\n\x00\x7f\x80é\x9f\xa0 "), "'\\n\\000\\d\\200é\\237\xa0 '"),
    (A("\t\v\f\r\x1b\b"), "'\\t\\v\\f\\r\\e\\b'"),
    (A("привет"), "'привет'"),
    (A("\ufffe"), "'\\x{FFFE}'"),
    (1.0, "1.0"),
    (0.1, "0.1"),
    (-0.0, "-0.0"),
    (100.0, "100.0"),
    (123.456, "123.456"),
    (1e10, "1.0e10"),
    (1e15, "1.0e15"),
    (0.001, "0.001"),
    (0.0001, "0.0001"),
    (0.000123, "1.23e-4"),
    (1e-5, "1.0e-5"),
    (5e-324, "5.0e-324"),
    (9007199254740990.0, "9007199254740990.0"),
    (2.0**53, "9.007199254740992e15"),
    (1.7976931348623157e308, "1.7976931348623157e308"),
    (b"", "<<>>"),
    (b"abc", '<<"abc">>'),
    (b"a\nb\"\\", '<<"a\\nb\\"\\\\">>'),
    (b"\xe9", '<<"é">>'),
    ("é".encode(), '<<"é"/utf8>>'),
    ("ф".encode(), "<<209,132>>"),
    (b"\x00\x01\x7f", "<<0,1,127>>"),
    (b"\xef\xbf\xbe", "<<239,191,190>>"),
    (BitString(b"\x20", 3), "<<1:3>>"),
    (BitString(b"ab\x40", 19), "<<97,98,2:3>>"),
    ((), "{}"),
    ((1, A("a"), (b"x",)), '{1,a,{<<"x">>}}'),
    ([], "[]"),
    ([1, 2, 3], "[1,2,3]"),
    ([104, 105], '"hi"'),
    ([233, 10, 27, 8], '"é\\n\\e\\b"'),
    ([34, 39, 92], '"\\"\'\\\\"'),
    ([1055, 1088], "[1055,1088]"),
    ([97, 128], "[97,128]"),
    ([97, 127], "[97,127]"),
    ([97, True], "[97,true]"),
    ([[97], [98, -1]], '["a",[98,-1]]'),
    (ImproperList([1], 2.0), "[1|2.0]"),
    (ImproperList([97, 98], 99), "[97,98|99]"),
    ({}, "#{}"),
    ({A("a"): 1, b"k": [2]}, '#{a => 1,<<"k">> => [2]}'),
    (Map([(1, A("a")), (1.0, A("b"))]), "#{1 => a,1.0 => b}"),
    (ExportFun(A("lists"), A("map"), 2), "fun lists:map/2"),
    (ExportFun(A("a b"), A("+"), 2), "fun 'a b':'+'/2"),
    (Pid(A("a@b"), 12, 0, 0), "<a@b.12.0>"),
    (Pid(A("a@b.c"), 12, 3, 7), "<'a@b.c'/7.12.3>"),
    (Reference(A("a@b"), 3, (1, 2, 3)), "#Ref<a@b/3.3.2.1>"),
    (Port(A("a@b"), 5, 0), "#Port<a@b.5>"),
    (LocalTerm(b"y\x00\x00\x00\x01a\x05"), "#LocalTerm{<<121,0,0,0,1,97,5>>}"),
    (Fun(A("m"), 1, 2, Pid(A("a@b"), 1, 0, 0), (A("x"),), 3, bytes(16), 4),
     "#Fun{m,1,2,<a@b.1.0>,{x},3,<<0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0>>,4}"),
    (Fun(A("m"), 1, 2, Pid(A("a@b"), 1, 0, 0), (), None, None, None), "#Fun{m,1,2,<a@b.1.0>,{}}"),
]


@pytest.mark.parametrize(("value", "expected"), FORMAT_CASES, ids=[c[1][:40] for c in FORMAT_CASES])
def test_format(value: Any, expected: str) -> None:
    assert format_term(value) == expected
    assert_same(parse_term(expected), norm(value))


def test_format_unicode_range() -> None:
    assert format_term([1055, 1088], printable_range="unicode") == '"Пр"'
    assert format_term("ф".encode(), printable_range="unicode") == '<<"ф"/utf8>>'
    assert format_term([0x10FFFF, 0xE000], printable_range="unicode") == '"\U0010ffff\ue000"'
    assert format_term([0xFFFE], printable_range="unicode") == "[65534]"
    assert format_term([0xD800], printable_range="unicode") == "[55296]"
    with pytest.raises(UsageError):
        format_term(1, printable_range="utf8")  # type: ignore[arg-type]


def test_format_subclasses_print_as_their_base() -> None:
    class MyInt(int):
        pass

    class MyList(list[Any]):
        pass

    assert format_term(MyList([MyInt(104), 105])) == '"hi"'


def test_format_refuses_what_has_no_erlang_form() -> None:
    with pytest.raises(EncodeError, match="two Erlang forms"):
        format_term("abc")
    with pytest.raises(EncodeError):
        format_term(float("nan"))
    with pytest.raises(EncodeError):
        format_term({1, 2})
    with pytest.raises(EncodeError):
        format_term(bytearray(b"x"))


def test_format_with_mappings() -> None:
    assert format_term(["abc", b"x"], mapping=Mapping.TEXT) == '[<<"abc">>,<<"x">>]'
    assert format_term(["abc", "é"], mapping=Mapping.CHARLIST) == '["abc","é"]'
    assert format_term(["abc", None], mapping=Mapping.UWSGI) == "[abc,undefined]"
    assert format_term(None, mapping=Mapping(none_atom="nil")) == "nil"


# --------------------------------------------------------------------------------------------
# round trips (hypothesis)
# --------------------------------------------------------------------------------------------

def _bitstring(data: bytes, tail: int) -> BitString:
    return BitString(data, (len(data) - 1) * 8 + tail)


NODES = st.sampled_from([A("nonode@nohost"), A("a@b"), A("n1@host.example.com"), A("Ab@c")])
U32 = st.integers(0, 2**32 - 1)
ATOM_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff")
ATOMS = st.one_of(
    st.sampled_from(["ok", "error", "a@b", "true", "false", "undefined", "Caps", "with space", "",
                     "after", "'", "\\", "é", "ÿx"]),
    st.text(ATOM_CHARS, max_size=12),
    st.text(st.characters(max_codepoint=255), max_size=8),
).map(A)
INTS = st.one_of(st.integers(-300, 300), st.integers(), st.integers(-(2**2000), 2**2000))
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
BINARIES = st.one_of(
    st.binary(max_size=12),
    st.text(max_size=8).map(lambda s: s.encode()),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=8).map(
        lambda s: s.encode("latin-1")),
)
BITSTRINGS = st.builds(_bitstring, st.binary(min_size=1, max_size=6), st.integers(1, 7))
STRINGS = st.one_of(
    st.text(st.characters(min_codepoint=1, max_codepoint=300), max_size=10).map(
        lambda s: [ord(c) for c in s]),
    st.lists(st.integers(0, 0x10FFFF), max_size=6),
)
EXPORT_FUNS = st.builds(ExportFun, ATOMS, ATOMS, st.integers(0, 255))
# Erlang prints a fun's names in C (fun_to_list), with its own quoting: non-ASCII atoms come out
# as Latin-1 mojibake of their UTF-8, control characters as octal escapes, reserved words bare
# (fun m:catch/0) and a@b quoted. Only names both quote alike compare as text.
FUN_NAMES = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda name: name not in _RESERVED),
    st.sampled_from(["", "Caps", "with space", "+", "it's", "a\\b", "_"]),
).map(A)
ASCII_FUNS = st.builds(ExportFun, FUN_NAMES, FUN_NAMES, st.integers(0, 255))
ERLANG_LEAVES = st.one_of(INTS, FLOATS, ATOMS, BINARIES, BITSTRINGS, STRINGS, ASCII_FUNS)

PIDS = st.builds(Pid, NODES, U32, U32, U32)
PORTS = st.builds(Port, NODES, st.integers(0, 2**64 - 1), U32)
REFS = st.builds(Reference, NODES, U32, st.lists(U32, min_size=1, max_size=5).map(tuple))
FUNS = st.one_of(
    st.builds(Fun, ATOMS, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), PIDS,
              st.lists(INTS, max_size=3).map(tuple), st.integers(0, 255), st.binary(min_size=16, max_size=16),
              U32),
    st.builds(Fun, ATOMS, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), PIDS,
              st.lists(ATOMS, max_size=2).map(tuple), st.none(), st.none(), st.none()),
)
LOCALS = st.builds(lambda digest, term: LocalTerm(b"y" + digest + term_to_binary(term)[1:]),
                   st.binary(min_size=4, max_size=4), st.one_of(INTS, ATOMS, BINARIES))
ALL_LEAVES = st.one_of(ERLANG_LEAVES, EXPORT_FUNS, PIDS, PORTS, REFS, FUNS, LOCALS)


def _map(pairs: list[tuple[Any, Any]]) -> Any:
    return Map(pairs)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    hashable_keys = st.one_of(ATOMS, INTS, BINARIES, st.tuples(ATOMS, INTS))
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.builds(ImproperList, st.lists(children, min_size=1, max_size=3),
                  st.one_of(ATOMS, INTS, FLOATS, BINARIES, st.tuples(children))),
        st.dictionaries(hashable_keys, children, max_size=4),
        st.lists(st.tuples(children, children), max_size=4,
                 unique_by=lambda pair: _strict_key(norm(pair[0]))).map(_map),
    )


ERLANG_TERMS = st.recursive(ERLANG_LEAVES, containers, max_leaves=12).map(norm)
ALL_TERMS = st.recursive(ALL_LEAVES, containers, max_leaves=12).map(norm)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(ALL_TERMS, st.sampled_from(["latin1", "unicode"]))
def test_round_trip(value: Any, printable_range: Any) -> None:
    text = format_term(value, printable_range=printable_range)
    assert "\n" not in text
    assert_same(parse_term(text), value)
    assert_same(parse_term(text + ".\n"), value)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=10), st.lists(st.text(max_size=5), max_size=3)))
def test_round_trip_under_text_mappings(value: Any) -> None:
    for mapping in (Mapping.TEXT, Mapping.CHARLIST, Mapping.UWSGI):
        text = format_term(value, mapping=mapping)
        assert_same(parse_term(text, mapping=mapping),
                    binary_to_term(term_to_binary(value, mapping=mapping), mapping=mapping))


@settings(max_examples=1000, deadline=None)
@given(FLOATS)
def test_floats_round_trip_exactly(value: float) -> None:
    assert_same(parse_term(format_term(value)), value)


# --------------------------------------------------------------------------------------------
# against a real Erlang
# --------------------------------------------------------------------------------------------

# Reads batches (hex of term_to_binary([{Etf, Text}])) line by line; for each item answers
# {ParsedEqual, Etf', ~0tp, ~tp, ~0p}: whether erl_parse reads Text to binary_to_term(Etf), the
# term re-encoded by this BEAM, and this BEAM's own printing of it.
_ERL_SERVER = r"""
Text = fun(Fmt, T) -> unicode:characters_to_binary(io_lib:format(Fmt, [T])) end,
Check = fun({Etf, Src}) ->
    T = binary_to_term(Etf),
    Parsed = case erl_scan:string(unicode:characters_to_list(Src)) of
        {ok, Tokens, _} ->
            Dot = case lists:reverse(Tokens) of
                [{dot, _} | _] -> [];
                _ -> [{dot, erl_anno:new(1)}]
            end,
            case erl_parse:parse_term(Tokens ++ Dot) of
                {ok, V} -> V =:= T;
                Error -> Error
            end;
        Error -> Error
    end,
    {Parsed, term_to_binary(T), Text("~0tp", T), Text("~tp", T), Text("~0p", T)}
end,
io:setopts(standard_io, [binary]),
Loop = fun Loop() ->
    case io:get_line("") of
        eof -> halt();
        Line ->
            Batch = binary_to_term(binary:decode_hex(string:trim(Line))),
            Reply = binary:encode_hex(term_to_binary([Check(Item) || Item <- Batch])),
            io:put_chars([Reply, $\n]),
            Loop()
    end
end,
Loop().
"""


class ErlTerms:
    """One ``erl`` running ``_ERL_SERVER``; every exchange has a deadline, ``close`` stops it."""

    def __init__(self, runtime: otp.Runtime, printable_range: str, timeout: float = 30.0) -> None:
        self.runtime = runtime
        self.printable_range = printable_range
        self.timeout = timeout
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        command = [str(runtime.erl), "-noshell", "-boot", "start_clean", "+pc", printable_range,
                   "-eval", _ERL_SERVER]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=runtime.environ())
        assert self.proc.stdout is not None
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout.fileno(), selectors.EVENT_READ)
        self._pending = b""

    def check(self, items: list[tuple[Any, str]]) -> list[tuple[Any, ...]]:
        batch = [(term_to_binary(value), text.encode()) for value, text in items]
        assert self.proc.stdin is not None
        self.proc.stdin.write(term_to_binary(batch).hex().encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise TimeoutError(f"{self.runtime} did not answer within {self.timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)  # type: ignore[union-attr]
            if not chunk:
                self._stderr.seek(0)
                raise RuntimeError(f"erl exited: {self._stderr.read()[-2000:]!r}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        reply: list[tuple[Any, ...]] = binary_to_term(bytes.fromhex(line.decode()))
        assert len(reply) == len(items)
        return reply

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the server halts at end of input
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # this process only, by its pid
            self.proc.wait(timeout=5)
        self._selector.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture(scope="module", params=["latin1", "unicode"])
def erl_terms(request: pytest.FixtureRequest, otp_runtime: otp.Runtime) -> Iterator[ErlTerms]:
    server = ErlTerms(otp_runtime, request.param)
    try:
        yield server
    finally:
        server.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else "".join(map(chr, value))


def check_against_erlang(server: ErlTerms, values: list[Any]) -> None:
    """Erlang parses what we print to the same term, prints it as we do, and we read its text."""
    printable_range: Any = server.printable_range
    texts = [format_term(v, printable_range=printable_range) for v in values]
    replies = server.check(list(zip(values, texts, strict=True)))
    for value, text, (parsed, etf, text0, text_multi, text_latin1) in zip(
            values, texts, replies, strict=True):
        beam_value = binary_to_term(etf)
        assert_same(beam_value, value)
        assert parsed is True, f"Erlang did not read {text!r} back: {parsed!r}"
        text0, text_multi, text_latin1 = map(_text, (text0, text_multi, text_latin1))
        ours = format_term(beam_value, printable_range=printable_range)
        if server.runtime.major < 27:  # maybe and else became keywords in OTP 27; we always quote
            ours = ours.replace("'maybe'", "maybe").replace("'else'", "else")
        # Above 32 keys map order is the hash's; OTP 25 printed some binaries differently.
        if not _has_large_map(value) and not (
                server.runtime.major < 27 and _has_binary_printed_otherwise_by_otp25(value, printable_range)):
            assert ours == text0
        for erlang_text in (text0, text_multi, text_latin1):
            assert_same(parse_term(erlang_text), value)


def _terms_in(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, (dict, Map)):
        for pair in value.items():
            yield from _terms_in(pair)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _terms_in(item)
    elif isinstance(value, ImproperList):
        yield from _terms_in((*value.items, value.tail))


def _has_binary_printed_otherwise_by_otp25(value: Any, printable_range: Any) -> bool:
    """OTP 25 checked a whole binary for UTF-8 before looking at its characters, so a binary whose
    valid start has a character that is not printable, followed by bytes that are not UTF-8,
    printed as Latin-1 text there and as numbers on OTP 27+ (which we follow)."""
    for term in _terms_in(value):
        if type(term) is bytes:
            try:
                term.decode("utf-8")
            except UnicodeDecodeError:
                if all(32 <= b <= 126 or b >= 160 or b in b"\n\r\t\v\b\f\x1b" for b in term) and (
                        not format_term(term, printable_range=printable_range).startswith('<<"')):
                    return True
    return False


def _has_large_map(value: Any) -> bool:
    if isinstance(value, (dict, Map)):
        return len(value) > 32 or any(map(_has_large_map, (*value.keys(), *value.values())))
    if isinstance(value, (list, tuple)):
        return any(map(_has_large_map, value))
    if isinstance(value, ImproperList):
        return any(map(_has_large_map, value.items)) or _has_large_map(value.tail)
    return False


@pytest.mark.erlang
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(ERLANG_TERMS, min_size=1, max_size=40))
def test_random_terms_against_erlang(erl_terms: ErlTerms, values: list[Any]) -> None:
    check_against_erlang(erl_terms, values)


ERLANG_FIXED = [
    *(v for v, _ in FORMAT_CASES if not isinstance(v, (Pid, Port, Reference, Fun, LocalTerm))
      and v != A("\ufffe")),  # erl_scan refuses U+FFFE, even escaped
    *(norm(v) for _, v in PARSE_CASES if not isinstance(v, (Pid, Port, Reference, Fun, LocalTerm))),
    [float(f"1e{e}") for e in range(-30, 30)],
    [float(2**53 + d) for d in range(-4, 5)] + [m * 10.0**e for m in (1.5, 9.999, 123.0)
                                               for e in range(-8, 20)],
    [list(range(0, 300, 7))], bytes(range(256)), [list(range(0, 0x11000, 997))],
    {A(f"k{i}"): i for i in range(40)}, {i: A("v") for i in range(-5, 50)},
    Map([(1, A("a")), (1.0, A("b")), ((1,), A("c")), ((1.0,), A("d")), ([1], A("e"))]),
    A("\x00\x1f\x7f\x80\x9f\xa0\xff\u0100\U0010ffff"), [A(c) for c in "éÀßÞ\u00f7\u00d7_@09aZ "],
    math.pi, -math.e, 2**1000, -(2**1000) - 1, 2**64,
]


@pytest.mark.erlang
def test_fixed_terms_against_erlang(erl_terms: ErlTerms) -> None:
    check_against_erlang(erl_terms, [norm(v) for v in ERLANG_FIXED])


@pytest.mark.erlang
def test_erlang_reads_our_input_syntax_alike(erl_terms: ErlTerms) -> None:
    """The shell forms we parse (escapes, segments, separators) mean what erl_parse says."""
    cases = [(text, parse_term(text)) for text, value in PARSE_CASES
             if not isinstance(value, (Pid, Port, Reference, Fun, LocalTerm))
             and text != '"\\^?"'
             and not (text == "maybe" and erl_terms.runtime.major >= 27)]
    replies = erl_terms.check([(value, text) for text, value in cases])
    for (text, value), (parsed, *_rest) in zip(cases, replies, strict=True):
        assert parsed is True, f"Erlang reads {text!r} differently from our {value!r}: {parsed!r}"
