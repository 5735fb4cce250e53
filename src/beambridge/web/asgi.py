"""ASGI: the async ``Node`` on the server's own event loop, so a view awaits Erlang without
blocking the loop (no thread hop, no ``BlockingNode``).

::

    from beambridge.web import asgi

    async def app(scope, receive, send):            # or a Starlette/FastAPI endpoint
        result = await asgi.rpc("mymod", "hello")

    app = asgi.ErlangErrorMiddleware(app)           # 502/503/504 on Erlang failures

One node per event loop (so per worker process), opened on first use under a name unique to the
process, closed by ``close()`` (call it from the lifespan shutdown). Settings as for WSGI
(``beambridge.web.configure`` / ``BEAMBRIDGE_*``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ..node import Node
from . import _default
from ._errors import describe, http_status, is_erlang_failure

__all__ = ["ErlangErrorMiddleware", "close", "get_node", "rpc", "send"]

log = logging.getLogger("beambridge.web.asgi")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_nodes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, asyncio.Future[Node]]] = (
    weakref.WeakKeyDictionary())


async def get_node() -> Node:
    """This event loop's node, started on first use (concurrent first calls share one start)."""
    loop = asyncio.get_running_loop()
    entry = _nodes.get(loop)
    if entry is None or entry[0] != os.getpid():
        future: asyncio.Future[Node] = loop.create_future()
        _nodes[loop] = (os.getpid(), future)
        settings = _default.get_settings()
        options = settings.node_options()  # TLS optfile, listen address and ports included
        try:
            node = Node(_default.worker_node_name(settings.node_name), settings.cookie,
                        hidden=settings.hidden, mapping=settings.term_mapping, role="web worker",
                        connect_timeout=settings.connect_timeout, **options)
            await node.start()
        except BaseException as error:
            del _nodes[loop]
            future.set_exception(error)
            future.exception()  # consumed: the caller gets it raised below
            raise
        future.set_result(node)
        log.info("event loop node %s open", node.name)
        return node
    return await asyncio.shield(entry[1])


async def rpc(module: str, function: str, args: Iterable[Any] = (), *, node: str | None = None,
              timeout: float | None = None) -> Any:
    """``await``-able ``beambridge.web.rpc``: same errors, same timeout rules."""
    settings = _default.get_settings()
    where = _default.target(node)
    local = await get_node()
    return await local.rpc(where, module, function, args,
                           timeout=settings.rpc_timeout if timeout is None else timeout)


async def send(dest: Any, message: Any) -> None:
    if isinstance(dest, str):
        dest = (dest, _default.target(None))
    await (await get_node()).send(dest, message)


async def close() -> None:
    """Close this loop's node (lifespan shutdown)."""
    entry = _nodes.pop(asyncio.get_running_loop(), None)
    if entry is not None and entry[1].done() and not entry[1].exception():
        await entry[1].result().close()


class ErlangErrorMiddleware:
    """ASGI middleware: an Erlang failure before the response started -> 502/503/504."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if started or not is_erlang_failure(error):
                raise
            code, _ = http_status(error)
            body = (describe(error) + "\n").encode()
            headers = [(b"content-type", b"text/plain; charset=utf-8"),
                       (b"content-length", str(len(body)).encode())]
            if code == 503:
                headers.append((b"retry-after", b"1"))
            log.warning("%s %s: %s", scope.get("method"), scope.get("path"), error)
            await send({"type": "http.response.start", "status": code, "headers": headers})
            await send({"type": "http.response.body", "body": body})
