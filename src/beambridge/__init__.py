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
from .node import BlockingMailbox, BlockingNode, Mailbox, Node
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
    TermSyntaxError,
    binary_to_term,
    format_term,
    parse_term,
    term_to_binary,
)

__version__ = "0.1.0"

__all__ = [
    "Atom",
    "BitString",
    "BlockingMailbox",
    "BlockingNode",
    "ConnectionLost",
    "DecodeError",
    "EncodeError",
    "Error",
    "ExportFun",
    "Fun",
    "ImproperList",
    "Limits",
    "LocalTerm",
    "Mailbox",
    "Map",
    "Mapping",
    "Node",
    "Pid",
    "Port",
    "ProtocolError",
    "Reference",
    "RemoteError",
    "TermSyntaxError",
    "Timeout",
    "TransportError",
    "UsageError",
    "__version__",
    "binary_to_term",
    "format_term",
    "parse_term",
    "term_to_binary",
]
