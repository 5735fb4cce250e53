"""Control messages of the distribution protocol, as frozen slotted dataclasses.

Each class validates its fields when built and knows its wire form (``to_wire``), which depends
on the peer's flags (``EXIT_PAYLOAD`` moves exit reasons into the payload, ``SEND_SENDER`` names
the sender). Trace-token variants decode into the same classes with ``trace_token`` set; the
token is kept but beambridge does not trace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..term import Atom, Pid, Reference
from ._errors import RemoteProtocolError
from ._flags import Flag

__all__ = [
    "NO_PAYLOAD",
    "AliasSend",
    "ControlMessage",
    "DemonitorP",
    "Exit",
    "Exit2",
    "GroupLeader",
    "Link",
    "MonitorP",
    "MonitorPExit",
    "NodeLink",
    "RegSend",
    "Send",
    "SendSender",
    "SpawnReply",
    "SpawnRequest",
    "Unlink",
    "UnlinkId",
    "UnlinkIdAck",
    "decode_control",
]

_UNUSED = Atom("")
# plain ints for the flag tests in to_wire (an IntFlag operation builds an enum member each time)
_SEND_SENDER = int(Flag.SEND_SENDER)
_EXIT_PAYLOAD = int(Flag.EXIT_PAYLOAD)


class _NoPayload:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_PAYLOAD"


#: Marks a control message that carries no message term after it.
NO_PAYLOAD: Any = _NoPayload()


#: the exact types of a process: a pid, or a registered name
_PROCS = (Pid, Atom)


def _pid(value: Any, what: str) -> None:
    if not isinstance(value, Pid):
        raise TypeError(f"{what} must be a Pid, not {value!r}")


def _proc(value: Any, what: str) -> None:
    if not isinstance(value, (Pid, Atom)):
        raise TypeError(f"{what} must be a Pid or an Atom (registered name), not {value!r}")


def _ref(value: Any, what: str) -> None:
    if not isinstance(value, Reference):
        raise TypeError(f"{what} must be a Reference, not {value!r}")


class ControlMessage:
    """Base of every control message."""

    __slots__ = ()
    TAG: ClassVar[int]

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:  # pragma: no cover - abstract
        """``(control tuple, payload or NO_PAYLOAD)`` for a peer with ``flags``."""
        raise NotImplementedError


def _tt(base: tuple[Any, ...], token: Any, tag_tt: int) -> tuple[Any, ...]:
    if token is None:
        return base
    return (tag_tt, *base[1:], token)


@dataclass(frozen=True, slots=True)
class Link(ControlMessage):
    from_pid: Pid
    to_pid: Pid
    TAG: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _pid(self.from_pid, "from_pid")
        _pid(self.to_pid, "to_pid")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return (1, self.from_pid, self.to_pid), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class Send(ControlMessage):
    """A message to a pid. Sent as ``SEND_SENDER`` (naming ``from_pid``) when the peer can."""

    to_pid: Pid
    message: Any
    from_pid: Pid | None = None
    trace_token: Any = None
    TAG: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if type(self.to_pid) is Pid and (self.from_pid is None or type(self.from_pid) is Pid):
            return
        _pid(self.to_pid, "to_pid")
        if self.from_pid is not None:
            _pid(self.from_pid, "from_pid")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        if self.from_pid is not None and flags & _SEND_SENDER:
            if self.trace_token is None:
                return (22, self.from_pid, self.to_pid), self.message
            return (23, self.from_pid, self.to_pid, self.trace_token), self.message
        return _tt((2, _UNUSED, self.to_pid), self.trace_token, 12), self.message


@dataclass(frozen=True, slots=True)
class SendSender(ControlMessage):
    """``SEND_SENDER`` as received; ``Send`` with ``from_pid`` is what to build for sending."""

    from_pid: Pid
    to_pid: Pid
    message: Any
    trace_token: Any = None
    TAG: ClassVar[int] = 22

    def __post_init__(self) -> None:
        _pid(self.from_pid, "from_pid")
        _pid(self.to_pid, "to_pid")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return _tt((22, self.from_pid, self.to_pid), self.trace_token, 23), self.message


@dataclass(frozen=True, slots=True)
class RegSend(ControlMessage):
    """A message to a name registered on the receiving node."""

    from_pid: Pid
    to_name: Atom
    message: Any
    trace_token: Any = None
    TAG: ClassVar[int] = 6

    def __post_init__(self) -> None:
        _pid(self.from_pid, "from_pid")
        if not isinstance(self.to_name, Atom):
            raise TypeError(f"to_name must be an Atom, not {self.to_name!r}")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return _tt((6, self.from_pid, _UNUSED, self.to_name), self.trace_token, 16), self.message


@dataclass(frozen=True, slots=True)
class Exit(ControlMessage):
    """A linked process ended (``EXIT``; ``PAYLOAD_EXIT`` on the wire when the peer can)."""

    from_pid: Pid
    to_pid: Pid
    reason: Any
    trace_token: Any = None
    TAG: ClassVar[int] = 3

    def __post_init__(self) -> None:
        if type(self.from_pid) is Pid and type(self.to_pid) is Pid:
            return
        _pid(self.from_pid, "from_pid")
        _pid(self.to_pid, "to_pid")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        if flags & _EXIT_PAYLOAD:
            return _tt((24, self.from_pid, self.to_pid), self.trace_token, 25), self.reason
        if self.trace_token is not None:
            return (13, self.from_pid, self.to_pid, self.trace_token, self.reason), NO_PAYLOAD
        return (3, self.from_pid, self.to_pid, self.reason), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class Exit2(ControlMessage):
    """``exit(Pid, Reason)`` sent to a process (``EXIT2``, or ``PAYLOAD_EXIT2``)."""

    from_pid: Pid
    to_pid: Pid
    reason: Any
    trace_token: Any = None
    TAG: ClassVar[int] = 8

    def __post_init__(self) -> None:
        _pid(self.from_pid, "from_pid")
        _pid(self.to_pid, "to_pid")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        if flags & _EXIT_PAYLOAD:
            return _tt((26, self.from_pid, self.to_pid), self.trace_token, 27), self.reason
        if self.trace_token is not None:
            return (18, self.from_pid, self.to_pid, self.trace_token, self.reason), NO_PAYLOAD
        return (8, self.from_pid, self.to_pid, self.reason), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class Unlink(ControlMessage):
    """The pre-``UNLINK_ID`` unlink; still decoded, never sent to a peer that has ``UNLINK_ID``."""

    from_pid: Pid
    to_pid: Pid
    TAG: ClassVar[int] = 4

    def __post_init__(self) -> None:
        _pid(self.from_pid, "from_pid")
        _pid(self.to_pid, "to_pid")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return (4, self.from_pid, self.to_pid), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class NodeLink(ControlMessage):
    TAG: ClassVar[int] = 5

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return (5,), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class GroupLeader(ControlMessage):
    from_pid: Pid
    to_pid: Pid
    TAG: ClassVar[int] = 7

    def __post_init__(self) -> None:
        _pid(self.from_pid, "from_pid")
        _pid(self.to_pid, "to_pid")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return (7, self.from_pid, self.to_pid), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class MonitorP(ControlMessage):
    """``from_pid`` monitors ``to_proc`` (a pid, or a name registered on the receiving node)."""

    from_pid: Pid
    to_proc: Pid | Atom
    ref: Reference
    TAG: ClassVar[int] = 19

    def __post_init__(self) -> None:
        _pid(self.from_pid, "from_pid")
        _proc(self.to_proc, "to_proc")
        _ref(self.ref, "ref")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return (19, self.from_pid, self.to_proc, self.ref), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class DemonitorP(ControlMessage):
    from_pid: Pid
    to_proc: Pid | Atom
    ref: Reference
    TAG: ClassVar[int] = 20

    def __post_init__(self) -> None:
        _pid(self.from_pid, "from_pid")
        _proc(self.to_proc, "to_proc")
        _ref(self.ref, "ref")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return (20, self.from_pid, self.to_proc, self.ref), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class MonitorPExit(ControlMessage):
    """A monitored process ended (``MONITOR_P_EXIT``, or its payload form)."""

    from_proc: Pid | Atom
    to_pid: Pid
    ref: Reference
    reason: Any
    TAG: ClassVar[int] = 21

    def __post_init__(self) -> None:
        if type(self.to_pid) is Pid and type(self.ref) is Reference and type(self.from_proc) in _PROCS:
            return  # the usual exact types: no call per field (every erpc answer is one of these)
        _proc(self.from_proc, "from_proc")
        _pid(self.to_pid, "to_pid")
        _ref(self.ref, "ref")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        if flags & _EXIT_PAYLOAD:
            return (28, self.from_proc, self.to_pid, self.ref), self.reason
        return (21, self.from_proc, self.to_pid, self.ref, self.reason), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class SpawnRequest(ControlMessage):
    """Spawn ``module:function(args...)`` on the receiving node (what ``erpc:call`` sends)."""

    req_id: Reference
    from_pid: Pid
    group_leader: Pid
    module: Atom
    function: Atom
    args: list[Any]
    options: list[Any]
    trace_token: Any = None
    TAG: ClassVar[int] = 29

    def __post_init__(self) -> None:
        if (type(self.req_id) is Reference and type(self.from_pid) is Pid
                and type(self.group_leader) is Pid and type(self.module) is Atom
                and type(self.function) is Atom and type(self.args) is list
                and type(self.options) is list):
            return
        _ref(self.req_id, "req_id")
        _pid(self.from_pid, "from_pid")
        _pid(self.group_leader, "group_leader")
        if not isinstance(self.module, Atom) or not isinstance(self.function, Atom):
            raise TypeError("module and function must be Atoms")
        if not isinstance(self.args, list) or not isinstance(self.options, list):
            raise TypeError("args and options must be lists")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        mfa = (self.module, self.function, len(self.args))
        ctrl = (29, self.req_id, self.from_pid, self.group_leader, mfa, self.options)
        return _tt(ctrl, self.trace_token, 30), self.args


@dataclass(frozen=True, slots=True)
class SpawnReply(ControlMessage):
    """The answer to a ``SpawnRequest``: ``result`` is the new pid or an error atom.

    ``flags`` bit 1: a link was set up; bit 2: a monitor was set up.
    """

    req_id: Reference
    to_pid: Pid
    flags: int
    result: Pid | Atom
    trace_token: Any = None
    TAG: ClassVar[int] = 31

    def __post_init__(self) -> None:
        if (type(self.req_id) is Reference and type(self.to_pid) is Pid
                and type(self.flags) is int and type(self.result) in _PROCS):
            return
        _ref(self.req_id, "req_id")
        _pid(self.to_pid, "to_pid")
        if type(self.flags) is not int:
            raise TypeError("flags must be an int")
        _proc(self.result, "result")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        ctrl = (31, self.req_id, self.to_pid, self.flags, self.result)
        if self.trace_token is None:
            return ctrl, NO_PAYLOAD
        return _tt(ctrl, self.trace_token, 32), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class AliasSend(ControlMessage):
    """A message to a process alias (a reference)."""

    from_pid: Pid
    alias: Reference
    message: Any
    trace_token: Any = None
    TAG: ClassVar[int] = 33

    def __post_init__(self) -> None:
        _pid(self.from_pid, "from_pid")
        _ref(self.alias, "alias")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return _tt((33, self.from_pid, self.alias), self.trace_token, 34), self.message


@dataclass(frozen=True, slots=True)
class UnlinkId(ControlMessage):
    id: int
    from_pid: Pid
    to_pid: Pid
    TAG: ClassVar[int] = 35

    def __post_init__(self) -> None:
        if type(self.id) is not int or self.id <= 0:
            raise TypeError("unlink id must be a positive int")
        _pid(self.from_pid, "from_pid")
        _pid(self.to_pid, "to_pid")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return (35, self.id, self.from_pid, self.to_pid), NO_PAYLOAD


@dataclass(frozen=True, slots=True)
class UnlinkIdAck(ControlMessage):
    id: int
    from_pid: Pid
    to_pid: Pid
    TAG: ClassVar[int] = 36

    def __post_init__(self) -> None:
        if type(self.id) is not int or self.id <= 0:
            raise TypeError("unlink id must be a positive int")
        _pid(self.from_pid, "from_pid")
        _pid(self.to_pid, "to_pid")

    def to_wire(self, flags: int) -> tuple[tuple[Any, ...], Any]:
        return (36, self.id, self.from_pid, self.to_pid), NO_PAYLOAD


#: Control tags whose message term follows the control tuple.
PAYLOAD_TAGS = frozenset({2, 6, 12, 16, 22, 23, 24, 25, 26, 27, 28, 29, 30, 33, 34})

_Builder = Callable[[tuple[Any, ...], Any], ControlMessage]


def _spawn_request(c: tuple[Any, ...], p: Any, token: Any = None) -> SpawnRequest:
    mfa = c[4]
    if type(mfa) is not tuple or len(mfa) != 3:
        raise TypeError("SPAWN_REQUEST wants {Module, Function, Arity}")
    if not isinstance(p, list) or len(p) != mfa[2]:
        raise TypeError("SPAWN_REQUEST argument list does not match its arity")
    req, sender, leader, module, function, options = c[1], c[2], c[3], mfa[0], mfa[1], c[5]
    if (type(req) is not Reference or type(sender) is not Pid or type(leader) is not Pid
            or type(module) is not Atom or type(function) is not Atom or type(p) is not list
            or type(options) is not list):
        return SpawnRequest(req, sender, leader, module, function, p, options, token)
    return spawn_request_unchecked(req, sender, leader, module, function, p, options, token)


# Decoded control tuples are checked field by field with exact type tests and then built without
# the validating constructor (the hot path of every message); anything unusual goes through the
# constructor, which raises the precise error.
_new = object.__new__
_set = object.__setattr__


def _send_sender(c: tuple[Any, ...], p: Any, token: Any = None) -> ControlMessage:
    sender, to = c[1], c[2]
    if type(sender) is not Pid or type(to) is not Pid:
        return SendSender(sender, to, p, token)
    m = _new(SendSender)
    _set(m, "from_pid", sender)
    _set(m, "to_pid", to)
    _set(m, "message", p)
    _set(m, "trace_token", token)
    return m


def _send(c: tuple[Any, ...], p: Any) -> ControlMessage:
    to = c[2]
    if type(to) is not Pid:
        return Send(to, p)
    return send_unchecked(to, p, None)


def _reg_send(c: tuple[Any, ...], p: Any) -> ControlMessage:
    sender, name = c[1], c[3]
    if type(sender) is not Pid or type(name) is not Atom:
        return RegSend(sender, name, p)
    return reg_send_unchecked(sender, name, p)


def _alias_send(c: tuple[Any, ...], p: Any) -> ControlMessage:
    sender, alias = c[1], c[2]
    if type(sender) is not Pid or type(alias) is not Reference:
        return AliasSend(sender, alias, p)
    m = _new(AliasSend)
    _set(m, "from_pid", sender)
    _set(m, "alias", alias)
    _set(m, "message", p)
    _set(m, "trace_token", None)
    return m


def _monitor_exit(c: tuple[Any, ...], reason: Any) -> ControlMessage:
    proc, to, ref = c[1], c[2], c[3]
    if type(proc) not in _PROCS or type(to) is not Pid or type(ref) is not Reference:
        return MonitorPExit(proc, to, ref, reason)
    return monitor_exit_unchecked(proc, to, ref, reason)


def _spawn_reply(c: tuple[Any, ...], token: Any = None) -> ControlMessage:
    req, to, flags, result = c[1], c[2], c[3], c[4]
    if (type(req) is not Reference or type(to) is not Pid or type(flags) is not int
            or type(result) not in _PROCS):
        return SpawnReply(req, to, flags, result, token)
    return spawn_reply_unchecked(req, to, flags, result, token)


def spawn_request_unchecked(req_id: Reference, from_pid: Pid, group_leader: Pid, module: Atom,
                            function: Atom, args: list[Any], options: list[Any],
                            trace_token: Any = None) -> SpawnRequest:
    """A ``SpawnRequest`` from fields the caller built with the right types (a node's own rpc
    path), without the constructor's checks."""
    m = _new(SpawnRequest)
    _set(m, "req_id", req_id)
    _set(m, "from_pid", from_pid)
    _set(m, "group_leader", group_leader)
    _set(m, "module", module)
    _set(m, "function", function)
    _set(m, "args", args)
    _set(m, "options", options)
    _set(m, "trace_token", trace_token)
    return m


def spawn_reply_unchecked(req_id: Reference, to_pid: Pid, flags: int, result: Pid | Atom,
                          trace_token: Any = None) -> SpawnReply:
    """A ``SpawnReply`` from fields of the right types (decoded and checked, or a node answering
    a decoded request)."""
    m = _new(SpawnReply)
    _set(m, "req_id", req_id)
    _set(m, "to_pid", to_pid)
    _set(m, "flags", flags)
    _set(m, "result", result)
    _set(m, "trace_token", trace_token)
    return m


def monitor_exit_unchecked(from_proc: Pid | Atom, to_pid: Pid, ref: Reference, reason: Any
                           ) -> MonitorPExit:
    """A ``MonitorPExit`` from fields of the right types (a node's own process ending)."""
    m = _new(MonitorPExit)
    _set(m, "from_proc", from_proc)
    _set(m, "to_pid", to_pid)
    _set(m, "ref", ref)
    _set(m, "reason", reason)
    return m


def send_unchecked(to_pid: Pid, message: Any, from_pid: Pid | None) -> Send:
    """A ``Send`` from pids of the right type (decoded and checked, or a node's own process
    sending)."""
    m = _new(Send)
    _set(m, "to_pid", to_pid)
    _set(m, "message", message)
    _set(m, "from_pid", from_pid)
    _set(m, "trace_token", None)
    return m


def reg_send_unchecked(from_pid: Pid, to_name: Atom, message: Any) -> RegSend:
    """A ``RegSend`` from fields of the right types (decoded and checked, or a node's own
    process sending)."""
    m = _new(RegSend)
    _set(m, "from_pid", from_pid)
    _set(m, "to_name", to_name)
    _set(m, "message", message)
    _set(m, "trace_token", None)
    return m


def exit_unchecked(from_pid: Pid, to_pid: Pid, reason: Any) -> Exit:
    """An ``Exit`` from fields of the right types (a node's own process ending)."""
    m = _new(Exit)
    _set(m, "from_pid", from_pid)
    _set(m, "to_pid", to_pid)
    _set(m, "reason", reason)
    _set(m, "trace_token", None)
    return m


_BUILDERS: dict[int, tuple[int, _Builder]] = {
    1: (3, lambda c, p: Link(c[1], c[2])),
    2: (3, _send),
    3: (4, lambda c, p: Exit(c[1], c[2], c[3])),
    4: (3, lambda c, p: Unlink(c[1], c[2])),
    5: (1, lambda c, p: NodeLink()),
    6: (4, _reg_send),
    7: (3, lambda c, p: GroupLeader(c[1], c[2])),
    8: (4, lambda c, p: Exit2(c[1], c[2], c[3])),
    12: (4, lambda c, p: Send(c[2], p, None, c[3])),
    13: (5, lambda c, p: Exit(c[1], c[2], c[4], c[3])),
    16: (5, lambda c, p: RegSend(c[1], c[3], p, c[4])),
    18: (5, lambda c, p: Exit2(c[1], c[2], c[4], c[3])),
    19: (4, lambda c, p: MonitorP(c[1], c[2], c[3])),
    20: (4, lambda c, p: DemonitorP(c[1], c[2], c[3])),
    21: (5, lambda c, p: _monitor_exit(c, c[4])),
    22: (3, _send_sender),
    23: (4, lambda c, p: _send_sender(c, p, c[3])),
    24: (3, lambda c, p: Exit(c[1], c[2], p)),
    25: (4, lambda c, p: Exit(c[1], c[2], p, c[3])),
    26: (3, lambda c, p: Exit2(c[1], c[2], p)),
    27: (4, lambda c, p: Exit2(c[1], c[2], p, c[3])),
    28: (4, _monitor_exit),
    29: (6, lambda c, p: _spawn_request(c, p)),
    30: (7, lambda c, p: _spawn_request(c, p, c[6])),
    31: (5, lambda c, p: _spawn_reply(c)),
    32: (6, lambda c, p: _spawn_reply(c, c[5])),
    33: (3, _alias_send),
    34: (4, lambda c, p: AliasSend(c[1], c[2], p, c[3])),
    35: (4, lambda c, p: UnlinkId(c[1], c[2], c[3])),
    36: (4, lambda c, p: UnlinkIdAck(c[1], c[2], c[3])),
}


def has_payload(control: Any) -> bool:
    """Whether a decoded control tuple is followed by a message term."""
    return type(control) is tuple and bool(control) and control[0] in PAYLOAD_TAGS


def decode_control(control: Any, payload: Any = NO_PAYLOAD) -> ControlMessage:
    """Build the event for a decoded control tuple (and its payload); malformed is remote's fault."""
    if type(control) is not tuple or not control or type(control[0]) is not int:
        raise RemoteProtocolError(f"control message is not a tagged tuple: {control!r:.200}")
    tag = control[0]
    entry = _BUILDERS.get(tag)
    if entry is None:
        raise RemoteProtocolError(f"unknown control message tag {tag}")
    size, build = entry
    if len(control) != size:
        raise RemoteProtocolError(f"control message {tag} has {len(control)} elements, not {size}")
    if (tag in PAYLOAD_TAGS) is (payload is NO_PAYLOAD):
        raise RemoteProtocolError(f"control message {tag} payload presence is wrong")
    try:
        return build(control, payload)
    except (TypeError, ValueError) as error:
        raise RemoteProtocolError(f"malformed control message {control[0]}: {error}") from None
