"""The atoms a node speaks, how a node is named and finds its cookie, and how a message is
addressed on the wire."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from .._errors import UsageError
from ..protocol import AliasSend, ControlMessage, RegSend, Send
from ..protocol._control import reg_send_unchecked, send_unchecked
from ..term import Atom, Pid, Reference

_A = Atom
OK = _A("ok")
ERROR = _A("error")
RETURN = _A("return")
THROW = _A("throw")
EXIT_A = _A("exit")
UNDEF = _A("undef")
SYSTEM_LIMIT = _A("system_limit")
NOPROC = _A("noproc")
NOCONNECTION = _A("noconnection")
ERPC = _A("erpc")
EXECUTE_CALL = _A("execute_call")
EXECUTE_CAST = _A("execute_cast")
MONITOR = _A("monitor")
LINK = _A("link")
REX = _A("rex")
NET_KERNEL = _A("net_kernel")
GEN_CALL = _A("$gen_call")
GEN_CAST = _A("$gen_cast")
CALL = _A("call")
BADRPC = _A("badrpc")
EXIT_TAG = _A("EXIT")
SPAWN_REPLY = _A("spawn_reply")
EMPTY = _A("")


#: how the "no cookie" message tells a Python caller to give one; the command line says its flag
PASS_COOKIE_HINT = "pass cookie=..."


def default_cookie() -> str:
    """``$ERLANG_COOKIE``, else ``~/.erlang.cookie``, as Erlang itself looks."""
    cookie = os.environ.get("ERLANG_COOKIE")
    if cookie:
        return cookie
    path = Path.home() / ".erlang.cookie"
    try:
        return path.read_text().strip()
    except OSError:
        raise UsageError(
            f"no cookie: {PASS_COOKIE_HINT}, set $ERLANG_COOKIE, or create ~/.erlang.cookie"
        ) from None


def full_node_name(name: str) -> str:
    """``name`` as ``name@host`` (a short name gets this machine's short host name)."""
    if not isinstance(name, str) or not name or name.startswith("@") or name.endswith("@"):
        raise UsageError(f"a node name is 'name' or 'name@host', not {name!r}")
    if "@" in name:
        return name
    return f"{name}@{socket.gethostname().split('.')[0]}"


def _monitored(target: Pid | Atom, node: Atom) -> Pid | tuple[Atom, Atom]:
    """The fourth element of a DOWN message: the pid, or ``(Name, Node)`` for a monitor set on
    a registered name (local names too), as ``erlang:monitor/2`` reports them."""
    return target if isinstance(target, Pid) else (target, node)


def addressed(target: Pid | Reference | Atom, message: Any, sender: Pid) -> ControlMessage:
    """The control message that carries ``message`` to a pid, an alias or a registered name;
    without the constructors' checks when ``sender`` and ``target`` are exactly a ``Pid`` or an
    ``Atom`` (a resolved destination: the checks would repeat these type tests)."""
    if type(sender) is Pid:
        if type(target) is Atom:
            return reg_send_unchecked(sender, target, message)
        if type(target) is Pid:
            return send_unchecked(target, message, sender)
    if isinstance(target, Pid):
        return Send(target, message, sender)
    if isinstance(target, Reference):
        return AliasSend(sender, target, message)
    return RegSend(sender, target, message)
