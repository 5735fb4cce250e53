"""The per-worker default node: lazy, unique, shared by threads, survives Erlang going away."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from beambridge import Timeout, TransportError, web
from beambridge.node import NoConnection
from beambridge.web import WebSettings, http_status

pytestmark = pytest.mark.erlang


def test_lazy_and_unique(erl, web_settings: WebSettings) -> None:
    assert web.node_if_open() is None  # nothing opened by configure()
    node = web.get_node()
    assert web.get_node() is node
    alive = node.name.partition("@")[0]
    assert alive.startswith(f"{web_settings.node_name}_{os.getpid()}_")
    assert web.rpc("bbw_examples", "node_name") == erl.name
    assert web.rpc("bbw_examples", "add", [1, 2]) == 3


def test_threads_share_one_node(erl, web_settings: WebSettings) -> None:
    def call(i: int) -> int:
        return int(web.rpc("bbw_examples", "add", [i, 1]))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(400)))
    assert results == [i + 1 for i in range(400)]
    assert web.get_node().nodes() == [erl.name]


def test_timeout_returns_within_it(erl, web_settings: WebSettings) -> None:
    started = time.monotonic()
    with pytest.raises(Timeout) as info:
        web.rpc("bbw_examples", "slow", [3000], timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert http_status(info.value)[0] == 504
    assert web.rpc("bbw_examples", "add", [1, 1]) == 2  # the node is fine afterwards


def test_node_down_then_back(fresh_erl, web_epmd: int) -> None:
    from tests.web.conftest import COOKIE, unique

    web.configure(WebSettings(node_name=unique("pyweb"), erlang_node=fresh_erl.name, cookie=COOKIE,
                              epmd_port=web_epmd, rpc_timeout=3.0, connect_timeout=2.0))
    try:
        assert web.rpc("bbw_examples", "add", [1, 1]) == 2
        fresh_erl.stop()
        started = time.monotonic()
        with pytest.raises(NoConnection) as info:
            web.rpc("bbw_examples", "add", [1, 1])
        assert time.monotonic() - started < 3.5
        assert isinstance(info.value, TransportError) and http_status(info.value)[0] == 503
        fresh_erl.start()
        assert web.rpc("bbw_examples", "add", [2, 2]) == 4
    finally:
        web.close_node()


def test_fork_gets_its_own_node(erl, web_settings: WebSettings) -> None:
    parent_name = web.get_node().name
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            name = web.get_node().name
            ok = web.rpc("bbw_examples", "add", [20, 22]) == 42
            os.write(write, f"{name} {ok}".encode())
            web.close_node()
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(child, 0)
    out = os.read(read, 1000).decode()
    os.close(read)
    assert status == 0, out
    child_name, ok = out.split()
    assert ok == "True" and child_name != parent_name and f"_{child}_" in child_name
    assert web.rpc("bbw_examples", "add", [1, 1]) == 2  # the parent's node is untouched


def test_no_erlang_node_configured(web_epmd: int) -> None:
    web.configure(WebSettings(node_name="nobody", epmd_port=web_epmd))
    with pytest.raises(web.NoErlangNode):
        web.rpc("m", "f")
    assert web.node_if_open() is None


def test_threads_survive_node_loss(fresh_erl, web_epmd: int) -> None:
    from tests.web.conftest import COOKIE, unique

    web.configure(WebSettings(node_name=unique("pyweb"), erlang_node=fresh_erl.name, cookie=COOKIE,
                              epmd_port=web_epmd, rpc_timeout=2.0, connect_timeout=1.0))
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(30):
            try:
                web.rpc("bbw_examples", "slow", [20])
                result = "ok"
            except TransportError:
                result = "down"
            with lock:
                outcomes.append(result)

    try:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20  # some calls succeed first, however loaded the machine
        while time.monotonic() < deadline:
            with lock:
                if "ok" in outcomes:
                    break
            time.sleep(0.01)
        fresh_erl.stop()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert len(outcomes) == 240 and "ok" in outcomes and "down" in outcomes
        fresh_erl.start()
        assert web.rpc("bbw_examples", "add", [1, 1]) == 2
    finally:
        web.close_node()
