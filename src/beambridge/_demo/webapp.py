"""The main job's web app (Flask, served by gunicorn): each view reaches Erlang along one road.

/                 a page with the three below and a progress bar for the compute job
/api/rpc          node road: this worker's own Python node calls a function on an Erlang worker
/api/shout        node road, the other way: Erlang sends the receiver a message, Python answers
/api/collatz      HTTP+JSON road: a small request (a bound) starts a big job on the cluster
/api/jobs/<id>    that job's progress and, once done, its answer

Settings come from the environment the demo gives gunicorn: ``BEAMBRIDGE_*`` for the worker's
node, ``DEMO_SERVICE_URL`` (and ``DEMO_SERVICE_TOKEN``) for the compute service, and
``DEMO_RECEIVER`` (``name@host``) for the receiver.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, request

from ..compute import Client, ServiceError
from ..term import Atom
from ..web.flask import Beambridge
from . import collatz

#: a bound the demo's page accepts: big enough to be worth a cluster, small enough to end
MAX_BELOW = 20_000_000
#: the parts the range is cut in: the job's progress bar counts them
PARTS = 100

app = Flask(__name__)
for key in ("ERLANG_NODE", "COOKIE", "EPMD_PORT", "NODE_NAME"):
    if f"BEAMBRIDGE_{key}" in os.environ:
        app.config[f"BEAMBRIDGE_{key}"] = os.environ[f"BEAMBRIDGE_{key}"]
erlang = Beambridge(app)


def _compute() -> Client:
    # One client per worker process, made after gunicorn forks (its connections are its own).
    client: Client | None = app.extensions.get("demo_compute")
    if client is None or app.extensions.get("demo_compute_pid") != os.getpid():
        client = Client(os.environ["DEMO_SERVICE_URL"], token=os.environ.get("DEMO_SERVICE_TOKEN"))
        app.extensions["demo_compute"], app.extensions["demo_compute_pid"] = client, os.getpid()
    return client


def _bad(message: str) -> tuple[dict[str, str], int]:
    return {"error": "bad_request", "reason": message}, 400


# Erlang's own failures (unreachable, timeout) are the extension's: 502/503/504.
@app.errorhandler(ServiceError)
def _service_refused(error: ServiceError) -> tuple[dict[str, str], int]:
    return {"error": error.code, "reason": error.reason}, error.status


@app.get("/api/rpc")
def rpc() -> dict[str, Any]:
    """A small piece of the job, over distribution: rpc from this worker's node to a worker."""
    started = time.perf_counter()
    answer = erlang.rpc("bbc_sample_jobs", "collatz_longest", [[1, 10_001], [0, 0]])
    return {"web_worker_pid": os.getpid(), "python_node": str(erlang.node.name),
            "erlang_node": app.config["BEAMBRIDGE_ERLANG_NODE"],
            "call": "bbc_sample_jobs:collatz_longest([1, 10001], [0, 0])",
            "answer": list(answer), "ms": round((time.perf_counter() - started) * 1000, 1)}


@app.get("/api/shout")
def shout() -> Any:
    """Erlang calls the receiver (``gen_server:call`` from a process on the Erlang node) and
    hands back what the Python handler answered."""
    text = request.args.get("text", "hello from the web")
    if not text or len(text) > 200:
        return _bad("text must be 1 to 200 characters")
    receiver = os.environ["DEMO_RECEIVER"]
    target = (Atom(receiver.partition("@")[0]), Atom(receiver))
    answer = erlang.rpc("gen_server", "call", [target, (Atom("shout"), text.encode()), 3000])
    return {"sent": text, "via": app.config["BEAMBRIDGE_ERLANG_NODE"], "receiver": receiver,
            "answer": answer.decode() if isinstance(answer, bytes) else str(answer)}


@app.post("/api/collatz")
def start_collatz() -> Any:
    body = request.get_json(silent=True)
    below = body.get("below") if isinstance(body, dict) else None
    if not isinstance(below, int) or isinstance(below, bool) or not 2 <= below <= MAX_BELOW:
        return _bad(f'send {{"below": N}} with N an integer from 2 to {MAX_BELOW:,}')
    job = _compute().submit("fold", fun="bbc_sample_jobs:collatz_longest",
                            items=collatz.chunks(below, PARTS), init=[0, 0],
                            fuse="bbc_sample_jobs:collatz_fuse", chunk=1)
    return {"id": job.id, "below": below}, 202


@app.get("/api/jobs/<job_id>")
def job(job_id: str) -> Any:
    status = _compute().job(job_id).status()
    found: dict[str, Any] = {"id": status.id, "status": status.status, "done": status.done,
                             "total": status.total}
    if status.status == "done":
        found["answer"] = status.raw.get("result")
    elif status.finished:
        found["reason"] = status.raw.get("reason") or status.raw.get("error")
    return found


@app.get("/")
def index() -> str:
    return _PAGE


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>beambridge demo</title>
<style>
 body { font: 15px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
 section { border: 1px solid #ccd; border-radius: 6px; padding: .6rem 1rem; margin: 1rem 0; }
 h2 { font-size: 1.05rem; margin: .2rem 0 .4rem; }
 pre { background: #f4f4f8; padding: .5rem; white-space: pre-wrap; }
 progress { width: 100%; height: 1.2rem; }
</style></head><body>
<h1>beambridge: Python web app, Erlang cluster</h1>
<section><h2>Node road: rpc from this web worker's Python node</h2>
 <button id="rpc">Call bbc_sample_jobs:collatz_longest on a worker</button><pre id="rpc-out"></pre></section>
<section><h2>Node road, the other way: Erlang asks the Python receiver</h2>
 <input id="text" value="hello from the web" maxlength="200"> <button id="shout">Shout</button>
 <pre id="shout-out"></pre></section>
<section><h2>HTTP+JSON road: a small request, a big computation</h2>
 <p>The start below <input id="below" type="number" value="3000000" min="2" max="20000000">
 with the longest Collatz chain (Project Euler 14), computed on the cluster.</p>
 <button id="go">Run on the cluster</button>
 <progress id="bar" max="100" value="0"></progress><pre id="job-out"></pre></section>
<script>
const show = (id, value) => { document.getElementById(id).textContent = JSON.stringify(value, null, 1); };
async function json(url, options) { const r = await fetch(url, options); return r.json(); }
document.getElementById("rpc").onclick = async () => show("rpc-out", await json("/api/rpc"));
document.getElementById("shout").onclick = async () => show("shout-out",
  await json("/api/shout?text=" + encodeURIComponent(document.getElementById("text").value)));
document.getElementById("go").onclick = async () => {
  const started = performance.now(), bar = document.getElementById("bar");
  const below = parseInt(document.getElementById("below").value, 10);
  const job = await json("/api/collatz", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify({below})});
  if (!job.id) { show("job-out", job); return; }
  for (;;) {
    const s = await json("/api/jobs/" + job.id);
    bar.max = s.total || 1; bar.value = s.done;
    if (s.status !== "running") { s.seconds = ((performance.now() - started) / 1000).toFixed(2);
                                  show("job-out", s); return; }
    await new Promise(r => setTimeout(r, 100));
  }
};
</script></body></html>
"""
