"""A Python process as a real Erlang node: ``Node`` (asyncio) and ``BlockingNode`` (threads).

Both speak Erlang distribution (``beambridge.protocol``) to OTP 25+ nodes: calls both ways (``rpc``
to Erlang; ``expose`` for ``rpc:call``/``erpc:call``/``erl_call`` into Python), messages,
mailboxes with links and monitors, ``gen_call``/``gen_cast``, ``ping``; over TCP or, with
``tls=`` (an Erlang ``ssl_dist_optfile``), TLS as ``-proto_dist inet_tls``.

Every exception a node call raises can be imported from here (the families ``Timeout``,
``ConnectionLost``, ``RemoteError`` and ``TransportError`` are the package's own, re-exported so
one import line covers a node user's ``except`` clauses).
"""

from .._errors import ConnectionLost, RemoteError, Timeout, TransportError
from ._blocking import BlockingMailbox, BlockingNode, epmd_names
from ._errors import (
    BadCookie,
    EpmdUnavailable,
    ErlangError,
    ErlangExit,
    ErlangThrow,
    HandshakeFailed,
    MailboxClosed,
    NameTaken,
    NoConnection,
)
from ._mailbox import Mailbox
from ._node import Node, default_cookie, full_node_name
from ._tls import TlsConfig, TlsConfigError, TlsHandshakeFailed

__all__ = [
    "BadCookie",
    "BlockingMailbox",
    "BlockingNode",
    "ConnectionLost",
    "EpmdUnavailable",
    "ErlangError",
    "ErlangExit",
    "ErlangThrow",
    "HandshakeFailed",
    "Mailbox",
    "MailboxClosed",
    "NameTaken",
    "NoConnection",
    "Node",
    "RemoteError",
    "Timeout",
    "TlsConfig",
    "TlsConfigError",
    "TlsHandshakeFailed",
    "TransportError",
    "default_cookie",
    "epmd_names",
    "full_node_name",
]
