"""beambridge: Python programs as first-class members of Erlang/OTP clusters.

The public surface is what ``__all__`` lists; everything else is private and may change.
"""

from ._errors import (
    ConnectionLost,
    DecodeError,
    EncodeError,
    Error,
    ProtocolError,
    RemoteError,
    Timeout,
    TransportError,
    UsageError,
)
from .term import (
    Atom,
    BitString,
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

__version__ = "0.1.0"

__all__ = [
    "Atom",
    "BitString",
    "ConnectionLost",
    "DecodeError",
    "EncodeError",
    "Error",
    "ExportFun",
    "Fun",
    "ImproperList",
    "Limits",
    "LocalTerm",
    "Map",
    "Mapping",
    "Pid",
    "Port",
    "ProtocolError",
    "Reference",
    "RemoteError",
    "Timeout",
    "TransportError",
    "UsageError",
    "__version__",
    "binary_to_term",
    "term_to_binary",
]
