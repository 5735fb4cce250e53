"""The pure-Python External Term Format codec.

Encoders and decoders are closures built once per set of options and cached, so the per-call cost
is a dictionary lookup. Decoding reads ``bytes`` by index and ``struct.unpack_from`` (no slicing
except for the payload of binaries and atoms); every length read from the input is checked
against what is left of it before anything is allocated.
"""

from __future__ import annotations

import math
import operator
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from collections.abc import Mapping as AbcMapping
from functools import partial
from itertools import chain
from typing import Any

from .._errors import DecodeError, EncodeError
from ._options import Limits, Mapping
from ._tags import (
    ATOM,
    ATOM_CACHE_REF,
    ATOM_UTF8,
    BINARY,
    BIT_BINARY,
    COMPRESSED,
    EXPORT,
    FLOAT,
    FUN,
    INTEGER,
    LARGE_BIG,
    LARGE_TUPLE,
    LIST,
    LOCAL,
    MAP,
    MAX_STRING_LEN,
    NEW_FLOAT,
    NEW_FUN,
    NEW_PID,
    NEW_PORT,
    NEW_REFERENCE,
    NEWER_REFERENCE,
    NIL,
    PID,
    PORT,
    REFERENCE,
    SMALL_ATOM,
    SMALL_ATOM_UTF8,
    SMALL_BIG,
    SMALL_INTEGER,
    SMALL_TUPLE,
    STRING,
    V4_PORT,
    VERSION,
)
from ._types import (
    Atom,
    BitString,
    ExportFun,
    Fun,
    ImproperList,
    LocalTerm,
    Map,
    Pid,
    Port,
    Reference,
    trusted_pid,
    trusted_reference,
)

__all__ = ["decode", "decode_body", "encode", "encode_body"]

AtomCache = Sequence[Any] | AbcMapping[int, Any]

_u8 = struct.Struct(">B")
_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")
_i32 = struct.Struct(">i")
_f64 = struct.Struct(">d")
_u64 = struct.Struct(">Q")
_pid_tail = struct.Struct(">III")
_tag_i32 = struct.Struct(">Bi")
_tag_u32 = struct.Struct(">BI")
_new_fun_head = struct.Struct(">IB16sII")

_MISSING = object()
_ATOM_CACHE_MAX = 1 << 16

# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------

_STR_HINT = (
    "a Python str has two Erlang forms (binary or list of characters); pass bytes, or choose "
    "with mapping=Mapping(str_as='binary'|'charlist'|'atom') or a preset such as Mapping.TEXT"
)


def _encode_big(n: int) -> bytes:
    sign = 0
    if n < 0:
        sign = 1
        n = -n
    size = (n.bit_length() + 7) >> 3
    digits = n.to_bytes(size, "little")
    if size < 256:
        return bytes((SMALL_BIG, size, sign)) + digits
    return bytes((LARGE_BIG,)) + _u32.pack(size) + bytes((sign,)) + digits


def _encode_float_ext(value: float) -> bytes:
    return bytes((FLOAT,)) + f"{value:.20e}".encode("ascii").ljust(31, b"\0")


Encoder = Callable[..., bytes]
_encoders: dict[tuple[int, Mapping], Encoder] = {}


def _make_encoder(minor_version: int, mapping: Mapping) -> Encoder:
    atom_cache: dict[str, bytes] = {}
    pack_u16 = _u16.pack
    pack_u32 = _u32.pack
    pack_i32 = _i32.pack
    pack_f64 = _f64.pack
    pack_pid = _pid_tail.pack
    small_ints = [bytes((SMALL_INTEGER, i)) for i in range(256)]
    isfinite = math.isfinite
    latin1_atoms = minor_version < 2
    str_as = mapping.str_as
    bytes_like = mapping.bytes_like

    def atom_bytes(name: str) -> bytes:
        encoded = atom_cache.get(name)
        if encoded is not None:
            return encoded
        if len(name) > 255:
            raise EncodeError(f"an atom has at most 255 characters, not {len(name)}", name)
        encoded = None
        if latin1_atoms:
            try:
                raw = name.encode("latin-1")
                encoded = bytes((ATOM,)) + pack_u16(len(raw)) + raw
            except UnicodeEncodeError:
                pass
        if encoded is None:
            try:
                raw = name.encode("utf-8")
            except UnicodeEncodeError:
                raise EncodeError("an atom name must be valid Unicode (no lone surrogates)", name) from None
            if len(raw) < 256:
                encoded = bytes((SMALL_ATOM_UTF8, len(raw))) + raw
            else:
                encoded = bytes((ATOM_UTF8,)) + pack_u16(len(raw)) + raw
        if len(atom_cache) >= _ATOM_CACHE_MAX:
            atom_cache.clear()
        atom_cache[name] = encoded
        return encoded

    true_b = atom_bytes("true")
    false_b = atom_bytes("false")
    none_b = atom_bytes(mapping.none_atom) if mapping.none_atom is not None else None

    def binary(value: bytes) -> bytes:
        if len(value) > 0xFFFFFFFF:
            raise EncodeError("a binary has at most 2**32 - 1 bytes", value)
        return bytes((BINARY,)) + pack_u32(len(value))

    def byte_list(value: list[Any]) -> bytes | None:
        """The list as STRING_EXT when BEAM would write it so (0 < len <= 65535, all 0..255)."""
        if not isinstance(value[0], int):  # cheap refusal for lists of other things
            return None
        try:
            raw = bytes(value)
        except (TypeError, ValueError):
            return None
        if (0 in raw or 1 in raw) and bool in set(map(type, value)):
            return None  # True/False are atoms, not the bytes 1/0
        return bytes((STRING,)) + pack_u16(len(raw)) + raw

    def encode_str(value: str, out: list[bytes]) -> None:
        if str_as == "binary":
            try:
                raw = value.encode("utf-8")
            except UnicodeEncodeError:
                raise EncodeError("str is not valid Unicode (lone surrogate)", value) from None
            out.append(binary(raw))
            out.append(raw)
        elif str_as == "atom":
            out.append(atom_bytes(value))
        elif str_as == "charlist":
            if not value:
                out.append(b"j")
                return
            try:
                raw = value.encode("latin-1")
                if len(raw) <= MAX_STRING_LEN:
                    out.append(bytes((STRING,)) + pack_u16(len(raw)) + raw)
                    return
            except UnicodeEncodeError:
                pass
            out.append(bytes((LIST,)) + pack_u32(len(value)))
            for char in value:
                code = ord(char)
                out.append(small_ints[code] if code < 256 else bytes((INTEGER,)) + pack_i32(code))
            out.append(b"j")
        else:
            raise EncodeError(_STR_HINT, value)

    def locate(items: Sequence[Any], error: EncodeError) -> EncodeError:
        """Find which element of ``items`` failed (only on the error path)."""
        scratch: list[bytes] = []
        for index, item in enumerate(items):
            try:
                enc(item, scratch)
            except EncodeError as inner:
                return inner.at(index)
        return error

    pack_tag_i32 = _tag_i32.pack
    pack_tag_u32 = _tag_u32.pack
    atom_cache_get = atom_cache.get

    def enc_items(items: Any, out: list[bytes]) -> None:
        """Encode a run of terms; small ints, binaries and atoms inline (no call each)."""
        append = out.append
        for obj in items:
            t = type(obj)
            if t is int and -0x80000000 <= obj <= 0x7FFFFFFF:
                append(small_ints[obj] if 0 <= obj < 256 else pack_tag_i32(INTEGER, obj))
            elif t is bytes:
                append(pack_tag_u32(BINARY, len(obj)))
                append(obj)
            elif t is Atom:
                append(atom_cache_get(obj) or atom_bytes(obj))
            else:
                enc(obj, out)

    def enc(obj: Any, out: list[bytes]) -> None:
        t = type(obj)
        if t is int:
            if 0 <= obj < 256:
                out.append(small_ints[obj])
            elif -0x80000000 <= obj <= 0x7FFFFFFF:
                out.append(b"b" + pack_i32(obj))
            else:
                out.append(_encode_big(obj))
        elif t is Atom:
            out.append(atom_bytes(obj))
        elif t is bytes:
            out.append(b"m" + pack_u32(len(obj)))  # struct.error past 4 GiB: see encode_top
            out.append(obj)
        elif t is tuple:
            n = len(obj)
            out.append(bytes((SMALL_TUPLE, n)) if n < 256 else b"i" + pack_u32(n))
            try:
                enc_items(obj, out)
            except EncodeError as error:
                raise locate(obj, error) from None
        elif t is list:
            n = len(obj)
            if n == 0:
                out.append(b"j")
                return
            if n <= MAX_STRING_LEN:
                packed = byte_list(obj)
                if packed is not None:
                    out.append(packed)
                    return
            out.append(b"l" + pack_u32(n))
            try:
                enc_items(obj, out)
            except EncodeError as error:
                raise locate(obj, error) from None
            out.append(b"j")
        elif t is dict:
            out.append(b"t" + pack_u32(len(obj)))
            try:
                enc_items(chain.from_iterable(obj.items()), out)
            except EncodeError:
                encode_pairs(obj.items(), [])  # again, to say which key or value failed
                raise
        elif t is float:
            if not isfinite(obj):
                raise EncodeError("Erlang has no NaN or infinite floats", obj)
            out.append(b"F" + pack_f64(obj) if minor_version else _encode_float_ext(obj))
        elif t is bool:
            out.append(true_b if obj else false_b)
        elif obj is None:
            if none_b is None:
                raise EncodeError("None has no Erlang form: this mapping has no none_atom", obj)
            out.append(none_b)
        elif t is str:
            encode_str(obj, out)
        else:
            encode_other(obj, out)

    def encode_pairs(pairs: Any, out: list[bytes]) -> None:
        for key, value in pairs:
            try:
                enc(key, out)
            except EncodeError as error:
                raise error.at(("key", key)) from None
            try:
                enc(value, out)
            except EncodeError as error:
                raise error.at(("value", key)) from None

    def encode_other(obj: Any, out: list[bytes]) -> None:
        t = type(obj)
        if t is Pid:
            out.append(b"X" + atom_bytes(obj.node) + pack_pid(obj.id, obj.serial, obj.creation))
        elif t is Reference:
            out.append(b"Z" + pack_u16(len(obj.ids)) + atom_bytes(obj.node) + pack_u32(obj.creation))
            out.append(struct.pack(f">{len(obj.ids)}I", *obj.ids))
        elif t is Port:
            if obj.v4 or obj.id > 0xFFFFFFFF:
                out.append(b"x" + atom_bytes(obj.node) + _u64.pack(obj.id) + pack_u32(obj.creation))
            else:
                out.append(b"Y" + atom_bytes(obj.node) + pack_u32(obj.id) + pack_u32(obj.creation))
        elif t is BitString:
            data = obj.data
            out.append(b"M" + pack_u32(len(data)) + bytes((obj.tail_bits,)) + data)
        elif t is ImproperList:
            out.append(b"l" + pack_u32(len(obj.items)))
            try:
                for item in obj.items:
                    enc(item, out)
            except EncodeError as error:
                raise locate(obj.items, error) from None
            try:
                enc(obj.tail, out)
            except EncodeError as error:
                raise error.at("tail") from None
        elif t is Map:
            out.append(b"t" + pack_u32(len(obj)))
            encode_pairs(obj.items(), out)
        elif t is ExportFun:
            out.append(b"q" + atom_bytes(obj.module) + atom_bytes(obj.function) + small_ints[obj.arity])
        elif t is Fun:
            encode_fun(obj, out)
        elif t is LocalTerm:
            out.append(obj.raw)
        elif isinstance(obj, bool):
            enc(bool(obj), out)
        elif isinstance(obj, Atom):
            out.append(atom_bytes(obj))
        elif isinstance(obj, int):
            enc(int(obj), out)
        elif isinstance(obj, float):
            enc(float(obj), out)
        elif isinstance(obj, str):
            encode_str(str(obj), out)
        elif isinstance(obj, bytes) or (bytes_like and isinstance(obj, (bytearray, memoryview))):
            raw = bytes(obj)
            out.append(binary(raw))
            out.append(raw)
        elif isinstance(obj, tuple):
            enc(tuple(obj), out)
        elif isinstance(obj, list):
            enc(list(obj), out)
        elif isinstance(obj, dict):
            enc(dict(obj), out)
        else:
            hint = " (pass bytes, or use a mapping with bytes_like=True)" if isinstance(
                obj, (bytearray, memoryview)) else ""
            raise EncodeError(f"{t.__name__} has no Erlang form{hint}", obj)

    def encode_fun(fun: Fun, out: list[bytes]) -> None:
        body: list[bytes] = []
        if fun.arity is None:  # FUN_EXT: Pid, Module, Index, Uniq, FreeVars
            enc(fun.pid, body)
        body.append(atom_bytes(fun.module))
        enc(fun.old_index, body)
        enc(fun.old_uniq, body)
        if fun.arity is not None:  # NEW_FUN_EXT: Module, OldIndex, OldUniq, Pid, FreeVars
            enc(fun.pid, body)
        try:
            for item in fun.free_vars:
                enc(item, body)
        except EncodeError as error:
            raise locate(fun.free_vars, error).at("free_vars") from None
        rest = b"".join(body)
        if fun.arity is None:
            out.append(b"u" + pack_u32(len(fun.free_vars)) + rest)
            return
        head_size = _new_fun_head.size  # Size counts itself, not the tag
        assert fun.uniq is not None and fun.index is not None
        out.append(b"p" + _new_fun_head.pack(head_size + len(rest), fun.arity, fun.uniq, fun.index,
                                            len(fun.free_vars)))
        out.append(rest)

    def encode_top(obj: Any, prefix: bytes = b"") -> bytes:
        out: list[bytes] = [prefix]  # joined once: a large binary is copied a single time
        try:
            enc(obj, out)
        except RecursionError:
            raise EncodeError("the term is nested too deeply (or contains itself)", None) from None
        except struct.error:
            raise EncodeError("a binary, list, tuple or map is over 2**32 - 1 long", None) from None
        return b"".join(out)

    return encode_top


def _encoder(minor_version: int, mapping: Mapping) -> Encoder:
    key = (minor_version, mapping)
    found = _encoders.get(key)
    if found is None:
        found = _encoders[key] = _make_encoder(minor_version, mapping)
    return found


def encode_body(term: Any, minor_version: int = 2, mapping: Mapping = Mapping.EXACT) -> bytes:
    """The term's encoding without the version byte, as it follows a distribution header."""
    return _encoder(minor_version, mapping)(term)


def encode_dist(control: Any, control_mapping: Mapping, *payload: Any) -> bytes:
    """One distribution packet, ``<<Length:32, 131, 68, 0, Control, Payload>>`` (a header with no
    atom cache references); ``payload`` is ``term, mapping`` or nothing."""
    body = _encoder(2, control_mapping)(control)
    if payload:
        body += _encoder(2, payload[1])(payload[0])
    if len(body) + 3 > 0xFFFFFFFF:
        raise EncodeError("a distribution packet holds at most 2**32 - 1 bytes", None)
    return struct.pack(">I", len(body) + 3) + b"\x83D\x00" + body


def encode(term: Any, compressed: int | bool = False, minor_version: int = 2,
           mapping: Mapping = Mapping.EXACT) -> bytes:
    encoder = _encoder(minor_version, mapping)
    if compressed is False:
        return encoder(term, b"\x83")
    body = encoder(term)
    level = 6 if compressed is True else int(compressed)
    packed = zlib.compress(body, level)
    if len(packed) + 4 < len(body):  # BEAM keeps the compressed form only when it is smaller
        return b"\x83P" + _u32.pack(len(body)) + packed
    return b"\x83" + body


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

Decoder = Callable[[bytes, int], tuple[Any, int]]

# The cost model of Limits.max_memory (its docstring says what each stands for); _cterm.c has
# the same numbers.
TERM_COST = 32
CONTAINER_COST = 32
SLOT_COST = 8
MAP_PAIR_COST = 6 * SLOT_COST
STRUCT_COST = 96
LIST_ITEM_COST = TERM_COST + SLOT_COST  # an element: its own base cost and its slot
# written as literals on hot paths
assert CONTAINER_COST == 32 and LIST_ITEM_COST == 40 and MAP_PAIR_COST + 2 * TERM_COST == 112

# BEAM's FLOAT_EXT grammar (erts sys_chars_to_double): no spaces, underscores, "inf" or
# exponent without a fraction; a comma works as the decimal point.
_float_text = re.compile(rb"[+-]?[0-9]+[.,][0-9]+(?:[eE][+-]?[0-9]+)?").fullmatch


def _fail(reason: str, offset: int) -> DecodeError:
    return DecodeError(reason, offset)


def _make_decoder(
    mapping: Mapping, limits: Limits, atom_cache: AtomCache | None = None, local: bool = False
) -> Decoder:
    unpack_u16 = _u16.unpack_from
    unpack_u32 = _u32.unpack_from
    unpack_i32 = _i32.unpack_from
    unpack_f64 = _f64.unpack_from
    unpack_u64 = _u64.unpack_from
    unpack_pid = _pid_tail.unpack_from
    isfinite = math.isfinite
    max_depth = limits.max_depth
    binary_as_str = mapping.binary_as == "str"
    string_as_str = mapping.string_as == "str"
    atom_as_str = mapping.atom_as == "str"
    special: dict[str, Any] = {}
    if mapping.bool_atoms:
        special.update(true=True, false=False)
    if mapping.none_atom is not None:
        special[mapping.none_atom] = None
    latin1_cache: dict[bytes, Any] = {}
    utf8_cache: dict[bytes, Any] = {}
    raw_cache: dict[tuple[bytes, bool], Atom] = {}
    max_terms = limits.max_terms
    max_memory = limits.max_memory
    # What is left of this call's budget; reset by decode_top (a decoder serves one call at a
    # time: _run hands each call its own).
    terms_left = 0
    memory_left = 0
    top_terms = max_terms - 1
    top_memory = max_memory - TERM_COST

    def over(offset: int) -> DecodeError:
        if terms_left < 0:
            return _fail(f"over max_terms={max_terms} terms", offset)
        return _fail(f"over max_memory={max_memory} bytes of objects (estimated)", offset)

    def charge(terms: int, memory: int, offset: int) -> None:
        """Count terms and bytes about to be built; refuse them if they overrun the budget."""
        nonlocal terms_left, memory_left
        terms_left -= terms
        memory_left -= memory
        if terms_left < 0 or memory_left < 0:
            raise over(offset)

    def make_atom(raw: bytes, utf8: bool, offset: int) -> Any:
        try:
            name = raw.decode("utf-8") if utf8 else raw.decode("latin-1")
        except UnicodeDecodeError:
            raise _fail("atom name is not valid UTF-8", offset) from None
        if len(name) > 255:
            raise _fail(f"atom has {len(name)} characters (at most 255)", offset)
        value = special.get(name, _MISSING)
        if value is _MISSING:
            value = name if atom_as_str else Atom(name)
        cache = utf8_cache if utf8 else latin1_cache
        if len(cache) >= _ATOM_CACHE_MAX:
            cache.clear()
        cache[raw] = value
        return value

    def atom_at(data: bytes, pos: int, tag: int) -> tuple[Any, int]:
        """Decode an atom whose tag (at ``pos - 1``) is ``tag``; mapping applied."""
        if tag == SMALL_ATOM_UTF8 or tag == SMALL_ATOM:
            n = data[pos]
            pos += 1
        else:
            n = unpack_u16(data, pos)[0]
            pos += 2
        end = pos + n
        if end > len(data):
            raise _fail("atom runs past the end of the input", pos - 1)
        raw = data[pos:end]
        utf8 = tag == SMALL_ATOM_UTF8 or tag == ATOM_UTF8
        found = (utf8_cache if utf8 else latin1_cache).get(raw, _MISSING)
        if found is _MISSING:
            found = make_atom(raw, utf8, pos)
        return found, end

    def cached_atom(index: int, offset: int) -> Any:
        if atom_cache is None:
            raise _fail("ATOM_CACHE_REF outside a distribution message (no atom cache)", offset)
        try:
            return atom_cache[index]
        except (IndexError, KeyError):
            raise _fail(f"atom cache entry {index} is not set", offset) from None

    def plain_atom(data: bytes, pos: int) -> tuple[Any, int]:
        """An atom field of a structure (node, module): always an ``Atom``."""
        tag = data[pos]
        if tag in (SMALL_ATOM_UTF8, ATOM_UTF8, ATOM, SMALL_ATOM):
            if tag == SMALL_ATOM_UTF8 or tag == SMALL_ATOM:
                n = data[pos + 1]
                start = pos + 2
            else:
                n = unpack_u16(data, pos + 1)[0]
                start = pos + 3
            end = start + n
            if end > len(data):
                raise _fail("atom runs past the end of the input", pos)
            key = (data[start:end], tag in (SMALL_ATOM_UTF8, ATOM_UTF8))
            atom = raw_cache.get(key)
            if atom is None:
                try:
                    name = key[0].decode("utf-8" if key[1] else "latin-1")
                    atom = Atom(name)
                except (UnicodeDecodeError, ValueError):
                    raise _fail("invalid atom", pos) from None
                if len(raw_cache) >= _ATOM_CACHE_MAX:
                    raw_cache.clear()
                raw_cache[key] = atom
            return atom, end
        if tag == ATOM_CACHE_REF:
            value = cached_atom(data[pos + 1], pos)
            return (value if type(value) is Atom else Atom(str(value))), pos + 2
        if local:
            return dec(data, pos, max_depth - 1)
        raise _fail(f"expected an atom, found tag {tag}", pos)

    def small_int_field(data: bytes, pos: int) -> tuple[int, int]:
        tag = data[pos]
        if tag == SMALL_INTEGER:
            return data[pos + 1], pos + 2
        if tag == INTEGER:
            return unpack_i32(data, pos + 1)[0], pos + 5
        raise _fail(f"expected an integer, found tag {tag}", pos)

    def make_pid(node: Any, pid_id: int, serial: int, creation: int) -> Any:
        return trusted_pid(node, pid_id, serial, creation) if not local else None

    def list_to_str(items: list[Any]) -> Any:
        for code in items:
            if type(code) is not int or not 0 <= code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                return items
        return "".join(map(chr, items))

    def decode_items(data: bytes, pos: int, n: int, depth: int) -> tuple[list[Any], int]:
        """Decode ``n`` consecutive terms (already charged); the common leaves are read inline
        (no call each)."""
        nonlocal memory_left
        items: list[Any] = [None] * n
        for i in range(n):
            tag = data[pos]
            if tag == SMALL_INTEGER:
                items[i] = data[pos + 1]
                pos += 2
            elif tag == BINARY and not binary_as_str:
                size = unpack_u32(data, pos + 1)[0]
                end = pos + 5 + size
                if end > len(data):
                    raise _fail(f"binary of {size} bytes runs past the end of the input", pos)
                memory_left -= size
                if memory_left < 0:
                    raise over(pos)
                items[i] = data[pos + 5:end]
                pos = end
            elif tag == SMALL_ATOM_UTF8:
                end = pos + 2 + data[pos + 1]
                found = utf8_cache.get(data[pos + 2:end], _MISSING) if end <= len(data) else _MISSING
                if found is _MISSING:
                    items[i], pos = atom_at(data, pos + 1, tag)
                else:
                    items[i] = found
                    pos = end
            elif tag == INTEGER:
                items[i] = unpack_i32(data, pos + 1)[0]
                pos += 5
            elif tag == NEW_FLOAT:
                number = unpack_f64(data, pos + 1)[0]
                if not isfinite(number):
                    raise _fail("NaN or infinite float", pos)
                items[i] = number
                pos += 9
            else:
                items[i], pos = dec(data, pos, depth)
        return items, pos

    def dec(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
        nonlocal terms_left, memory_left  # charge() inlined on the common containers
        tag = data[pos]
        pos += 1
        if tag == SMALL_INTEGER:
            return data[pos], pos + 1
        if tag == BINARY:
            n = unpack_u32(data, pos)[0]
            pos += 4
            end = pos + n
            if end > len(data):
                raise _fail(f"binary of {n} bytes runs past the end of the input", pos - 5)
            memory_left -= n
            if memory_left < 0:
                raise over(pos - 5)
            raw = data[pos:end]
            if binary_as_str:
                try:
                    return raw.decode("utf-8"), end
                except UnicodeDecodeError:
                    pass
            return raw, end
        if tag == SMALL_ATOM_UTF8 or tag == ATOM or tag == ATOM_UTF8 or tag == SMALL_ATOM:
            return atom_at(data, pos, tag)
        if tag == SMALL_TUPLE or tag == LARGE_TUPLE:
            if tag == SMALL_TUPLE:
                n = data[pos]
                pos += 1
            else:
                n = unpack_u32(data, pos)[0]
                pos += 4
                if n > len(data) - pos:
                    raise _fail(f"tuple of {n} elements is longer than the input", pos - 5)
            depth += 1
            if depth > max_depth:
                raise _fail(f"nesting deeper than max_depth={max_depth}", pos - 1)
            terms_left -= n
            memory_left -= 32 + 40 * n  # CONTAINER_COST + LIST_ITEM_COST * n, as literals
            if terms_left < 0 or memory_left < 0:
                raise over(pos - 2 if tag == SMALL_TUPLE else pos - 5)
            items, pos = decode_items(data, pos, n, depth)
            return tuple(items), pos
        if tag == LIST:
            return decode_list(data, pos - 1, depth)
        if tag == NIL:
            charge(0, CONTAINER_COST, pos - 1)
            return [], pos
        if tag == STRING:
            n = unpack_u16(data, pos)[0]
            pos += 2
            end = pos + n
            if end > len(data):
                raise _fail(f"string of {n} bytes runs past the end of the input", pos - 3)
            terms_left -= n
            memory_left -= 32 + 40 * n  # CONTAINER_COST + LIST_ITEM_COST * n
            if terms_left < 0 or memory_left < 0:
                raise over(pos - 3)
            if string_as_str:
                return data[pos:end].decode("latin-1"), end
            return list(data[pos:end]), end
        if tag == INTEGER:
            return unpack_i32(data, pos)[0], pos + 4
        if tag == NEW_FLOAT:
            value = unpack_f64(data, pos)[0]
            if not isfinite(value):
                raise _fail("NaN or infinite float", pos - 1)
            return value, pos + 8
        if tag == MAP:
            return decode_map(data, pos, depth)
        if tag == SMALL_BIG or tag == LARGE_BIG:
            start = pos - 1
            if tag == SMALL_BIG:
                n = data[pos]
                pos += 1
            else:
                n = unpack_u32(data, pos)[0]
                pos += 4
            sign = data[pos]
            pos += 1
            end = pos + n
            if end > len(data):
                raise _fail(f"integer of {n} bytes runs past the end of the input", start)
            if sign > 1:
                raise _fail(f"bad integer sign byte {sign}", start)
            charge(0, n, start)
            number = int.from_bytes(data[pos:end], "little")
            return (-number if sign else number), end
        if tag == ATOM_CACHE_REF:
            value = cached_atom(data[pos], pos - 1)
            if type(value) is Atom or type(value) is str:
                found = special.get(value, _MISSING)
                if found is not _MISSING:
                    value = found
                elif atom_as_str:
                    value = str(value)
            return value, pos + 1
        return decode_rare(data, pos, tag, depth)

    def decode_list(data: bytes, start: int, depth: int) -> tuple[Any, int]:
        nonlocal terms_left, memory_left
        depth += 1
        if depth > max_depth:
            raise _fail(f"nesting deeper than max_depth={max_depth}", start)
        items: list[Any] = []
        pos = start
        while True:
            # One LIST_EXT (BEAM writes one per list; others may chain them through the tail).
            n = unpack_u32(data, pos + 1)[0]
            pos += 5
            if n > len(data) - pos:
                raise _fail(f"list of {n} elements is longer than the input", pos - 5)
            terms_left -= n
            memory_left -= 32 + 40 * n  # CONTAINER_COST + LIST_ITEM_COST * n
            if terms_left < 0 or memory_left < 0:
                raise over(pos - 5)
            chunk, pos = decode_items(data, pos, n, depth)
            if items:
                items.extend(chunk)
            else:
                items = chunk
            tag = data[pos]
            if tag == NIL:
                pos += 1
                break
            if tag == LIST:
                continue
            charge(1, TERM_COST, pos)
            tail, pos = dec(data, pos, depth)
            if type(tail) is list:  # a STRING_EXT or [] tail: still a proper list
                items.extend(tail)
                break
            if not items:
                return tail, pos
            return ImproperList(items, tail), pos
        if string_as_str and items:
            return list_to_str(items), pos
        return items, pos

    def decode_map(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
        nonlocal terms_left, memory_left
        n = unpack_u32(data, pos)[0]
        pos += 4
        if 2 * n > len(data) - pos:
            raise _fail(f"map of {n} pairs is longer than the input", pos - 5)
        depth += 1
        if depth > max_depth:
            raise _fail(f"nesting deeper than max_depth={max_depth}", pos - 5)
        terms_left -= 2 * n
        memory_left -= 32 + 112 * n  # CONTAINER_COST + (MAP_PAIR_COST + 2 * TERM_COST) * n
        if terms_left < 0 or memory_left < 0:
            raise over(pos - 5)
        flat, pos = decode_items(data, pos, 2 * n, depth)
        try:
            result: dict[Any, Any] = dict(zip(flat[0::2], flat[1::2], strict=True))
        except TypeError:
            return Map(zip(flat[0::2], flat[1::2], strict=True)), pos
        if len(result) != n:  # keys Python merges (1 and 1.0, 1 and true) stay apart
            return Map(zip(flat[0::2], flat[1::2], strict=True)), pos
        return result, pos

    def decode_rare(data: bytes, pos: int, tag: int, depth: int) -> tuple[Any, int]:
        start = pos - 1
        if tag in _STRUCT_TAGS:
            charge(0, STRUCT_COST, start)
        if tag == NEW_PID or tag == PID:
            node, pos = plain_atom(data, pos)
            if tag == NEW_PID:
                pid_id, serial, creation = unpack_pid(data, pos)
                return make_pid(node, pid_id, serial, creation), pos + 12
            pid_id, serial = unpack_u32(data, pos)[0], unpack_u32(data, pos + 4)[0]
            return make_pid(node, pid_id, serial, data[pos + 8]), pos + 9
        if tag == NEWER_REFERENCE or tag == NEW_REFERENCE:
            n = unpack_u16(data, pos)[0]
            if not 1 <= n <= 5:
                raise _fail(f"reference with {n} id words (1 to 5 allowed)", start)
            node, pos = plain_atom(data, pos + 2)
            if tag == NEWER_REFERENCE:
                creation = unpack_u32(data, pos)[0]
                pos += 4
            else:
                creation = data[pos]
                pos += 1
            ids = struct.unpack_from(f">{n}I", data, pos)
            return (None if local else trusted_reference(node, creation, ids)), pos + 4 * n
        if tag == REFERENCE:
            node, pos = plain_atom(data, pos)
            ref_id, creation = unpack_u32(data, pos)[0], data[pos + 4]
            return (None if local else Reference(node, creation, (ref_id,))), pos + 5
        if tag == NEW_PORT or tag == PORT or tag == V4_PORT:
            node, pos = plain_atom(data, pos)
            if tag == V4_PORT:
                port_id, creation, pos = unpack_u64(data, pos)[0], unpack_u32(data, pos + 8)[0], pos + 12
            elif tag == NEW_PORT:
                port_id, creation, pos = unpack_u32(data, pos)[0], unpack_u32(data, pos + 4)[0], pos + 8
            else:
                port_id, creation, pos = unpack_u32(data, pos)[0], data[pos + 4], pos + 5
            return (None if local else Port(node, port_id, creation, tag == V4_PORT)), pos
        if tag == BIT_BINARY:
            n = unpack_u32(data, pos)[0]
            bits = data[pos + 4]
            pos += 5
            end = pos + n
            if end > len(data):
                raise _fail(f"bitstring of {n} bytes runs past the end of the input", start)
            if not 1 <= bits <= 8 or (n == 0 and bits != 8):
                raise _fail(f"bitstring with {bits} bits in its last byte", start)
            charge(0, n, start)
            raw = data[pos:end]
            if bits == 8:
                return raw, end
            return BitString(raw, (n - 1) * 8 + bits), end
        if tag == FLOAT:
            end = pos + 31
            if end > len(data):
                raise _fail("float runs past the end of the input", start)
            nul = data.find(0, pos, end)
            text = data[pos:nul]
            if nul < 0 or _float_text(text) is None:  # BEAM reads past a field without a NUL
                raise _fail("malformed FLOAT_EXT text", start)
            number = float(text.replace(b",", b"."))
            if not isfinite(number):
                raise _fail("NaN or infinite float", start)
            return number, end
        if tag == EXPORT:
            module, pos = plain_atom(data, pos)
            function, pos = plain_atom(data, pos)
            if data[pos] != SMALL_INTEGER:
                raise _fail("export fun arity is not a small integer", pos)
            arity = data[pos + 1]
            return (None if local else ExportFun(module, function, arity)), pos + 2
        if tag == NEW_FUN:
            size, arity, uniq, index, num_free = _new_fun_head.unpack_from(data, pos)
            pos += _new_fun_head.size
            if size > len(data) - start:
                raise _fail("fun runs past the end of the input", start)
            return decode_fun_rest(data, pos, start, depth, num_free, arity, uniq, index, size)
        if tag == FUN:
            charge(1, TERM_COST, start)  # its pid, decoded first
            num_free = unpack_u32(data, pos)[0]
            pos += 4
            pid, pos = dec(data, pos, depth)
            return decode_fun_rest(data, pos, start, depth, num_free, None, None, None, None, pid)
        if tag == LOCAL:
            if local:
                raise _fail("LOCAL_EXT inside LOCAL_EXT", start)
            if pos + 4 > len(data):
                raise _fail("LOCAL_EXT runs past the end of the input", start)
            _, end = _take(*_pool(mapping, limits, True), data, pos + 4)
            if end > len(data):
                raise _fail("unexpected end of input", len(data))
            charge(0, end - start, start)
            return LocalTerm(data[start:end]), end
        if tag == COMPRESSED:
            raise _fail("a compressed term can only be the whole input", start)
        if tag == VERSION:
            raise _fail("version byte (131) inside a term", start)
        raise _fail(f"unknown tag {tag}", start)

    def decode_fun_rest(data: bytes, pos: int, start: int, depth: int, num_free: int,
                        arity: int | None, uniq: bytes | None, index: int | None,
                        size: int | None, pid: Any = _MISSING) -> tuple[Any, int]:
        if num_free > len(data) - pos:
            raise _fail(f"fun with {num_free} free variables is longer than the input", start)
        depth += 1
        if depth > max_depth:
            raise _fail(f"nesting deeper than max_depth={max_depth}", start)
        charge(num_free + (pid is _MISSING), CONTAINER_COST + LIST_ITEM_COST * num_free, start)
        module, pos = plain_atom(data, pos)
        old_index, pos = small_int_field(data, pos)
        old_uniq, pos = small_int_field(data, pos)
        if pid is _MISSING:
            pid, pos = dec(data, pos, depth)
        if not local and type(pid) is not Pid:
            raise _fail("the pid field of a fun is not a pid", start)
        free: list[Any] = [None] * num_free
        for i in range(num_free):
            free[i], pos = dec(data, pos, depth)
        if size is not None and pos - start - 1 != size:  # Size counts itself, not the tag
            raise _fail(f"fun size field says {size} bytes, found {pos - start - 1}", start)
        if local:
            return None, pos
        if arity is None:
            return Fun(module, old_index, old_uniq, pid, tuple(free), None, None, None), pos
        return Fun(module, old_index, old_uniq, pid, tuple(free), arity, uniq, index), pos

    def decode_top(data: bytes, pos: int) -> tuple[Any, int]:
        nonlocal terms_left, memory_left
        terms_left = top_terms  # the top term charged: charge(1, TERM_COST, pos) with no call
        memory_left = top_memory
        if top_memory < 0:
            raise over(pos)
        return dec(data, pos, 0)

    return decode_top


# Tags charged STRUCT_COST (their object and its int fields).
_STRUCT_TAGS = frozenset((NEW_PID, PID, NEWER_REFERENCE, NEW_REFERENCE, REFERENCE, NEW_PORT, PORT,
                          V4_PORT, EXPORT))

# A decoder keeps its call's budget in its closure, so one serves one call at a time: each set of
# options has a pool of idle ones (list pop and append are atomic), a new one made when it is
# empty, as when threads decode at once.
_POOL_SIZE = 4
_MAX_POOLS = 256
Pool = tuple[list[Decoder], Callable[[], Decoder]]
_pools: dict[tuple[Mapping, Limits, bool], Pool] = {}


def _pool(mapping: Mapping, limits: Limits, local: bool = False) -> Pool:
    key = (mapping, limits, local)
    found = _pools.get(key)
    if found is None:
        if len(_pools) >= _MAX_POOLS:  # options made per call must not grow this without end
            _pools.clear()
        found = _pools[key] = ([], partial(_make_decoder, mapping, limits, local=local))
    return found


def _local_decoder(mapping: Mapping, limits: Limits) -> Decoder:
    """The lenient walk that finds where a LOCAL_EXT ends (the compiled codec calls it too)."""
    idle, make = _pool(mapping, limits, True)

    def walk(data: bytes, pos: int) -> tuple[Any, int]:
        return _take(idle, make, data, pos)

    return walk


def _take(idle: list[Decoder], make: Callable[[], Decoder], data: bytes,
          pos: int) -> tuple[Any, int]:
    try:
        decoder = idle.pop()
    except IndexError:
        decoder = make()
    try:
        return decoder(data, pos)
    finally:
        if len(idle) < _POOL_SIZE:
            idle.append(decoder)


_last: tuple[object, object, Pool] = (None, None, ([], partial(_make_decoder, Mapping(), Limits())))


def _decoder(mapping: Mapping, limits: Limits, atom_cache: AtomCache | None) -> Pool:
    global _last
    if atom_cache is not None:  # the cache is bound into the decoder: one for this call
        return [], partial(_make_decoder, mapping, limits, atom_cache)
    last = _last  # callers mostly pass the same objects again: no dataclass hashing then
    if last[0] is mapping and last[1] is limits:
        return last[2]
    pool = _pool(mapping, limits)
    _last = (mapping, limits, pool)
    return pool


def _run(pool: Pool, data: bytes, pos: int, compressed: bool = False) -> tuple[Any, int]:
    idle, make = pool
    try:
        decoder = idle.pop()
    except IndexError:
        decoder = make()
    try:
        return decoder(data, pos)
    except DecodeError as error:
        if compressed:
            error.compressed = True
        raise
    except (IndexError, struct.error):
        raise DecodeError("unexpected end of input", len(data), compressed=compressed) from None
    except RecursionError:
        raise DecodeError("nesting too deep for the Python stack; lower max_depth", pos,
                          compressed=compressed) from None
    finally:
        if len(idle) < _POOL_SIZE:
            idle.append(decoder)


_LIMITS = Limits()


def decode_body(data: bytes, offset: int = 0, mapping: Mapping = Mapping.EXACT,
                limits: Limits = _LIMITS, atom_cache: AtomCache | None = None) -> tuple[Any, int]:
    """Decode one term without a version byte at ``offset``; return it and the offset after it."""
    if offset < 0:  # data[-1] would read from the end
        raise ValueError("offset must not be negative")
    if type(data) is not bytes:
        data = bytes(data)
    return _run(_decoder(mapping, limits, atom_cache), data, offset)


def _dist_args(name: str, pos: Any, max_frame: Any, memo: Any, payload_tags: Any) -> None:
    """The argument checks of both dist readers, in the compiled twin's order (``dist_args``):
    the same error for the same wrong call either way."""
    _ssize(pos)
    operator.index(max_frame)  # C reads it with ``__index__``, as a numpy int has it
    if not isinstance(memo, dict) or not isinstance(payload_tags, (set, frozenset)):
        raise TypeError(f"{name}() wants a dict memo and a set of tags")


def _ssize(value: Any) -> None:
    """What C's ``PyLong_AsSsize_t`` refuses."""
    if not isinstance(value, int):
        raise TypeError(f"an integer is required, not {type(value).__name__}")
    if not -(1 << 63) <= value < 1 << 63:
        raise OverflowError("Python int too large to convert to C ssize_t")


def _dist_buf(buf: Any) -> bytes | bytearray:
    """The buffer as the C side reads it (any buffer, else what ``bytes()`` makes of it)."""
    return buf if type(buf) is bytes or type(buf) is bytearray else bytes(buf)


def decode_dist(buf: bytes | bytearray, pos: int, max_frame: int, memo: dict[bytes, Any],
                control_mapping: Mapping, mapping: Mapping, limits: Limits, no_payload: Any,
                payload_tags: frozenset[int]) -> tuple[Any, Any, int, int] | bool | None:
    """The distribution packet at ``buf[pos:]`` in the usual form: a normal header whose atom
    cache references are all known (``memo``: header bytes -> atoms, kept by the protocol).
    ``(control, payload, frame_end, used_end)``; None when the packet is not all there yet;
    False when the protocol must read it itself (a tick, an oversized length, fragments, new
    atoms in the header, the pass-through form)."""
    _dist_args("decode_dist", pos, max_frame, memo, payload_tags)
    buf = _dist_buf(buf)
    if not 0 <= pos <= len(buf):
        raise ValueError("decode_dist(): pos outside the buffer")
    return _dist_packet(buf, pos, operator.index(max_frame), memo, control_mapping, mapping,
                        limits, no_payload, payload_tags)


def _dist_packet(buf: bytes | bytearray, pos: int, max_frame: int, memo: dict[bytes, Any],
                 control_mapping: Mapping, mapping: Mapping, limits: Limits, no_payload: Any,
                 payload_tags: frozenset[int]) -> tuple[Any, Any, int, int] | bool | None:
    """``decode_dist`` with its arguments checked (C's ``dist_packet``)."""
    if len(buf) - pos < 4:
        return None
    size = int.from_bytes(buf[pos:pos + 4], "big")
    if size < 3 or size > max_frame:
        return False
    if len(buf) - pos - 4 < size:
        return None
    frame = bytes(buf[pos + 4:pos + 4 + size])
    if frame[0] != 131 or frame[1] != 68:
        return False
    count = frame[2]
    if count == 0:
        refs: Any = []
        offset = 3
    else:
        offset = 3 + count // 2 + 1 + count
        refs = memo.get(frame[2:offset]) if offset <= size else None
        if refs is None:
            return False
    control, used = decode_body(frame, offset, control_mapping, limits, refs)
    payload = no_payload
    if type(control) is tuple and control and type(control[0]) is int and control[0] in payload_tags:
        payload, used = decode_body(frame, used, mapping, limits, refs)
    return control, payload, pos + 4 + size, pos + 4 + used


def decode_dist_batch(buf: bytes | bytearray, pos: int, max_frame: int, memo: dict[bytes, Any],
                      control_mapping: Mapping, mapping: Mapping, limits: Limits, no_payload: Any,
                      payload_tags: frozenset[int], out: list[tuple[Any, Any]],
                      max_count: int) -> tuple[int, int]:
    """The packets of the usual form from ``buf[pos:]`` on (``decode_dist``), each appended to
    ``out`` as ``(control, payload)``, at most ``max_count``; it stops before the first that is
    not all there or that the protocol must read itself. ``(end, trailing)``: where the packets
    taken end, and how many had bytes after their terms. A malformed packet raises only when it
    is the first (it raises again on the next call, after the packets before it are applied)."""
    _ssize(max_count)
    _dist_args("decode_dist_batch", pos, max_frame, memo, payload_tags)
    if type(out) is not list:
        raise TypeError("decode_dist_batch() wants a list to append to")
    buf = _dist_buf(buf)
    if not 0 <= pos <= len(buf):
        raise ValueError("decode_dist_batch(): pos outside the buffer")
    frame_limit = operator.index(max_frame)
    taken = trailing = 0
    while taken < max_count:
        try:
            got = _dist_packet(buf, pos, frame_limit, memo, control_mapping, mapping, limits,
                               no_payload, payload_tags)
        except Exception:
            if taken == 0:
                raise
            break
        if not isinstance(got, tuple):
            break
        control, payload, end, used = got
        out.append((control, payload))
        trailing += used != end
        pos = end
        taken += 1
    return pos, trailing


def decode(data: bytes, mapping: Mapping = Mapping.EXACT, limits: Limits = _LIMITS,
           atom_cache: AtomCache | None = None, used: bool = False) -> Any:
    if type(data) is not bytes:
        data = bytes(data)
    size = len(data)
    if size > limits.max_size:
        raise DecodeError(f"input of {size} bytes is over max_size={limits.max_size}", 0)
    if size == 0:
        raise DecodeError("empty input", 0)
    if data[0] != VERSION:
        raise DecodeError(f"not External Term Format: first byte is {data[0]}, not 131", 0)
    decoder = _decoder(mapping, limits, atom_cache)
    if size > 1 and data[1] == COMPRESSED:
        inner, consumed = _inflate(data, limits)
        term, end = _run(decoder, inner, 0, compressed=True)
        if end != len(inner):
            raise DecodeError("trailing bytes inside the compressed term", end, compressed=True)
        end = consumed
    else:
        term, end = _run(decoder, data, 1)
    if used:
        return term, end
    if end != size:
        raise DecodeError(f"{size - end} trailing bytes after the term", end)
    return term


def _inflate(data: bytes, limits: Limits) -> tuple[bytes, int]:
    if len(data) < 6:
        raise DecodeError("compressed term header runs past the end of the input", len(data))
    expected = _u32.unpack_from(data, 2)[0]
    if expected > limits.max_decompressed_size:
        raise DecodeError(
            f"compressed term claims {expected} bytes, over max_decompressed_size="
            f"{limits.max_decompressed_size}", 2)
    inflater = zlib.decompressobj()
    try:
        inner = inflater.decompress(memoryview(data)[6:], expected + 1)
    except zlib.error as error:
        raise DecodeError(f"bad zlib data: {error}", 6) from None
    if len(inner) != expected or not inflater.eof:
        raise DecodeError(
            f"compressed term inflates to {'more' if len(inner) > expected else 'fewer'} bytes "
            f"than the {expected} its header says", 6)
    return inner, len(data) - len(inflater.unused_data)
