"""The web front end and the compute service across hosts, plain TCP and TLS (HTTPS for the
service then): a gunicorn worker on the front end calls an Erlang host and runs a map/reduce
from a view; the compute service on erl1 spreads a job over workers on both Erlang hosts;
with erl2 cut off, HTTP requests get 503/504 in time and the worker lives on, and a job
finishes correctly on the survivors; with the link back everything is used again, unrestarted."""

from __future__ import annotations

import time

import pytest

from beambridge.compute import Client
from tests.hosts.conftest import TICK, WEB_TIMEOUT, Cluster, Compute, WebApp, wait_until
from tests.hosts.netns import Network

pytestmark = pytest.mark.erlang

MARGIN = 1.5
DETECTED = TICK * 1.25 + MARGIN


def test_compute_workers_on_both_hosts_and_a_mapreduce(compute: Compute, cluster: Cluster) -> None:
    # in TLS mode the service serves HTTPS, and joined the workers (inet_tls only) over TLS
    assert compute.service.url.startswith("https://" if cluster.mode == "tls" else "http://")
    # slow items, so that every worker slot gets some (a quick one would take them all)
    spread = compute.run(lambda c: c.map("bbc_sample_jobs:sleep", [100] * 12, chunk=1))
    assert set(spread) == {cluster.n1.name, cluster.n2.name}
    docs = [{"a": i, f"k{i % 3}": 1} for i in range(30)]
    counts = compute.run(lambda c: c.mapreduce("bbc_sample_jobs:echo", docs,
                                               reduce="bbc_sample_jobs:sum_counts", chunk=2))
    assert counts == {"a": sum(range(30)), "k0": 10, "k1": 10, "k2": 10}


def test_web_views_rpc_and_mapreduce_across_hosts(web_app: WebApp, cluster: Cluster) -> None:
    status, body, _ = web_app.get("/node")
    assert (status, body["node"]) == (200, cluster.n2.name), body
    status, body, _ = web_app.get("/job")
    assert status == 200, body
    assert body["counts"] == {"erlang": 4, "python": 3, "web": 1}


def test_http_during_a_cut_gets_503_or_504_and_the_worker_lives_on(
        web_app: WebApp, cluster: Cluster, links_back: Network) -> None:
    erl2 = cluster.net["erl2"]
    status, body, _ = web_app.get("/node")
    assert status == 200, body
    worker = body["worker"]
    erl2.cut()
    cut_at = time.monotonic()
    seen = set()
    # through the whole detection: first the connection looks alive (504), then it is gone (503)
    while time.monotonic() - cut_at < DETECTED:
        status, body, elapsed = web_app.get("/node")
        assert status in (503, 504), (status, body)
        assert elapsed <= WEB_TIMEOUT + MARGIN, (status, elapsed)
        seen.add(status)
        status, body, _ = web_app.get("/health")  # the worker is not stuck
        assert (status, body["worker"]) == (200, worker)
    assert 503 in seen, seen  # it found out the node is down, within net_ticktime
    erl2.restore()
    status, body, _ = web_app.get("/node")
    assert (status, body["node"], body["worker"]) == (200, cluster.n2.name, worker), body


def test_a_job_with_a_worker_host_cut_off_finishes_on_the_survivors(
        compute: Compute, cluster: Cluster, links_back: Network) -> None:
    erl2 = cluster.net["erl2"]
    items = [[400, i] for i in range(16)]

    def job(client: Client) -> tuple[list[int], float]:
        started = time.monotonic()
        handle = client.submit("map", fun="bbc_sample_jobs:sleep_square", items=items, chunk=1)
        time.sleep(0.6)  # both hosts are busy with it now
        erl2.cut()
        return handle.result(timeout=40), time.monotonic() - started

    result, elapsed = compute.run(job, 60)
    assert result == [i * i for i in range(16)]
    assert elapsed <= 0.6 + DETECTED + 16 * 0.4 + MARGIN, elapsed  # a bound on a hang
    assert cluster.n2.name not in compute.workers_up()
    # with the link back the service joins erl2 again by itself, and uses it
    erl2.restore()
    wait_until(lambda: cluster.n2.name in compute.workers_up(), 15, "erl2's worker rejoined")
    spread = compute.run(lambda c: c.map("bbc_sample_jobs:sleep", [100] * 8, chunk=1))
    assert cluster.n2.name in spread
