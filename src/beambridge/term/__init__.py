"""The External Term Format: Erlang's binary form of terms, on the wire and in files.

Default mapping (exact both ways):

==========================  ====================================================
Erlang                      Python
==========================  ====================================================
integer                     ``int``
float                       ``float``
atom ``true`` / ``false``   ``True`` / ``False``
atom ``undefined``          ``None``
any other atom              ``Atom`` (a ``str`` subclass)
binary                      ``bytes``
bitstring (not whole bytes) ``BitString``
tuple                       ``tuple``
list, string (``"abc"``)    ``list`` (a string is a list of integers)
improper list ``[a | b]``   ``ImproperList``
map                         ``dict``, or ``Map`` when a dict cannot hold its keys
pid, port, reference        ``Pid``, ``Port``, ``Reference``
fun ``M:F/A``, closure      ``ExportFun``, ``Fun``
``term_to_binary(T,[local])`` ``LocalTerm`` (opaque bytes)
==========================  ====================================================

Python ``str`` is refused by default (Erlang has two string forms); see ``Mapping``.
Subclasses of ``int``, ``float``, ``bytes``, ``tuple``, ``list`` and ``dict`` encode as their base.
"""

from ._api import IMPLEMENTATION, binary_to_term, decode_body, encode_body, term_to_binary
from ._options import Limits, Mapping
from ._syntax import TermSyntaxError, format_term, parse_term
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
)

__all__ = [
    "IMPLEMENTATION",
    "Atom",
    "BitString",
    "ExportFun",
    "Fun",
    "ImproperList",
    "Limits",
    "LocalTerm",
    "Map",
    "Mapping",
    "Pid",
    "Port",
    "Reference",
    "TermSyntaxError",
    "binary_to_term",
    "decode_body",
    "encode_body",
    "format_term",
    "parse_term",
    "term_to_binary",
]
