"""The old uWSGI Erlang plugin's Python API, on beambridge's node.

Code written for the plugin runs after changing its import line::

    import uwsgi                                  # before
    from beambridge.compat import uwsgi           # after

``erlang_connect(node)`` returns an int handle (the plugin returned a file descriptor) and
raises ``ConnectError`` (also a ``ValueError``, as the plugin raised) when the node cannot be
reached. ``erlang_rpc``, ``erlang_send_message``, ``erlang_recv_message`` and ``erlang_close``
take that handle, or a node name for a one-off call (the plugin's "fast style"). Every call goes
through this process's web node (``beambridge.web.get_node()``): one node per worker, opened on
first use, never one connection per request.

Type mapping, chosen with ``set_mapping()`` (default ``"uwsgi"``):

* ``"uwsgi"``, the plugin's: a Python ``str`` is an atom and atoms come back as ``str``; ``bytes``
  are binaries; ``erlist("abc")`` is an Erlang string (list of characters); ``None`` is ``[]``; a
  pid comes back as a dict ``{"node", "id", "serial", "creation"}``, and such a dict (or a pid)
  names a process to send to.
* ``"beambridge"``: beambridge's exact mapping (``Atom``, ``Pid``, ``bytes``; a ``str`` is
  refused because Erlang has two string forms).

Messages Erlang sends to *any* registered name on the Python node (the plugin's example
replies to ``{useless, Node}``) are kept in one inbox that ``erlang_recv_message`` reads.
Receiving messages without asking (``uwsgi.erlang_func``, ``erlang_register_process``) is the
job of a receiver: ``serve(name)`` runs one that calls ``erlang_func`` (looked up at each
message) or the functions given to ``erlang_register_process``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from .._errors import ConnectionLost, RemoteError, Timeout, TransportError
from ..node import BlockingMailbox, BlockingNode
from ..term import Atom, Pid
from ..web import _default
from ..web._receiver import Receiver, catch_all

__all__ = [
    "ConnectError",
    "RpcError",
    "RpcTimeout",
    "erlang_close",
    "erlang_connect",
    "erlang_func",
    "erlang_node",
    "erlang_recv",
    "erlang_recv_message",
    "erlang_register_process",
    "erlang_rpc",
    "erlang_send",
    "erlang_send_message",
    "erlist",
    "serve",
    "set_mapping",
]

log = logging.getLogger("beambridge.web.compat")

#: set by the application: called with every message Erlang sends to the receiver (``serve``)
erlang_func: Callable[[Any], Any] | None = None


class ConnectError(ConnectionLost, ValueError):
    """``erlang_connect`` (or a call by node name) could not reach the node."""


class RpcError(RemoteError, ValueError):
    """The Erlang function raised, threw or exited (``kind``, ``reason``, ``stack`` kept)."""


class RpcTimeout(Timeout, ValueError):
    """No answer within the timeout given to ``erlang_rpc``."""


class erlist(list[int]):  # the plugin's name
    """An Erlang string (a list of character codes), as the plugin's ``erlist(s)`` made it."""

    def __init__(self, text: str | bytes = "") -> None:
        super().__init__(text if isinstance(text, bytes) else (ord(c) for c in text))


_MAPPINGS = ("uwsgi", "beambridge")
_mapping = "uwsgi"


def set_mapping(name: str) -> None:
    """``"uwsgi"`` (the plugin's types, the default) or ``"beambridge"`` (exact types)."""
    global _mapping
    if name not in _MAPPINGS:
        raise ValueError(f"mapping must be one of {_MAPPINGS}, not {name!r}")
    _mapping = name


# ---------------------------------------------------------------- type mapping

_PID_KEYS = frozenset(("node", "id", "serial", "creation"))


def _is_pid_dict(value: Any) -> bool:
    return isinstance(value, dict) and _PID_KEYS.issuperset(value) and "node" in value and "id" in value


def to_erlang(value: Any) -> Any:
    """A Python value under the plugin's mapping -> beambridge's exact form."""
    if _mapping != "uwsgi":
        return value
    return _to(value)


def _to(value: Any) -> Any:
    if isinstance(value, Atom) or value is True or value is False:
        return value
    if isinstance(value, str):
        return Atom(value)
    if value is None:
        return []
    if isinstance(value, erlist):
        return list(value)
    if isinstance(value, list):
        return [_to(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to(v) for v in value)
    if _is_pid_dict(value):
        return _pid(value)
    if isinstance(value, dict):
        return {_to(k): _to(v) for k, v in value.items()}
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def from_erlang(value: Any) -> Any:
    """A term as beambridge decoded it -> the plugin's mapping."""
    if _mapping != "uwsgi":
        return value
    return _from(value)


def _from(value: Any) -> Any:
    if value is True or value is False or value is None:
        return value
    if isinstance(value, Atom):
        return str(value)
    if isinstance(value, Pid):
        return {"node": str(value.node), "id": value.id, "serial": value.serial,
                "creation": value.creation}
    if isinstance(value, list):
        return [_from(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_from(v) for v in value)
    if isinstance(value, dict):
        return {_hashable(_from(k)): _from(v) for k, v in value.items()}
    return value


def _hashable(key: Any) -> Any:
    if isinstance(key, dict):
        return tuple(sorted(key.items()))
    if isinstance(key, list):
        return tuple(key)
    return key


def _pid(value: dict[str, Any]) -> Pid:
    return Pid(Atom(value["node"]), int(value["id"]), int(value.get("serial", 0)),
               int(value.get("creation", 0)))


def _destination(dest: Any, node: str) -> Any:
    """A registered name (str), a pid (dict, ``Pid``) or the plugin's ``(id, serial, creation)``."""
    if isinstance(dest, Pid):
        return dest
    if _is_pid_dict(dest):
        return _pid(dest)
    if isinstance(dest, tuple) and len(dest) == 3 and all(isinstance(x, int) for x in dest):
        return Pid(Atom(node), dest[0], dest[1], dest[2])
    if isinstance(dest, str):
        return (dest, node)
    raise ValueError(f"Invalid Erlang process: {dest!r}")


# ---------------------------------------------------------------- connections

class _Connections:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handles: dict[int, str] = {}
        self.counter = itertools.count(3)  # looks like a file descriptor, as the plugin's did
        self.inbox: BlockingMailbox | None = None
        self.inbox_generation: tuple[int, int] | None = None


_conns = _Connections()


def _node() -> BlockingNode:
    try:
        return _default.get_node()
    except TransportError as error:
        raise ConnectError(f"Unable to connect to erlang node: {error}") from error


def _inbox(node: BlockingNode) -> BlockingMailbox:
    """The mailbox that gets every message to an unregistered name on this worker's node."""
    key = (id(node), node.generation)
    with _conns.lock:
        if _conns.inbox is None or _conns.inbox_generation != key:
            _conns.inbox = node.mailbox()
            catch_all(node, _conns.inbox)
            _conns.inbox_generation = key
        return _conns.inbox


def _resolve(conn: int | str) -> str:
    if isinstance(conn, str):
        return conn
    if isinstance(conn, bool) or not isinstance(conn, int):
        raise ValueError("invalid erlang node/descriptor")
    with _conns.lock:
        node = _conns.handles.get(conn)
    if node is None:
        raise ValueError(f"invalid erlang node/descriptor {conn} (closed?)")
    return node


def erlang_connect(node: str, timeout: float | None = None) -> int:
    """Connect this worker's node to ``node`` and return a handle for the other calls.

    Raises ``ConnectError`` (a ``ValueError`` and a ``beambridge.ConnectionLost``) when the node
    cannot be reached within ``timeout`` (default: the configured connect timeout).
    """
    bnode = _node()
    _inbox(bnode)
    wait = _default.get_settings().connect_timeout if timeout is None else timeout
    try:
        bnode.connect(node, timeout=wait)
    except TransportError as error:
        raise ConnectError(f"Unable to connect to erlang node {node}: {error}") from error
    with _conns.lock:
        handle = next(_conns.counter)
        _conns.handles[handle] = node
    return handle


def erlang_close(conn: int | str) -> None:
    """Forget the handle; the node keeps its connection for the other handles and requests."""
    if isinstance(conn, int):
        with _conns.lock:
            _conns.handles.pop(conn, None)


def erlang_rpc(conn: int | str, module: str, function: str, args: Any = None,
               timeout: float | None = None) -> Any:
    """Call ``module:function(args...)`` on the connection's node and return the result.

    Returns within ``timeout`` seconds (default: the configured rpc timeout): ``RpcTimeout``
    after it, ``RpcError`` when Erlang raised, ``ConnectError`` when the node is unreachable.
    All three are ``ValueError``, as the plugin's "Error in Erlang rpc" was.
    """
    node = _resolve(conn)
    arguments = [] if args is None else args
    if not isinstance(arguments, (list, tuple)):
        arguments = [arguments]
    wait = _default.get_settings().rpc_timeout if timeout is None else timeout
    bnode = _node()
    try:
        result = bnode.rpc(node, str(module), str(function), [to_erlang(a) for a in arguments],
                           timeout=wait)
    except Timeout as error:
        raise RpcTimeout(f"erlang_rpc {module}:{function}: no answer within {wait} s") from error
    except RemoteError as error:
        raise RpcError(error.kind, error.reason, error.stack) from error
    except TransportError as error:
        raise ConnectError(f"Unable to reach erlang node {node}: {error}") from error
    return from_erlang(result)


def erlang_send_message(conn: int | str, dest: Any, message: Any, timeout: float | None = None) -> int:
    """Send ``message`` to ``dest`` (a registered name, or a pid) on the connection's node.

    Returns the handle, as the plugin returned its descriptor.
    """
    node = _resolve(conn)
    bnode = _node()
    _inbox(bnode)
    wait = _default.get_settings().rpc_timeout if timeout is None else timeout
    try:
        bnode.send(_destination(dest, node), to_erlang(message), timeout=wait)
    except TransportError as error:
        raise ConnectError(f"Unable to reach erlang node {node}: {error}") from error
    return conn if isinstance(conn, int) else -1


def erlang_recv_message(conn: int | str | None = None, timeout: float | None = None) -> Any:
    """The next message Erlang sent to any unregistered name on this node, or ``None`` when
    none came within ``timeout`` seconds (``None``: wait as long as it takes)."""
    if conn is not None:
        _resolve(conn)
    box = _inbox(_node())
    try:
        return from_erlang(box.receive(timeout=timeout))
    except Timeout:
        return None


def erlang_node() -> str:
    """This worker's node name (the plugin exposed it as ``uwsgi.erlang_node``)."""
    return _node().name


# the plugin's short aliases
erlang_send = erlang_send_message
erlang_recv = erlang_recv_message

# ---------------------------------------------------------------- receiving without asking

_processes: dict[str, Callable[[Any], Any]] = {}


def erlang_register_process(name: str, callable_: Callable[[Any], Any]) -> None:
    """Call ``callable_`` with every message sent to ``{name, ReceiverNode}`` (see ``serve``)."""
    _processes[name] = callable_


def _current_func() -> Callable[[Any], Any] | None:
    fn = globals().get("erlang_func")
    return fn if callable(fn) else None


def serve(name: str, *, cookie: str | None = None, background: bool = False,
          **node_options: Any) -> Receiver:
    """Run the receiver the plugin ran in its stolen worker: a node named ``name`` whose
    messages go to ``erlang_func`` (looked up at each message, so it may be set later) or to
    the function registered for the name they were sent to. Messages and replies use the
    chosen mapping. Blocks unless ``background``; returns the ``Receiver``.
    """
    receiver = Receiver(name, cookie=cookie, lookup=_mapped_func, **node_options)
    for proc_name, fn in _processes.items():
        receiver.route(proc_name, _mapped(fn))
    if background:
        return receiver.start()
    receiver.serve_forever()
    return receiver


def _mapped(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def call(message: Any) -> Any:
        result = fn(from_erlang(message))
        return None if result is None else to_erlang(result)
    return call


def _mapped_func() -> Callable[[Any], Any] | None:
    fn = _current_func()
    return None if fn is None else _mapped(fn)
