"""A Flask app with Prometheus metrics, served by gunicorn in tests/web/test_metrics.py
(configured by BEAMBRIDGE_*; PROMETHEUS_MULTIPROC_DIR set by the test)."""

from __future__ import annotations

import os
import threading

from flask import Flask, request

from beambridge.term import Atom
from beambridge.web import metrics
from beambridge.web.flask import Beambridge

app = Flask("bbmetrics")
app.config.update({k: v for k, v in os.environ.items() if k.startswith("BEAMBRIDGE_")})
erlang = Beambridge(app)
app.add_url_rule("/metrics", view_func=erlang.metrics_view())
metrics.set_sync_interval(float(os.environ.get("BB_SYNC_INTERVAL", "5")))


@app.get("/const")
def const() -> str:
    return "ok"


@app.get("/rpc")
def rpc() -> object:
    """An rpc that answers (held ``hold`` ms so that concurrent requests spread over workers)."""
    erlang.rpc("bbw_examples", "slow", [int(request.args.get("hold", "0"))])
    return {"pid": os.getpid(), "node": erlang.node.name,
            "sync_thread": any(t.name == "beambridge-metrics-sync" for t in threading.enumerate())}


@app.get("/error")
def error() -> object:
    erlang.rpc("erlang", "error", [Atom("boom")])  # ErlangError: a 502 from the extension
    return {}


@app.get("/timeout")
def timeout() -> object:
    erlang.rpc("bbw_examples", "slow", [2000], timeout=0.2)  # Timeout: a 504
    return {}
