"""The codec's public functions, and the choice between its implementations.

Both implementations take the same arguments and raise the same errors; the compiled one (when
built) is used unless ``BEAMBRIDGE_PURE_PYTHON=1`` is set, and ``IMPLEMENTATION`` says which ran.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .._errors import UsageError
from .._twins import compiled
from . import _pure
from ._options import Limits, Mapping

__all__ = ["IMPLEMENTATION", "binary_to_term", "decode_body", "encode_body", "term_to_binary"]

_DEFAULT_LIMITS = Limits()


_cterm = compiled("beambridge.term._cterm")
_impl: ModuleType = _pure if _cterm is None else _cterm
IMPLEMENTATION = "pure" if _cterm is None else "compiled"
# Bound once: on the compiled codec the wrapper's own lookups are a visible share of a small call.
_encode, _decode = _impl.encode, _impl.decode
_encode_body, _decode_body = _impl.encode_body, _impl.decode_body
#: one distribution packet each way (``protocol``'s framing of each message), and the packets
#: of a read at once
_encode_dist, _decode_dist = _impl.encode_dist, _impl.decode_dist
_decode_dist_batch = _impl.decode_dist_batch
_EXACT = Mapping.EXACT


def _check_encode_options(compressed: bool | int, minor_version: int) -> None:
    if minor_version not in (0, 1, 2):
        raise UsageError(f"minor_version must be 0, 1 or 2, not {minor_version!r}")
    if compressed is not False and compressed is not True and (
        type(compressed) is not int or not 0 <= compressed <= 9
    ):
        raise UsageError(f"compressed must be False, True or a zlib level 0..9, not {compressed!r}")


def term_to_binary(term: Any, *, compressed: bool | int = False, minor_version: int = 2,
                   mapping: Mapping | None = None) -> bytes:
    """Encode ``term`` in the External Term Format, byte for byte as BEAM's ``term_to_binary/2``.

    ``compressed`` is ``True`` (zlib level 6) or a level 0..9; as in BEAM, the compressed form is
    written only when it is smaller. ``minor_version`` 2 (default, as OTP 26+) writes UTF-8 atoms,
    1 (OTP 25's default) writes Latin-1 atoms as ``ATOM_EXT``, 0 also writes the old text floats.
    Raises ``EncodeError`` naming the path to a value that has no Erlang form.
    """
    if compressed is not False or minor_version != 2:  # the defaults need no check
        _check_encode_options(compressed, minor_version)
    return _encode(term, compressed, minor_version, mapping or _EXACT)  # type: ignore[no-any-return]


def binary_to_term(data: bytes | bytearray | memoryview, *, mapping: Mapping | None = None,
                   limits: Limits | None = None, atom_cache: Any = None, used: bool = False) -> Any:
    """Decode External Term Format ``data``; raises ``DecodeError`` (with the offset) on bad input.

    With ``used=True``, trailing bytes are allowed and ``(term, bytes_used)`` is returned, like
    BEAM's ``binary_to_term(B, [used])``; otherwise trailing bytes are an error.
    ``atom_cache`` resolves ``ATOM_CACHE_REF`` (index to atom), as the distribution layer hands in.
    """
    return _decode(data, mapping or _EXACT, limits or _DEFAULT_LIMITS, atom_cache, used)


def encode_body(term: Any, *, minor_version: int = 2, mapping: Mapping | None = None) -> bytes:
    """The encoding of ``term`` without the leading version byte, as terms follow a distribution
    header."""
    if minor_version != 2:
        _check_encode_options(False, minor_version)
    return _encode_body(term, minor_version, mapping or _EXACT)  # type: ignore[no-any-return]


def decode_body(data: bytes | bytearray | memoryview, offset: int = 0, *,
                mapping: Mapping | None = None, limits: Limits | None = None,
                atom_cache: Any = None) -> tuple[Any, int]:
    """Decode one term that has no version byte, starting at ``offset``; return ``(term, end)``."""
    return _decode_body(  # type: ignore[no-any-return]
        data, offset, mapping or _EXACT, limits or _DEFAULT_LIMITS, atom_cache)
