"""The receiver: a long-lived process that owns a well-known node name and hands every message
Erlang sends to it to a Python handler (the old uWSGI plugin's "stolen worker" and its
``uwsgi.erlang_func``).

Erlang reaches it with ``{AnyName, 'receiver@host'} ! Msg`` (every registered name on the node
lands here unless a handler is registered for that name with ``Receiver.route``). Replies:

* ``{Pid, Request}``: the handler gets ``Request``; its return value (unless ``None``) is sent
  to ``Pid``;
* ``{Pid, Ref, Request}`` with a reference: the handler gets ``Request``; ``{Ref, Result}`` goes
  back to ``Pid``;
* ``gen_server:call({Name, Node}, Request)``: the handler gets ``Request``; its return value is
  the call's answer;
* anything else: the handler gets the message as it came; the return value is dropped.

A handler that raises is logged (``beambridge.web.receiver``) and the receiver goes on with the
next message; no reply is sent for that message (the Erlang caller's own timeout applies).
Runs standalone (``beambridge receiver --name NAME@HOST module:handler``), as a uWSGI mule
(``beambridge.web.uwsgi_mule``) or beside gunicorn (``Receiver(...).start()`` in a thread).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from .._errors import Timeout, UsageError
from ..node import BlockingMailbox, BlockingNode, MailboxClosed
from ..term import Atom, ImproperList, Mapping, Pid, Reference
from ._config import WebSettings

__all__ = ["Receiver", "load_handler"]

log = logging.getLogger("beambridge.web.receiver")

Handler = Callable[[Any], Any]
_GEN_CALL = Atom("$gen_call")
_ALIAS = Atom("alias")


def load_handler(spec: str) -> Handler:
    """``"package.module:function"`` (or ``module:obj.attr``) -> the callable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"a handler is module:function, not {spec!r}")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"{spec} is not callable")
    return target  # type: ignore[no-any-return]


class Receiver:
    """Serves messages sent to the node ``name`` with ``handler``.

    ``handler`` may be given later with the ``handler`` decorator; ``lookup`` instead of
    ``handler`` is called for each message to find the handler (how ``erlang_func`` is read at
    each message). ``node`` lets an existing ``BlockingNode`` serve (else one is made from
    ``name``, ``cookie`` and ``node_options``: across hosts ``tls=``, ``listen_host=`` and
    ``listen_ports=``, or ``from_settings``). The receiver registers ``register`` (default:
    the node's short name) so that ``gen_server:call({Register, Node}, Req)`` can monitor it.
    """

    def __init__(self, name: str | None = None, handler: Handler | None = None, *,
                 cookie: str | None = None, node: BlockingNode | None = None,
                 mapping: Mapping | None = None, lookup: Callable[[], Handler | None] | None = None,
                 poll: float = 0.25, register: str | None = None, **node_options: Any) -> None:
        if node is None and name is None:
            raise UsageError("a Receiver needs a node name or a node")
        self._name = name
        self._cookie = cookie
        self._mapping = mapping
        self._node_options = node_options
        self._given_node = node
        self.node: BlockingNode | None = node
        self._handler = handler
        self._lookup = lookup
        self._routes: dict[str, Handler] = {}
        self._poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inbox: BlockingMailbox | None = None
        self._named: list[tuple[BlockingMailbox, str | None]] = []
        self._serial = threading.Lock()
        self.register = register
        self.handled = 0
        self.failed = 0

    @classmethod
    def from_settings(cls, name: str, handler: Handler | None = None, *,
                      settings: WebSettings | None = None, **options: Any) -> Receiver:
        """A receiver whose node is made as the web workers' are: cookie, mapping, EPMD port,
        TLS optfile and listen address from ``settings`` (default: ``BEAMBRIDGE_*`` in the
        environment); ``options`` override them."""
        chosen = settings if settings is not None else WebSettings.from_env()
        node_options = {**chosen.node_options(), **options}
        node_options.setdefault("cookie", chosen.cookie)
        node_options.setdefault("mapping", chosen.term_mapping)
        return cls(name, handler, **node_options)

    # ------------------------------------------------------------ configuration

    def handler(self, fn: Handler) -> Handler:
        """Decorator: ``@receiver.handler`` makes ``fn`` the handler."""
        self._handler = fn
        return fn

    def route(self, name: str, fn: Handler | None = None) -> Any:
        """Give messages to the registered name ``name`` their own handler (also a decorator)."""
        if fn is None:
            def decorate(f: Handler) -> Handler:
                self._routes[name] = f
                return f
            return decorate
        self._routes[name] = fn
        return fn

    # ------------------------------------------------------------ life cycle

    def open(self) -> BlockingNode:
        """Open the node (if this receiver owns it) and its mailboxes; idempotent."""
        if self.node is None:
            options = dict(self._node_options)
            options.setdefault("role", "receiver")  # what the node tells the cluster it is
            if self._mapping is not None:
                options["mapping"] = self._mapping
            assert self._name is not None
            self.node = BlockingNode(self._name, self._cookie, **options)
        if self._inbox is None:
            self._inbox = self.node.mailbox()
            own = self.register or self.node.name.partition("@")[0]
            self._named = [(self.node.mailbox(own), None)]
            self._named += [(self.node.mailbox(n), n) for n in self._routes if n != own]
            catch_all(self.node, self._inbox)
            log.info("receiver on %s ready (registered as %s)", self.node.name, own)
        return self.node

    def serve_forever(self) -> None:
        """Handle messages until ``stop()`` (or the node closes); one at a time, in order of
        arrival per name."""
        self.open()
        self._stop.clear()
        assert self._inbox is not None
        boxes = [(self._inbox, None), *self._named]
        threads = [threading.Thread(target=self._pump, args=box, daemon=True,
                                    name=f"beambridge-receiver-{box[1] or 'inbox'}")
                   for box in boxes[1:]]
        for thread in threads:
            thread.start()
        self._pump(*boxes[0])
        for thread in threads:
            thread.join(self._poll * 4)

    def _pump(self, box: BlockingMailbox, route: str | None) -> None:
        while not self._stop.is_set():
            try:
                message = box.receive(timeout=self._poll)
            except Timeout:
                continue
            except (MailboxClosed, UsageError):
                log.info("receiver mailbox closed; stopping")
                self._stop.set()
                return
            except Exception:  # the node's loop is gone (shutting down): stop, don't spin
                if not self._stop.is_set():
                    log.exception("receiver could not read its mailbox; stopping")
                self._stop.set()
                return
            with self._serial:
                self._handle(message, route)

    def start(self) -> Receiver:
        """Serve in a background (daemon) thread: how to run beside gunicorn workers."""
        self.open()
        self._thread = threading.Thread(target=self.serve_forever, name="beambridge-receiver",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, then close the node if this receiver opened it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._given_node is None and self.node is not None:
            self.node.close()
            self.node = None
            self._inbox = None
            self._named = []

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ one message

    def _pick(self, route: str | None) -> Handler | None:
        if route is not None and route in self._routes:
            return self._routes[route]
        if self._lookup is not None:
            found = self._lookup()
            if found is not None:
                return found
        return self._handler

    def _handle(self, message: Any, route: str | None) -> None:
        handler = self._pick(route)
        if handler is None:
            log.warning("no handler for a message (dropped): %r", message)
            return
        reply_to: Any = None
        wrap: Callable[[Any], Any] = _same
        payload = message
        if isinstance(message, tuple):
            if len(message) == 3 and message[0] == _GEN_CALL and isinstance(message[1], tuple) \
                    and len(message[1]) == 2 and isinstance(message[1][0], Pid):
                caller, tag = message[1]
                payload = message[2]
                reply_to, wrap = _gen_reply(caller, tag)
            elif len(message) == 2 and isinstance(message[0], Pid):
                reply_to, payload = message
            elif len(message) == 3 and isinstance(message[0], Pid) and isinstance(message[1], Reference):
                reply_to, ref, payload = message
                wrap = _tagged(ref)
        try:
            result = handler(payload)
        except Exception:
            self.failed += 1
            log.exception("receiver handler %s raised on %r; going on",
                          getattr(handler, "__qualname__", handler), message)
            return
        self.handled += 1
        if reply_to is not None and (result is not None or wrap is not _same):
            try:
                assert self.node is not None
                self.node.send(reply_to, wrap(result))
            except Exception:
                log.exception("could not send the handler's answer to %r", reply_to)


def _same(value: Any) -> Any:
    return value


def _tagged(ref: Any) -> Callable[[Any], Any]:
    return lambda result: (ref, result)


def _gen_reply(caller: Pid, tag: Any) -> tuple[Any, Callable[[Any], Any]]:
    """Where and how a ``gen_server:call`` answer goes (OTP 24+ tags may be aliases)."""
    if isinstance(tag, ImproperList) and tag.items and tag.items[0] == _ALIAS \
            and isinstance(tag.tail, Reference):
        return tag.tail, _tagged(tag)
    if isinstance(tag, list) and len(tag) == 2 and tag[0] == _ALIAS and isinstance(tag[1], Reference):
        return tag[1], _tagged(tag)
    return caller, _tagged(tag)


def catch_all(node: BlockingNode, mailbox: BlockingMailbox) -> None:
    """Make ``mailbox`` get what Erlang sends to any name nobody registered on ``node``."""
    inner = mailbox._mailbox  # the async Mailbox; set on the loop that owns the node's state
    done = threading.Event()

    def install() -> None:
        node.node.unrouted = inner
        done.set()

    node.loop.call_soon_threadsafe(install)
    if not done.wait(10):
        raise Timeout("the node's loop did not answer within 10 s")
