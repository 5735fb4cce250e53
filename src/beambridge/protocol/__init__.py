"""The Erlang distribution protocol, sans-IO: bytes in, events out; no sockets, no asyncio.

``Connection`` is one connection's handshake and traffic, the ``_epmd`` functions are the port
mapper's requests and replies, and the control message classes are the events a connected peer
sends. ``beambridge.node`` runs these over asyncio.
"""

from . import _epmd as epmd
from ._connection import (
    DIST_LIMITS,
    NEED_DATA,
    Connected,
    Connection,
    ConnectionClosed,
    NameReceived,
    Role,
    State,
    StatusReceived,
    Tick,
    digest,
)
from ._control import (
    NO_PAYLOAD,
    AliasSend,
    ControlMessage,
    DemonitorP,
    Exit,
    Exit2,
    GroupLeader,
    Link,
    MonitorP,
    MonitorPExit,
    NodeLink,
    RegSend,
    Send,
    SendSender,
    SpawnReply,
    SpawnRequest,
    Unlink,
    UnlinkId,
    UnlinkIdAck,
    decode_control,
)
from ._errors import BadCookie, HandshakeFailed, LocalProtocolError, RemoteProtocolError
from ._flags import DEFAULT_FLAGS, MANDATORY_25, MANDATORY_26, Flag, missing_mandatory

__all__ = [
    "DEFAULT_FLAGS",
    "DIST_LIMITS",
    "MANDATORY_25",
    "MANDATORY_26",
    "NEED_DATA",
    "NO_PAYLOAD",
    "AliasSend",
    "BadCookie",
    "Connected",
    "Connection",
    "ConnectionClosed",
    "ControlMessage",
    "DemonitorP",
    "Exit",
    "Exit2",
    "Flag",
    "GroupLeader",
    "HandshakeFailed",
    "Link",
    "LocalProtocolError",
    "MonitorP",
    "MonitorPExit",
    "NameReceived",
    "NodeLink",
    "RegSend",
    "RemoteProtocolError",
    "Role",
    "Send",
    "SendSender",
    "SpawnReply",
    "SpawnRequest",
    "State",
    "StatusReceived",
    "Tick",
    "Unlink",
    "UnlinkId",
    "UnlinkIdAck",
    "decode_control",
    "digest",
    "epmd",
    "missing_mandatory",
]
