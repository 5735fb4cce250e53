"""Python types for the Erlang values that have no natural Python twin.

Each is small, immutable where Erlang's value is, validates in its constructor, and compares by
value, so a decoded term equals the one that was encoded. Integers, floats, binaries (``bytes``),
tuples, lists and maps (``dict``) use Python's own types; see ``beambridge.term`` for the mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Atom",
    "BitString",
    "ExportFun",
    "Fun",
    "ImproperList",
    "LocalTerm",
    "Map",
    "Pid",
    "Port",
    "Reference",
]

_U32 = 1 << 32
_U64 = 1 << 64


class Atom(str):
    """An Erlang atom. A ``str`` subclass, so ``Atom("ok") == "ok"``; its type keeps it an atom.

    The atoms ``true``/``false`` decode to Python's ``bool`` and ``undefined`` to ``None`` under
    the default mapping; ``Atom("true")`` still encodes as the atom ``true``.
    """

    __slots__ = ()

    def __new__(cls, name: str) -> Atom:
        if len(name) > 255:
            raise ValueError(f"an atom has at most 255 characters, not {len(name)}")
        return super().__new__(cls, name)

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Atom, (str(self),))


def _check_u(value: int, limit: int, what: str) -> None:
    if type(value) is not int or not 0 <= value < limit:
        raise ValueError(f"{what} must be an int in [0, {limit}), not {value!r}")


def _check_node(node: Any) -> None:
    if not isinstance(node, Atom):
        raise ValueError(f"node must be an Atom, not {node!r}")


@dataclass(frozen=True, slots=True)
class Pid:
    """An Erlang process identifier: ``<node.id.serial>`` plus the node's creation."""

    node: Atom
    id: int
    serial: int = 0
    creation: int = 0

    def __post_init__(self) -> None:
        _check_node(self.node)
        _check_u(self.id, _U32, "Pid.id")
        _check_u(self.serial, _U32, "Pid.serial")
        _check_u(self.creation, _U32, "Pid.creation")

    # Hand-written equality and hash: pids and references are dictionary keys and are compared
    # on every message routed; the generated methods build two tuples per comparison.
    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Pid:
            return NotImplemented
        return (self.id == other.id and self.node == other.node
                and self.serial == other.serial
                and self.creation == other.creation)

    def __hash__(self) -> int:
        return hash(self.node) ^ (self.id * 0x9E3779B1 + self.serial * 0x85EBCA77 + self.creation)

    def __repr__(self) -> str:
        return f"Pid({str(self.node)!r}, {self.id}, {self.serial}, {self.creation})"


@dataclass(frozen=True, slots=True)
class Port:
    """An Erlang port identifier (64-bit id since OTP 24).

    ``v4`` is only the wire form to write: OTP 26+ always writes ``V4_PORT_EXT``, OTP 25 writes
    ``NEW_PORT_EXT`` for 32-bit ids; a decoded port keeps the form it came in, so it re-encodes to
    the same bytes. It takes no part in equality.
    """

    node: Atom
    id: int
    creation: int = 0
    v4: bool = field(default=True, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_node(self.node)
        _check_u(self.id, _U64, "Port.id")
        _check_u(self.creation, _U32, "Port.creation")

    def __repr__(self) -> str:
        return f"Port({str(self.node)!r}, {self.id}, {self.creation})"


@dataclass(frozen=True, slots=True)
class Reference:
    """An Erlang reference: the node, its creation and 1 to 5 32-bit id words."""

    node: Atom
    creation: int
    ids: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_node(self.node)
        _check_u(self.creation, _U32, "Reference.creation")
        if type(self.ids) is not tuple or not 1 <= len(self.ids) <= 5:
            raise ValueError(f"Reference.ids must be a tuple of 1 to 5 ints, not {self.ids!r}")
        for word in self.ids:
            _check_u(word, _U32, "Reference id word")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Reference:
            return NotImplemented
        return (self.ids == other.ids and self.node == other.node
                and self.creation == other.creation)

    def __hash__(self) -> int:
        return hash(self.ids) ^ hash(self.node) ^ self.creation

    def __repr__(self) -> str:
        return f"Reference({str(self.node)!r}, {self.creation}, {self.ids!r})"


@dataclass(frozen=True, slots=True)
class ExportFun:
    """An external fun, ``fun Module:Function/Arity``."""

    module: Atom
    function: Atom
    arity: int

    def __post_init__(self) -> None:
        if not isinstance(self.module, Atom) or not isinstance(self.function, Atom):
            raise ValueError("ExportFun module and function must be Atoms")
        _check_u(self.arity, 256, "ExportFun.arity")

    def __repr__(self) -> str:
        return f"ExportFun({str(self.module)!r}, {str(self.function)!r}, {self.arity})"


@dataclass(frozen=True, slots=True)
class Fun:
    """A local fun (closure), kept exactly as Erlang encoded it so it can be sent back.

    Python cannot call it; it is a value to hold and return. ``arity``/``uniq``/``index`` are
    ``None`` only for the pre-R15 ``FUN_EXT`` form, which is decoded but never produced by BEAM.
    """

    module: Atom
    old_index: int
    old_uniq: int
    pid: Pid
    free_vars: tuple[Any, ...] = ()
    arity: int | None = 0
    uniq: bytes | None = bytes(16)
    index: int | None = 0

    def __post_init__(self) -> None:
        if not isinstance(self.module, Atom):
            raise ValueError("Fun.module must be an Atom")
        if not isinstance(self.pid, Pid):
            raise ValueError("Fun.pid must be a Pid")
        if type(self.free_vars) is not tuple:
            raise ValueError("Fun.free_vars must be a tuple")
        if type(self.old_index) is not int or type(self.old_uniq) is not int:
            raise ValueError("Fun.old_index and Fun.old_uniq must be ints")
        if self.arity is None:
            if self.uniq is not None or self.index is not None:
                raise ValueError("an old-style Fun (arity None) has no uniq nor index")
            return
        _check_u(self.arity, 256, "Fun.arity")
        _check_u(self.index if self.index is not None else -1, _U32, "Fun.index")
        if type(self.uniq) is not bytes or len(self.uniq) != 16:
            raise ValueError("Fun.uniq must be 16 bytes")


class BitString:
    """A bitstring whose length is not a whole number of bytes, like ``<<1:3>>``.

    ``data`` holds ``ceil(bit_size / 8)`` bytes, the bits left-aligned in the last one; the unused
    low bits are cleared, as BEAM does. Whole-byte bitstrings are binaries, i.e. ``bytes``.
    """

    __slots__ = ("_bit_size", "_data")

    def __init__(self, data: bytes, bit_size: int) -> None:
        if type(data) is not bytes:
            raise ValueError("BitString data must be bytes")
        if type(bit_size) is not int or bit_size % 8 == 0 or bit_size < 0:
            raise ValueError(
                f"BitString.bit_size must not be a multiple of 8 (use bytes), not {bit_size!r}"
            )
        if len(data) != (bit_size + 7) // 8:
            raise ValueError(f"BitString of {bit_size} bits needs {(bit_size + 7) // 8} bytes")
        tail_bits = bit_size % 8
        last = data[-1] & (0xFF << (8 - tail_bits)) & 0xFF
        if last != data[-1]:
            data = data[:-1] + bytes((last,))
        self._data = data
        self._bit_size = bit_size

    @property
    def data(self) -> bytes:
        return self._data

    @property
    def bit_size(self) -> int:
        return self._bit_size

    @property
    def tail_bits(self) -> int:
        """How many bits of the last byte are used (1..7)."""
        return self._bit_size % 8

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BitString):
            return NotImplemented
        return self._bit_size == other._bit_size and self._data == other._data

    def __hash__(self) -> int:
        return hash((BitString, self._data, self._bit_size))

    def __repr__(self) -> str:
        return f"BitString({self._data!r}, {self._bit_size})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (BitString, (self._data, self._bit_size))


class ImproperList:
    """A list whose tail is not ``[]``, like ``[1, 2 | three]``; ``items`` is never empty."""

    __slots__ = ("_items", "_tail")

    def __init__(self, items: Iterable[Any], tail: Any) -> None:
        items = tuple(items)
        if not items:
            raise ValueError("an improper list has at least one element before its tail")
        if isinstance(tail, (list, ImproperList)):
            raise ValueError("the tail of an ImproperList cannot itself be a list")
        self._items = items
        self._tail = tail

    @property
    def items(self) -> tuple[Any, ...]:
        return self._items

    @property
    def tail(self) -> Any:
        return self._tail

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImproperList):
            return NotImplemented
        return self._items == other._items and self._tail == other._tail

    def __hash__(self) -> int:
        return hash((ImproperList, self._items, self._tail))

    def __repr__(self) -> str:
        return f"ImproperList({list(self._items)!r}, {self._tail!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ImproperList, (self._items, self._tail))


class Map:
    """An Erlang map that a ``dict`` cannot hold: a key Python cannot hash (a list, a map), or keys
    Python thinks equal that Erlang does not (``1`` and ``1.0``, ``1`` and ``true``).

    Decoding returns a ``dict`` whenever one can hold the map, and a ``Map`` otherwise. Pairs keep
    their order, so the map re-encodes to the same bytes; equality ignores order, as Erlang's does.
    """

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[tuple[Any, Any]] = ()) -> None:
        checked = []
        for pair in pairs:
            if type(pair) is not tuple or len(pair) != 2:
                raise ValueError(f"Map pairs are (key, value) tuples, not {pair!r}")
            checked.append(pair)
        self._pairs: tuple[tuple[Any, Any], ...] = tuple(checked)

    def items(self) -> tuple[tuple[Any, Any], ...]:
        return self._pairs

    def keys(self) -> list[Any]:
        return [k for k, _ in self._pairs]

    def values(self) -> list[Any]:
        return [v for _, v in self._pairs]

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[Any]:
        return (k for k, _ in self._pairs)

    def __getitem__(self, key: Any) -> Any:
        for k, v in self._pairs:
            if _same(k, key):
                return v
        raise KeyError(key)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: Any) -> bool:
        return any(_same(k, key) for k, _ in self._pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Map):
            return NotImplemented
        if len(self._pairs) != len(other._pairs):
            return False
        remaining = list(other._pairs)
        for k, v in self._pairs:
            for i, (k2, v2) in enumerate(remaining):
                if _same(k, k2) and v == v2:
                    del remaining[i]
                    break
            else:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Map({list(self._pairs)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Map, (self._pairs,))


def _same(a: Any, b: Any) -> bool:
    """Key equality as Erlang sees it: equal values of the same type (``1`` is not ``1.0``)."""
    return type(a) is type(b) and a == b


@dataclass(frozen=True, slots=True)
class LocalTerm:
    """A term encoded with ``term_to_binary(T, [local])`` (``LOCAL_EXT``): only the node that made
    it can decode it, so it is kept as opaque bytes (tag included) and re-encodes to them."""

    raw: bytes

    def __post_init__(self) -> None:
        if type(self.raw) is not bytes or not self.raw or self.raw[0] != 121:
            raise ValueError("LocalTerm.raw must be bytes starting with the LOCAL_EXT tag (121)")


# Decoders build these from fields they have already range-checked by construction (a u32 read
# from the wire is a u32): skipping the constructor's validation halves the cost of a pid.
_new = object.__new__
_set = object.__setattr__


def trusted_pid(node: Atom, pid_id: int, serial: int, creation: int) -> Pid:
    pid = _new(Pid)
    _set(pid, "node", node)
    _set(pid, "id", pid_id)
    _set(pid, "serial", serial)
    _set(pid, "creation", creation)
    return pid


def trusted_reference(node: Atom, creation: int, ids: tuple[int, ...]) -> Reference:
    ref = _new(Reference)
    _set(ref, "node", node)
    _set(ref, "creation", creation)
    _set(ref, "ids", ids)
    return ref
