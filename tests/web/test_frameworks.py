"""Django's and Flask's own test clients, with views that reach a real Erlang node (and Mnesia)."""

from __future__ import annotations

from pathlib import Path

import pytest

from beambridge import web
from beambridge.web import SettingsError

from .conftest import COOKIE, unique

pytestmark = pytest.mark.erlang


# ---------------------------------------------------------------- Django

@pytest.fixture(scope="module")
def django_setup(web_epmd: int):
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, ALLOWED_HOSTS=["testserver"], SECRET_KEY="x" * 50,
            ROOT_URLCONF="tests.web.apps.django_urls", DATABASES={},
            INSTALLED_APPS=["beambridge.web.django"],
            MIDDLEWARE=["beambridge.web.django.ErlangErrorMiddleware"],
            BEAMBRIDGE_NODE_NAME=unique("dj"), BEAMBRIDGE_COOKIE=COOKIE,
            BEAMBRIDGE_EPMD_PORT=web_epmd, BEAMBRIDGE_RPC_TIMEOUT=3,
            BEAMBRIDGE_CONNECT_TIMEOUT=2)
        django.setup()
    return settings


def test_django_ready_opens_nothing_and_checks(django_setup, erl) -> None:
    from django.core import checks
    from django.test import override_settings

    web.close_node()
    assert web.node_if_open() is None  # django.setup() ran ready(): nothing opened
    with override_settings(BEAMBRIDGE_ERLANG_NODE=erl.name):
        assert [m for m in checks.run_checks() if m.id.startswith("beambridge")] == []
    with override_settings(BEAMBRIDGE_ERLANG_NODE=erl.name, BEAMBRIDGE_RPC_TIMEOUT=-1,
                           BEAMBRIDGE_MAPPING="latin1", BEAMBRIDGE_EPMD_PORT="x",
                           BEAMBRIDGE_RPC_TIMOUT=3):
        found = {m.id: m for m in checks.run_checks() if m.id.startswith("beambridge")}
    assert {"beambridge.E005", "beambridge.E006", "beambridge.E007", "beambridge.W001"} <= set(found)
    assert found["beambridge.E005"].level == checks.ERROR
    assert "BEAMBRIDGE_RPC_TIMOUT" in found["beambridge.W001"].msg
    assert {m.id for m in checks.run_checks()} >= {"beambridge.W002"}  # no ERLANG_NODE set


def test_django_views_through_client(django_setup, fresh_erl, tmp_path: Path) -> None:
    from django.test import Client, override_settings

    with override_settings(BEAMBRIDGE_ERLANG_NODE=fresh_erl.name):
        client = Client()
        assert client.get("/hello").content == b"hello world !"
        answer = client.get("/add", {"a": 40, "b": 2}).json()
        assert answer["sum"] == 42 and "_" in answer["node"]
        # Mnesia on disc through rpc
        from beambridge.web import django as bbdj

        assert bbdj.rpc("bbw_store", "setup", [str(tmp_path / "mnesia").encode()])[1] == "disc_copies"
        assert client.post("/kv/k1", b"v1", content_type="application/octet-stream").status_code == 201
        assert client.get("/kv/k1").content == b"v1"
        assert client.get("/kv/nope").status_code == 404
        # the Erlang node goes down: a clear 503, then back (and Mnesia still has the data)
        fresh_erl.stop()
        response = client.get("/hello")
        assert response.status_code == 503 and response["Retry-After"] == "1"
        fresh_erl.start()
        bbdj.rpc("bbw_store", "setup", [str(tmp_path / "mnesia").encode()])
        assert client.get("/kv/k1").content == b"v1"
    web.close_node()


# ---------------------------------------------------------------- Flask

def _flask_app(erl_name: str, epmd_port: int, **config: object):
    from flask import Flask, request

    from beambridge.term import Atom
    from beambridge.web.flask import Beambridge

    app = Flask("bbtest")
    app.config.update({"BEAMBRIDGE_ERLANG_NODE": erl_name, "BEAMBRIDGE_COOKIE": COOKIE,
                       "BEAMBRIDGE_EPMD_PORT": epmd_port, "BEAMBRIDGE_NODE_NAME": unique("fl"),
                       "BEAMBRIDGE_RPC_TIMEOUT": 3, "BEAMBRIDGE_CONNECT_TIMEOUT": 2, **config})
    erlang = Beambridge(app)

    @app.get("/hello")
    def hello() -> str:
        return str(erlang.rpc("bbw_examples", "hello"))

    @app.get("/echo")
    def echo() -> object:
        box = erlang.mailbox()  # request-scoped: closed at teardown
        erlang.send("echoer", (Atom("reply_to"), Atom(erlang.node.name), b"hi"))
        # the echoer answers {useless, Node}; send from the box so the answer comes by pid instead
        erlang.rpc("bbw_examples", "send", [box.pid, box.pid.id])
        return {"got": box.receive(timeout=3)}

    @app.route("/kv/<key>", methods=["GET", "PUT"])
    def kv(key: str) -> object:
        if request.method == "PUT":
            erlang.rpc("bbw_store", "put", [key.encode(), request.get_data()])
            return "", 204
        found = erlang.rpc("bbw_store", "get", [key.encode()])
        return ("no such key", 404) if found == Atom("not_found") else found[1]

    return app, erlang


def test_flask_extension(fresh_erl, web_epmd: int, tmp_path: Path) -> None:
    app, erlang = _flask_app(fresh_erl.name, web_epmd)
    web.close_node()
    assert web.node_if_open() is None  # init_app opened nothing
    client = app.test_client()
    assert client.get("/hello").data == b"hello world !"
    erlang.rpc("bbw_examples", "echo_start", [])
    response = client.get("/echo")
    assert response.status_code == 200 and isinstance(response.json["got"], int)
    with app.app_context():
        assert erlang.rpc("bbw_store", "setup", [str(tmp_path / "mn").encode()])[1] == "disc_copies"
    assert client.put("/kv/a", data=b"1").status_code == 204
    assert client.get("/kv/a").data == b"1"
    fresh_erl.stop()
    response = client.get("/hello")
    assert response.status_code == 503 and b"NoConnection" in response.data
    fresh_erl.start()
    with app.app_context():
        erlang.rpc("bbw_store", "setup", [str(tmp_path / "mn").encode()])
    assert client.get("/kv/a").data == b"1"  # on disc: survived the restart
    web.close_node()


def test_flask_refuses_bad_config(web_epmd: int) -> None:
    with pytest.raises(SettingsError) as info:
        _flask_app("x@127.0.0.1", web_epmd, BEAMBRIDGE_RPC_TIMEOUT="soon")
    assert "BEAMBRIDGE_RPC_TIMEOUT" in str(info.value)
