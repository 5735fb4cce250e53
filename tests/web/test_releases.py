"""The plugin API and the receiver on every OTP release found (25 and 28)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from beambridge import Atom, otp, web
from beambridge.compat import uwsgi
from beambridge.web import Receiver, WebSettings

from .conftest import COOKIE, ErlNode, unique

pytestmark = pytest.mark.erlang


@pytest.fixture
def release_erl(otp_runtime: otp.Runtime, web_epmd: int, web_ebin: Path) -> Iterator[ErlNode]:
    node = ErlNode(otp_runtime, web_epmd, web_ebin, name=unique(f"rel{otp_runtime.major}"))
    web.configure(WebSettings(node_name=unique("pyrel"), erlang_node=node.name, cookie=COOKIE,
                              epmd_port=web_epmd, rpc_timeout=5, connect_timeout=3))
    yield node
    web.close_node()
    node.stop()


def test_compat_and_receiver(release_erl: ErlNode, web_epmd: int) -> None:
    uwsgi.set_mapping("uwsgi")
    conn = uwsgi.erlang_connect(release_erl.name)
    assert uwsgi.erlang_rpc(conn, "bbw_examples", "hello", []) == "hello world !"
    uwsgi.erlang_rpc(conn, "bbw_examples", "echo_start", [])
    uwsgi.erlang_send_message(conn, "echoer", ("reply_to", uwsgi.erlang_node(), b"x"))
    assert uwsgi.erlang_recv_message(conn, timeout=5) == ("i_am_echo", b"x")
    name = unique("relrecv") + "@127.0.0.1"
    with Receiver(name, lambda m: (Atom("r"), m), cookie=COOKIE, epmd_port=web_epmd):
        assert web.rpc("bbw_examples", "request", [(Atom("a"), Atom(name)), 5, 5000]) == (
            Atom("ok"), (Atom("r"), 5))
        alive = name.partition("@")[0]
        assert web.rpc("bbw_examples", "gen_request", [(Atom(alive), Atom(name)), 6, 5000]) == (
            Atom("ok"), (Atom("r"), 6))
