"""A Flask app using beambridge's web integration end to end.

/               what this worker's node is
/hello          the uWSGI plugin's classic rpc example, through beambridge.compat.uwsgi
/add?a=1&b=2    an rpc through the Flask extension
/kv/<key>       GET/PUT a value in Mnesia (a disc table on the Erlang node) through rpc
/shout?text=hi  Erlang sends {self(), Text} to the receiver node; the Python handler answers
/ewgi/...       served by an Erlang EWGI-style handler (bbw_hello_ewgi) through the EWGI bridge
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, make_response, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from beambridge.compat import uwsgi
from beambridge.term import Atom
from beambridge.web import EwgiBridge
from beambridge.web.flask import Beambridge

app = Flask(__name__)
for key in ("ERLANG_NODE", "COOKIE", "EPMD_PORT", "NODE_NAME"):
    if f"BEAMBRIDGE_{key}" in os.environ:
        app.config[f"BEAMBRIDGE_{key}"] = os.environ[f"BEAMBRIDGE_{key}"]
erlang = Beambridge(app)


@app.get("/")
def index() -> dict[str, Any]:
    return {"worker": os.getpid(), "node": erlang.node.name,
            "erlang": app.config["BEAMBRIDGE_ERLANG_NODE"]}


@app.get("/hello")
def hello() -> str:
    testnode = uwsgi.erlang_connect(app.config["BEAMBRIDGE_ERLANG_NODE"])
    answer = uwsgi.erlang_rpc(testnode, "bbw_examples", "hello", [])
    uwsgi.erlang_close(testnode)
    return str(answer)


def _integer(name: str) -> int:
    """Query parameter ``name`` as an integer; a 400 that says what is wrong otherwise."""
    value = request.args.get(name)
    if value is None:
        problem = "is missing"
    else:
        try:
            return int(value)
        except ValueError:
            problem = f"is {value!r}, not an integer"
    abort(make_response({"error": f"{name} {problem}; try /add?a=1&b=2"}, 400))


@app.get("/add")
def add() -> dict[str, Any]:
    return {"sum": erlang.rpc("bbw_examples", "add", [_integer("a"), _integer("b")])}


@app.route("/kv/<key>", methods=["GET", "PUT"])
def kv(key: str) -> Any:
    if request.method == "PUT":
        erlang.rpc("bbw_store", "put", [key.encode(), request.get_data()])
        return "stored\n", 201
    found = erlang.rpc("bbw_store", "get", [key.encode()])
    return ("no such key\n", 404) if found == Atom("not_found") else found[1]


@app.get("/shout")
def shout() -> Any:
    receiver = Atom(os.environ["EXAMPLE_RECEIVER"])
    answer = erlang.rpc("bbw_examples", "request",
                        [(Atom("shout"), receiver), request.args.get("text", "hi").encode(), 3000])
    if answer == Atom("timeout"):
        return {"error": "the receiver did not answer within 3 s"}, 504
    _ok, (_upper, text) = answer  # {ok, {upper, <<"HEY">>}}: example_handlers.handle's answer
    return {"answer": text.decode()}


application = DispatcherMiddleware(app, {"/ewgi": EwgiBridge("bbw_hello_ewgi")})
