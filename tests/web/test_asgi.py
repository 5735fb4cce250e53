"""ASGI: the async node on the app's own loop; the loop keeps running while Erlang works."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from beambridge import web
from beambridge.web import WebSettings, asgi

from .conftest import COOKIE, unique

pytestmark = pytest.mark.erlang


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    ms = int(scope["query_string"].decode() or "0")
    result = await asgi.rpc("bbw_examples", "slow", [ms]) if ms else await asgi.rpc(
        "bbw_examples", "hello")
    body = repr(result).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


app = asgi.ErlangErrorMiddleware(_app)


async def _call(query: bytes) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/", "query_string": query}, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_asgi_does_not_block_the_loop(fresh_erl, web_epmd: int) -> None:
    web.configure(WebSettings(node_name=unique("asgi"), erlang_node=fresh_erl.name, cookie=COOKIE,
                              epmd_port=web_epmd, rpc_timeout=3, connect_timeout=2))

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        started = time.monotonic()
        # 20 requests each waiting 300 ms on Erlang, at once: ~0.3 s in all, loop never blocked
        results = await asyncio.gather(*(_call(b"300") for _ in range(20)))
        elapsed = time.monotonic() - started
        assert all(status == 200 for status, _ in results)
        assert elapsed < 2.0 and ticks >= 10
        assert await _call(b"") == (200, b"Atom('hello world !')")
        await asyncio.to_thread(fresh_erl.stop)
        status, body = await _call(b"")
        assert status == 503 and b"NoConnection" in body
        await asyncio.to_thread(fresh_erl.start)
        assert (await _call(b""))[0] == 200
        tick_task.cancel()
        await asgi.close()

    asyncio.run(main())
