"""The process-wide default node of a web worker: opened on first use, one per process.

A pre-fork server (gunicorn, uWSGI) imports the application in its master and forks workers;
a node opened in the master must not be shared by the children. So the node is made lazily, on
the first ``get_node()`` in each process, under a name unique to that worker
(``<base>_<pid>_<random>``). A child that inherits a parent's node drops it without touching
its sockets and makes its own. No connection is ever opened per request: the node connects to
each Erlang node once and keeps the connection (with ticks) for every later request.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Iterable
from typing import Any

from ..node import BlockingNode
from ._config import WebSettings
from ._errors import NoErlangNode

__all__ = ["close_node", "configure", "get_node", "get_settings", "node_if_open", "rpc", "send"]

log = logging.getLogger("beambridge.web")


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.settings: WebSettings | None = None
        self.node: BlockingNode | None = None
        self.pid = os.getpid()


_state = _State()


def configure(settings: WebSettings | None = None, **changes: Any) -> WebSettings:
    """Set this process's web settings (default: from ``BEAMBRIDGE_*`` environment variables).

    A node already open under other settings is closed; the next ``get_node()`` opens a new one.
    """
    with _state.lock:
        base = settings if settings is not None else (_state.settings or WebSettings.from_env())
        chosen = base.replace(**changes) if changes else base
        if _state.settings is not None and chosen != _state.settings and _state.node is not None:
            _drop_locked()
        _state.settings = chosen
        return chosen


def get_settings() -> WebSettings:
    with _state.lock:
        if _state.settings is None:
            _state.settings = WebSettings.from_env()
        return _state.settings


def worker_node_name(base: str) -> str:
    """``base`` made unique to this process: ``web`` -> ``web_<pid>_<6 hex>`` (host kept)."""
    alive, at, host = base.partition("@")
    return f"{alive}_{os.getpid()}_{secrets.token_hex(3)}{at}{host}"


def get_node() -> BlockingNode:
    """This worker's node, opened on first use (in this process) and kept.

    Raises a ``beambridge.TransportError`` (``EpmdUnavailable``, ...) when it cannot be opened;
    the next call tries again.
    """
    node = _state.node
    if node is not None and _state.pid == os.getpid():
        return node
    with _state.lock:
        if _state.pid != os.getpid():
            _forget_inherited_locked()
        if _state.node is None:
            settings = get_settings()
            name = worker_node_name(settings.node_name)
            _state.node = BlockingNode(name, settings.cookie, hidden=settings.hidden,
                                       mapping=settings.term_mapping, role="web worker",
                                       connect_timeout=settings.connect_timeout,
                                       **settings.node_options())
            log.info("worker %d: node %s open", os.getpid(), _state.node.name)
        return _state.node


def node_if_open() -> BlockingNode | None:
    """The node if this process has opened one (does not open it)."""
    if _state.pid != os.getpid():
        return None
    return _state.node


def _forget_inherited_locked() -> None:
    """In a forked child: let go of the parent's node (its sockets are neutralised, not closed
    with a goodbye: the parent still uses them)."""
    inherited, _state.node = _state.node, None
    _state.pid = os.getpid()
    if inherited is not None:
        try:
            inherited.close()  # in a child, BlockingNode only releases what it inherited
        except Exception:  # pragma: no cover - defensive: never let this break a worker
            log.debug("releasing the inherited node failed", exc_info=True)


def _drop_locked() -> None:
    node, _state.node = _state.node, None
    if node is not None:
        try:
            node.close()
        except Exception:
            log.warning("closing the web node failed", exc_info=True)


def close_node() -> None:
    """Close this process's node (unregister from EPMD, close connections); idempotent."""
    with _state.lock:
        if _state.pid != os.getpid():
            _forget_inherited_locked()
            return
        _drop_locked()


def after_fork() -> None:
    """Forget the parent's node now (the fork hooks call this; lazy use would also notice)."""
    with _state.lock:
        if _state.pid != os.getpid():
            _forget_inherited_locked()


def target(node: str | None) -> str:
    chosen = node or get_settings().erlang_node
    if not chosen:
        raise NoErlangNode("no Erlang node named: pass node=... or set BEAMBRIDGE_ERLANG_NODE")
    return chosen


def rpc(module: str, function: str, args: Iterable[Any] = (), *, node: str | None = None,
        timeout: float | None = None) -> Any:
    """``erpc:call`` on ``node`` (default: the configured Erlang node) from this worker's node.

    Ends within ``timeout`` (default: the configured ``rpc_timeout``) with the result or a typed
    error: ``NoConnection`` (node down), ``Timeout``, ``ErlangError``/``ErlangThrow``/``ErlangExit``.
    """
    settings = get_settings()
    where = target(node)
    return get_node().rpc(where, module, function, args,
                          timeout=settings.rpc_timeout if timeout is None else timeout)


def send(dest: Any, message: Any, *, timeout: float | None = None) -> None:
    """Send ``message`` to a pid, ``(name, node)``, or a name on the configured Erlang node."""
    if isinstance(dest, str):
        dest = (dest, target(None))
    settings = get_settings()
    get_node().send(dest, message, timeout=settings.rpc_timeout if timeout is None else timeout)


if hasattr(os, "register_at_fork"):
    # runs after the node layer's own hook (registration order), which marks nodes as inherited
    os.register_at_fork(after_in_child=lambda: setattr(_state, "lock", threading.RLock()))
