"""The codec on its own: each tag, the mapping switches, encode errors, decode limits."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings

from beambridge import (
    Atom,
    BitString,
    DecodeError,
    EncodeError,
    ExportFun,
    Fun,
    ImproperList,
    Limits,
    LocalTerm,
    Map,
    Mapping,
    Pid,
    Port,
    Reference,
    binary_to_term,
    term_to_binary,
)
from beambridge.term import decode_body, encode_body

from ._strict import strict_eq
from .strategies import terms

NODE = Atom("n@h")


@settings(max_examples=300, deadline=None)
@given(term=terms)
def test_every_accepted_value_round_trips_exactly(term: object) -> None:
    for minor_version in (0, 1, 2):
        for compressed in (False, True):
            data = term_to_binary(term, minor_version=minor_version, compressed=compressed)
            assert strict_eq(binary_to_term(data), term)


@pytest.mark.parametrize(("value", "encoded"), [
    (0, b"\x83a\x00"),
    (255, b"\x83a\xff"),
    (256, b"\x83b\x00\x00\x01\x00"),
    (-1, b"\x83b\xff\xff\xff\xff"),
    (2**31, b"\x83n\x04\x00\x00\x00\x00\x80"),
    (-(2**31) - 1, b"\x83n\x04\x01\x01\x00\x00\x80"),
    (2**64, b"\x83n\x09\x00" + bytes(8) + b"\x01"),
    (1.5, b"\x83F?\xf8\x00\x00\x00\x00\x00\x00"),
    (Atom("abc"), b"\x83w\x03abc"),
    (True, b"\x83w\x04true"),
    (None, b"\x83w\x09undefined"),
    (b"ab", b"\x83m\x00\x00\x00\x02ab"),
    ([], b"\x83j"),
    ([1, 2], b"\x83k\x00\x02\x01\x02"),
    ([1, 256], b"\x83l\x00\x00\x00\x02a\x01b\x00\x00\x01\x00j"),
    ((), b"\x83h\x00"),
    ({}, b"\x83t\x00\x00\x00\x00"),
    (BitString(b"\x20", 3), b"\x83M\x00\x00\x00\x01\x03\x20"),
    (ImproperList([1], 2), b"\x83l\x00\x00\x00\x01a\x01a\x02"),
    (ExportFun(Atom("lists"), Atom("map"), 2), b"\x83qw\x05listsw\x03mapa\x02"),
])
def test_known_encodings(value: object, encoded: bytes) -> None:
    assert term_to_binary(value) == encoded
    assert strict_eq(binary_to_term(encoded), value)


def test_minor_versions_choose_atom_and_float_forms() -> None:
    assert term_to_binary(Atom("abc"), minor_version=1) == b"\x83d\x00\x03abc"
    assert term_to_binary(Atom("åäö"), minor_version=1) == b"\x83d\x00\x03\xe5\xe4\xf6"
    assert term_to_binary(Atom("€"), minor_version=1) == b"\x83w\x03\xe2\x82\xac"
    old = term_to_binary(1.5, minor_version=0)
    assert old[:2] == b"\x83c" and len(old) == 33 and old[2:28] == b"1.50000000000000000000e+00"
    assert binary_to_term(old) == 1.5
    long_atom = Atom("é" * 200)
    assert term_to_binary(long_atom)[1] == 118  # ATOM_UTF8_EXT: over 255 bytes
    assert binary_to_term(term_to_binary(long_atom)) == long_atom


def test_strings_are_lists_of_integers_until_65535() -> None:
    assert term_to_binary([7] * 65535)[:4] == b"\x83k\xff\xff"
    assert term_to_binary([7] * 65536)[:2] == b"\x83l"
    assert term_to_binary([True, 1])[:2] == b"\x83l"  # bools are atoms, not bytes


def test_pid_port_reference_forms() -> None:
    pid = Pid(NODE, 1, 2, 3)
    assert term_to_binary(pid) == b"\x83Xw\x03n@h" + struct.pack(">III", 1, 2, 3)
    assert binary_to_term(b"\x83gw\x03n@h" + struct.pack(">IIB", 1, 2, 3)) == pid  # old PID_EXT
    port = Port(NODE, 5, 6)
    assert term_to_binary(port) == b"\x83xw\x03n@h" + struct.pack(">QI", 5, 6)
    old_port = binary_to_term(b"\x83Yw\x03n@h" + struct.pack(">II", 5, 6))
    assert old_port == port and term_to_binary(old_port)[1] == 89  # kept NEW_PORT form
    ref = Reference(NODE, 7, (1, 2, 3))
    assert binary_to_term(term_to_binary(ref)) == ref
    assert binary_to_term(b"\x83r\x00\x01w\x03n@h\x07" + struct.pack(">I", 9)) == Reference(NODE, 7, (9,))
    assert binary_to_term(b"\x83ew\x03n@h" + struct.pack(">IB", 9, 7)) == Reference(NODE, 7, (9,))


def test_decoded_identifiers_are_keys_equal_to_constructed_ones() -> None:
    pid, ref, port = Pid(NODE, 1, 2, 3), Reference(NODE, 7, (1, 2, 3)), Port(NODE, 5, 6)
    seen = {pid: "pid", ref: "ref", port: "port"}
    for value in (pid, ref, port):
        back = binary_to_term(term_to_binary(value))
        assert type(back) is type(value) and back == value
        assert hash(back) == hash(value) and seen[back] == seen[value]
        assert repr(back) == repr(value)
    other_node = Atom("m@h")
    for differs in (Pid(NODE, 9, 2, 3), Pid(NODE, 1, 9, 3), Pid(NODE, 1, 2, 9), Pid(other_node, 1, 2, 3)):
        assert differs != pid and differs not in seen
    refs = (Reference(NODE, 8, (1, 2, 3)), Reference(NODE, 7, (1, 2)), Reference(other_node, 7, (1, 2, 3)))
    for differs_r in refs:
        assert differs_r != ref and differs_r not in seen
    assert pid != (NODE, 1, 2, 3) and ref != (NODE, 7, (1, 2, 3)) and pid != ref


def test_old_fun_ext_decodes_and_reencodes() -> None:
    pid = Pid(NODE, 1)
    fun = Fun(Atom("m"), 3, 4, pid, (Atom("x"),), None, None, None)
    data = term_to_binary(fun)
    assert data[1] == 117
    assert binary_to_term(data) == fun


def test_maps_keep_order_and_unhashable_keys() -> None:
    data = term_to_binary({Atom("b"): 1, Atom("a"): 2})
    assert list(binary_to_term(data)) == ["b", "a"]
    tricky = Map([([1], 1), (1, 2), (1.0, 3), (True, 4)])
    back = binary_to_term(term_to_binary(tricky))
    assert type(back) is Map and strict_eq(back, tricky)
    assert term_to_binary(back) == term_to_binary(tricky)
    assert back[[1]] == 1 and back[1.0] == 3 and back[True] == 4
    merged = binary_to_term(term_to_binary(Map([(1, Atom("a")), (1.0, Atom("b"))])))
    assert type(merged) is Map  # 1 and 1.0 are distinct keys in Erlang


def test_atom_cache_refs_resolve_through_the_given_cache() -> None:
    body = bytes([104, 2, 82, 0, 82, 1])
    term, end = decode_body(body, 0, atom_cache=[Atom("hello"), Atom("true")])
    assert term == (Atom("hello"), True) and end == len(body)
    with pytest.raises(DecodeError, match="cache"):
        decode_body(body, 0)
    with pytest.raises(DecodeError, match="entry 1"):
        decode_body(body, 0, atom_cache={0: Atom("x")})
    assert encode_body((1, 2)) == b"h\x02a\x01a\x02"


def test_local_term_is_opaque() -> None:
    raw = b"\x79\x01\x02\x03\x04" + b"h\x01a\x01"
    value = binary_to_term(b"\x83" + raw)
    assert value == LocalTerm(raw)
    assert term_to_binary(value) == b"\x83" + raw


class TestMappings:
    def test_str_is_refused_by_default_with_a_path(self) -> None:
        with pytest.raises(EncodeError) as info:
            term_to_binary({Atom("k"): [1, (2, "text")]})
        assert info.value.path == (("value", "k"), 1, 1)
        assert "str_as" in str(info.value) and "{value Atom('k')}[1][1]" in str(info.value)
        assert isinstance(info.value, TypeError)

    def test_text_preset(self) -> None:
        data = term_to_binary(["héllo", bytearray(b"\xff")], mapping=Mapping.TEXT)
        assert binary_to_term(data) == [b"h\xc3\xa9llo", b"\xff"]
        assert binary_to_term(data, mapping=Mapping.TEXT) == ["héllo", b"\xff"]

    def test_charlist_preset(self) -> None:
        data = term_to_binary(["abc", "€"], mapping=Mapping.CHARLIST)
        assert binary_to_term(data) == [[97, 98, 99], [8364]]
        assert binary_to_term(data, mapping=Mapping.CHARLIST) == ["abc", "€"]
        assert binary_to_term(term_to_binary([]), mapping=Mapping.CHARLIST) == []

    def test_uwsgi_preset_maps_str_to_atom(self) -> None:
        data = term_to_binary(("ok", "hello"), mapping=Mapping.UWSGI)
        assert binary_to_term(data) == (Atom("ok"), Atom("hello"))
        back = binary_to_term(data, mapping=Mapping.UWSGI)
        assert back == ("ok", "hello") and type(back[0]) is str

    def test_bool_and_none_switches(self) -> None:
        plain = Mapping(bool_atoms=False, none_atom=None)
        assert binary_to_term(term_to_binary((True, None)), mapping=plain) == (
            Atom("true"), Atom("undefined"))
        assert type(binary_to_term(term_to_binary(True), mapping=plain)) is Atom
        with pytest.raises(EncodeError, match="None"):
            term_to_binary(None, mapping=plain)
        nil = Mapping(none_atom="nil")
        assert term_to_binary(None, mapping=nil) == b"\x83w\x03nil"
        assert binary_to_term(b"\x83w\x03nil", mapping=nil) is None
        assert binary_to_term(b"\x83w\x03nil") == Atom("nil")

    def test_bad_mapping_choice(self) -> None:
        with pytest.raises(ValueError, match="str_as"):
            Mapping(str_as="bytes")  # type: ignore[arg-type]


class TestEncodeErrors:
    @pytest.mark.parametrize("value", [float("nan"), float("inf"), object(), {1, 2}, bytearray(b"x"),
                                       "str", Atom("x" * 10).__class__])
    def test_no_erlang_form(self, value: object) -> None:
        with pytest.raises(EncodeError):
            term_to_binary(value)

    def test_cyclic_list(self) -> None:
        cycle: list[object] = []
        cycle.append(cycle)
        with pytest.raises(EncodeError, match="deeply"):
            term_to_binary(cycle)

    def test_bad_options(self) -> None:
        from beambridge import UsageError

        with pytest.raises(UsageError):
            term_to_binary(1, minor_version=3)
        with pytest.raises(UsageError):
            term_to_binary(1, compressed=10)

    def test_value_types_validate(self) -> None:
        with pytest.raises(ValueError):
            Atom("x" * 256)
        with pytest.raises(ValueError):
            Pid(Atom("n"), -1)
        with pytest.raises(ValueError):
            Pid("n", 1)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            BitString(b"ab", 16)
        with pytest.raises(ValueError):
            ImproperList([], 1)
        with pytest.raises(ValueError):
            ImproperList([1], [2])
        with pytest.raises(ValueError):
            Reference(NODE, 0, ())
        assert BitString(b"\xff", 3).data == b"\xe0"  # unused bits cleared, as BEAM does

    def test_subclasses_encode_as_their_base(self) -> None:
        import enum
        from collections import OrderedDict, namedtuple

        class Color(enum.IntEnum):
            RED = 1

        Point = namedtuple("Point", "x y")
        assert binary_to_term(term_to_binary([Color.RED, Point(1, 2), OrderedDict(a=b"")],
                                             mapping=Mapping.TEXT)) == [1, (1, 2), {b"a": b""}]


class TestDecodeLimits:
    def test_huge_counts_are_refused_before_allocating(self) -> None:
        for tag in (b"l", b"i", b"t", b"m", b"o"):
            data = b"\x83" + tag + b"\xff\xff\xff\xff" + b"\x00" * 10
            with pytest.raises(DecodeError) as info:
                binary_to_term(data)
            assert info.value.offset <= 2

    def test_depth_limit(self) -> None:
        deep = b"\x83" + b"h\x01" * 300 + b"j"
        with pytest.raises(DecodeError, match="max_depth"):
            binary_to_term(deep)
        assert binary_to_term(b"\x83" + b"h\x01" * 100 + b"j", limits=Limits(max_depth=101))
        with pytest.raises(DecodeError, match="max_depth"):
            binary_to_term(b"\x83" + b"l\x00\x00\x00\x01" * 300 + b"j" * 301)

    def test_long_tail_chain_is_not_recursion(self) -> None:
        chained = b"\x83" + b"l\x00\x00\x00\x01a\x07" * 5000 + b"j"
        assert binary_to_term(chained) == [7] * 5000

    def test_zlib_bomb_is_refused(self) -> None:
        payload = zlib.compress(b"\x00" * (100 << 20))
        data = b"\x83P" + struct.pack(">I", 100 << 20) + payload
        with pytest.raises(DecodeError, match="max_decompressed_size"):
            binary_to_term(data)
        lying = b"\x83P" + struct.pack(">I", 10) + zlib.compress(b"m\x00\x00\x10\x00" + bytes(4096))
        with pytest.raises(DecodeError, match="more"):
            binary_to_term(lying)

    def test_max_size(self) -> None:
        with pytest.raises(DecodeError, match="max_size"):
            binary_to_term(term_to_binary(b"x" * 100), limits=Limits(max_size=50))

    def test_trailing_bytes_and_used(self) -> None:
        with pytest.raises(DecodeError, match="trailing") as info:
            binary_to_term(b"\x83a\x01\x00")
        assert info.value.offset == 3
        assert binary_to_term(b"\x83a\x01\x00", used=True) == (1, 3)

    def test_offsets_name_the_bad_spot(self) -> None:
        with pytest.raises(DecodeError) as info:
            binary_to_term(b"\x83h\x02a\x01\xee")
        assert info.value.offset == 5 and "unknown tag 238" in info.value.reason
        with pytest.raises(DecodeError) as info:
            binary_to_term(b"\x84a\x01")
        assert info.value.offset == 0
        with pytest.raises(DecodeError, match="end of input"):
            binary_to_term(b"\x83h\x02a\x01")

    def test_compressed_errors_say_so(self) -> None:
        body = b"h\x02a\x01\xee"
        data = b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body)
        with pytest.raises(DecodeError) as info:
            binary_to_term(data)
        assert info.value.compressed and info.value.offset == 4

    def test_memoryview_and_bytearray_input(self) -> None:
        data = term_to_binary([1, 2, b"x"])
        assert binary_to_term(memoryview(data)) == binary_to_term(bytearray(data)) == [1, 2, b"x"]
