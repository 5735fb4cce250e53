"""How Erlang values map to Python ones (``Mapping``) and what the decoder refuses (``Limits``).

The default mapping is exact: decoding then re-encoding gives the bytes BEAM wrote, and encoding
then decoding gives back an equal value of the same type. Python's ``str`` is the one thing it
refuses, because Erlang has two string forms (binaries and lists of characters) and guessing
breaks exactness; choose one with ``str_as`` or a preset (``Mapping.TEXT``, ``Mapping.CHARLIST``,
``Mapping.UWSGI``), or pass ``bytes``. Presets other than the default trade exactness for
convenience, as their descriptions say.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

__all__ = ["Limits", "Mapping"]


@dataclass(frozen=True, slots=True)
class Mapping:
    """Choices where people disagree on how Erlang and Python values correspond.

    Decoding:
      ``binary_as``: ``"bytes"`` (exact) or ``"str"`` (UTF-8 text; binaries that are not valid
      UTF-8 stay ``bytes``).
      ``string_as``: Erlang strings (lists of integers, ``STRING_EXT``) as ``"list"`` (exact) or
      ``"str"`` (a non-empty proper list of code points becomes ``str``).
      ``atom_as``: ``"Atom"`` (exact) or ``"str"`` (the old uWSGI plugin's mapping).
      ``bool_atoms``: atoms ``true``/``false`` as Python's ``True``/``False``.
      ``none_atom``: the atom that is Python's ``None`` (``"undefined"``, ``"nil"``), or ``None``
      for no such atom (then Python's ``None`` cannot be encoded).
    Encoding:
      ``str_as``: what a Python ``str`` becomes: ``"error"`` (refused, exact), ``"binary"``
      (UTF-8), ``"charlist"`` (a list of code points) or ``"atom"`` (the uWSGI plugin's mapping).
      ``bytes_like``: accept ``bytearray`` and ``memoryview`` as binaries.
    """

    binary_as: Literal["bytes", "str"] = "bytes"
    string_as: Literal["list", "str"] = "list"
    atom_as: Literal["Atom", "str"] = "Atom"
    bool_atoms: bool = True
    none_atom: str | None = "undefined"
    str_as: Literal["error", "binary", "charlist", "atom"] = "error"
    bytes_like: bool = False

    EXACT: ClassVar[Mapping]
    TEXT: ClassVar[Mapping]
    CHARLIST: ClassVar[Mapping]
    UWSGI: ClassVar[Mapping]

    def __post_init__(self) -> None:
        _check_choice("binary_as", self.binary_as, ("bytes", "str"))
        _check_choice("string_as", self.string_as, ("list", "str"))
        _check_choice("atom_as", self.atom_as, ("Atom", "str"))
        _check_choice("str_as", self.str_as, ("error", "binary", "charlist", "atom"))
        if self.none_atom is not None and (
            type(self.none_atom) is not str or self.none_atom in ("true", "false")
        ):
            raise ValueError(f"none_atom must be an atom name or None, not {self.none_atom!r}")

    def replace(self, **changes: Any) -> Mapping:
        """A copy with some choices changed."""
        return replace(self, **changes)

    @property
    def exact(self) -> bool:
        """Whether this mapping round-trips exactly both ways."""
        return (self.binary_as, self.string_as, self.atom_as, self.str_as, self.bytes_like) == (
            "bytes", "list", "Atom", "error", False,
        )


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


Mapping.EXACT = Mapping()
#: Elixir-style text: ``str`` is a UTF-8 binary and binaries decode as ``str`` when they are
#: valid UTF-8. Not exact: ``bytes`` that hold UTF-8 come back as ``str``.
Mapping.TEXT = Mapping(binary_as="str", str_as="binary", bytes_like=True)
#: Erlang-style text: ``str`` is a list of characters and such lists decode as ``str``. Not exact:
#: a list of small integers comes back as ``str``.
Mapping.CHARLIST = Mapping(string_as="str", str_as="charlist", bytes_like=True)
#: The old uWSGI Erlang plugin: ``str`` is an atom and atoms decode as plain ``str``.
Mapping.UWSGI = Mapping(atom_as="str", str_as="atom", bytes_like=True)


@dataclass(frozen=True, slots=True)
class Limits:
    """What the decoder refuses, checked before anything is allocated.

    ``max_depth``: nesting of tuples, lists, maps and funs (bounded by Python's stack in the
    pure-Python codec). ``max_size``: bytes of input. ``max_decompressed_size``: bytes a
    compressed term may expand to (a zlib bomb is refused, not inflated).

    Bytes of input do not bound the work: one byte (``[]``) becomes a 56-byte list, so a 15 KB
    compressed message can ask for a gigabyte. Two limits bound what one decode call builds,
    charged when a term's header is read, before its object is allocated:

    ``max_terms``: terms built, nested ones included (a container charges for all its elements
    when its header is read, so a list announcing 16M elements is refused at once).
    ``max_memory``: an estimate, in bytes, of the Python objects built: every term 32 (a number,
    or an object's header), plus for a tuple, list (``[]`` and each ``STRING_EXT`` too), map or
    fun 32 and 8 per slot (a map has 6 per pair, a fun one per free variable), for a binary,
    bitstring, big integer or ``LOCAL_EXT`` its length in bytes, and for a pid, port, reference
    or export fun 96. This is a little above what CPython allocates (``[]`` is 56 bytes,
    ``(a, b)`` 56, a dict ~40 per entry; small ints and atoms are shared, yet charged).

    The defaults bound one call to about a gigabyte and a few seconds of CPU, and still pass
    a 100 MB binary or millions of small tuples; the distribution layer passes tighter ones.
    """

    max_depth: int = 256
    max_size: int = 1 << 32
    max_decompressed_size: int = 64 << 20
    max_terms: int = 1 << 24
    max_memory: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_size", "max_decompressed_size", "max_terms", "max_memory"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
