"""The old uWSGI plugin's API (beambridge.compat.uwsgi) against a real Erlang node."""

from __future__ import annotations

import time

import pytest

from beambridge import Atom, Pid
from beambridge.compat import uwsgi
from beambridge.web import WebSettings

pytestmark = pytest.mark.erlang


@pytest.fixture(autouse=True)
def uwsgi_mapping() -> None:
    uwsgi.set_mapping("uwsgi")


def test_classic_hello_rpc(erl, web_settings: WebSettings) -> None:
    testnode = uwsgi.erlang_connect(erl.name)
    assert isinstance(testnode, int) and testnode >= 0
    assert uwsgi.erlang_rpc(testnode, "bbw_examples", "hello", []) == "hello world !"
    # the "fast style": a node name instead of a handle
    assert uwsgi.erlang_rpc(erl.name, "bbw_examples", "add", [2, 40]) == 42
    uwsgi.erlang_close(testnode)
    with pytest.raises(ValueError):
        uwsgi.erlang_rpc(testnode, "bbw_examples", "hello", [])


def test_plugin_mapping_both_ways(erl, web_settings: WebSettings) -> None:
    conn = uwsgi.erlang_connect(erl.name)
    # str is an atom, bytes a binary, erlist a string, None the empty list
    assert uwsgi.erlang_rpc(conn, "erlang", "is_atom", ["abc"]) is True
    assert uwsgi.erlang_rpc(conn, "erlang", "is_binary", [b"abc"]) is True
    assert uwsgi.erlang_rpc(conn, "erlang", "length", [uwsgi.erlist("abcd")]) == 4
    assert uwsgi.erlang_rpc(conn, "erlang", "length", [None]) == 0
    assert uwsgi.erlang_rpc(conn, "erlang", "list_to_atom", [uwsgi.erlist("hi")]) == "hi"
    # pids come back as dicts, and such a dict is a pid again on the way out
    pid = uwsgi.erlang_rpc(conn, "erlang", "whereis", ["init"])
    assert set(pid) == {"node", "id", "serial", "creation"} and pid["node"] == erl.name
    assert uwsgi.erlang_rpc(conn, "erlang", "is_pid", [pid]) is True
    assert uwsgi.erlang_rpc(conn, "erlang", "is_process_alive", [pid]) is True


def test_beambridge_mapping(erl, web_settings: WebSettings) -> None:
    uwsgi.set_mapping("beambridge")
    conn = uwsgi.erlang_connect(erl.name)
    assert uwsgi.erlang_rpc(conn, "bbw_examples", "hello", []) == Atom("hello world !")
    assert isinstance(uwsgi.erlang_rpc(conn, "erlang", "self", []), Pid)
    with pytest.raises(TypeError):  # beambridge's exact mapping refuses a bare str
        uwsgi.erlang_rpc(conn, "erlang", "is_atom", ["abc"])


def test_classic_echo_reply_to_any_name(erl, web_settings: WebSettings) -> None:
    conn = uwsgi.erlang_connect(erl.name)
    uwsgi.erlang_rpc(conn, "bbw_examples", "echo_start", [])
    me = uwsgi.erlang_node()
    # the echoer answers {useless, OurNode}: nobody registered `useless`; the inbox gets it
    uwsgi.erlang_send_message(conn, "echoer", ("reply_to", me, b"Hello echo server !!!"))
    assert uwsgi.erlang_recv_message(conn, timeout=5) == ("i_am_echo", b"Hello echo server !!!")
    # and the plugin's original form: a bare message, answered to every hidden node
    uwsgi.erlang_send_message(conn, "echoer", "ping")
    assert uwsgi.erlang_recv_message(conn, timeout=5) == ("i_am_echo", "ping")
    assert uwsgi.erlang_recv_message(conn, timeout=0.2) is None


def test_rpc_errors_are_typed_and_value_errors(erl, web_settings: WebSettings) -> None:
    conn = uwsgi.erlang_connect(erl.name)
    with pytest.raises(uwsgi.RpcError) as info:
        uwsgi.erlang_rpc(conn, "erlang", "error", ["bad"])
    assert isinstance(info.value, ValueError) and info.value.reason == Atom("bad")
    started = time.monotonic()
    with pytest.raises(uwsgi.RpcTimeout):
        uwsgi.erlang_rpc(conn, "bbw_examples", "slow", [5000], timeout=0.5)
    assert time.monotonic() - started < 1.5
    with pytest.raises(uwsgi.ConnectError):
        uwsgi.erlang_connect("nobody_here@127.0.0.1", timeout=2)


def test_erlang_func_receiver(erl, web_settings: WebSettings, web_epmd: int) -> None:
    from tests.web.conftest import COOKIE, unique

    got: list[object] = []

    def erman(message: object) -> object:
        got.append(message)
        return ("seen", message)

    uwsgi.erlang_func = erman
    name = unique("stolen") + "@127.0.0.1"
    receiver = uwsgi.serve(name, cookie=COOKIE, background=True, epmd_port=web_epmd)
    try:
        conn = uwsgi.erlang_connect(erl.name)
        # Erlang sends to {myprocess, Node}; erlang_func gets it in the plugin's types
        uwsgi.erlang_rpc(conn, "bbw_examples", "send", [("myprocess", name), ("hello", b"x")])
        answer = uwsgi.erlang_rpc(conn, "bbw_examples", "request",
                                  [("anything", name), "question", 5000])
        assert answer == ("ok", ("seen", "question"))
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got[0] == ("hello", b"x")
    finally:
        uwsgi.erlang_func = None
        receiver.stop()
