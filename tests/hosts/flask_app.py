"""A tiny Flask app for the multi-host tests, run by gunicorn on the front-end host.

Its web settings come from ``BEAMBRIDGE_*`` environment variables (``beambridge.web``); what
the node needs to live on a host of the test network (its address to listen on, a short
``net_ticktime``, the TLS optfile) from ``HOSTS_*`` ones. ``/health`` never touches Erlang;
``/node`` makes an rpc to the configured Erlang node; ``/job`` runs a map/reduce on the compute
service named by ``HOSTS_COMPUTE_URL``.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from beambridge.compute import Client
from beambridge.web.flask import Beambridge

app = Flask(__name__)
for key in ("ERLANG_NODE", "COOKIE", "NODE_NAME", "RPC_TIMEOUT", "CONNECT_TIMEOUT"):
    if f"BEAMBRIDGE_{key}" in os.environ:
        app.config[f"BEAMBRIDGE_{key}"] = os.environ[f"BEAMBRIDGE_{key}"]
erlang = Beambridge(app)
_options: dict[str, Any] = {"listen_host": os.environ["HOSTS_LISTEN_HOST"],
                            "net_ticktime": float(os.environ["HOSTS_TICKTIME"])}
if os.environ.get("HOSTS_TLS_OPTFILE"):
    _options["tls"] = os.environ["HOSTS_TLS_OPTFILE"]
app.extensions["beambridge"] = app.extensions["beambridge"].replace(options=_options)


@app.get("/health")
def health() -> dict[str, Any]:
    return {"worker": os.getpid()}


@app.get("/node")
def node() -> dict[str, Any]:
    return {"worker": os.getpid(), "node": str(erlang.rpc("erlang", "node", []))}


@app.get("/job")
def job() -> dict[str, Any]:
    """Word counts of a few 'documents' on the cluster: a mapreduce from a view."""
    docs = [{"erlang": 1, "python": 2}, {"python": 1}, {"erlang": 3, "web": 1}]
    cafile = os.environ.get("HOSTS_COMPUTE_CAFILE") or None
    with Client(os.environ["HOSTS_COMPUTE_URL"], token=os.environ.get("HOSTS_COMPUTE_TOKEN"),
                timeout=20, cafile=cafile, allow_plain_http=cafile is None) as client:
        counts = client.mapreduce("bbc_sample_jobs:echo", docs, reduce="bbc_sample_jobs:sum_counts")
    return {"worker": os.getpid(), "counts": counts}
