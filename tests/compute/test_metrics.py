"""``GET /metrics``: the Prometheus text format, parsed with ``prometheus_client``'s own parser,
behind the same token, Host and Origin rules as the API; its counters, histogram and gauges
move as jobs run (done, failed, cancelled, timeout), on a real service with one worker."""

from __future__ import annotations

import http.client
import urllib.parse
from collections.abc import Iterator

import pytest

from beambridge.compute import Client, JobCancelled, JobFailed, JobTimeout, Service, Unauthorized
from tests.node.conftest import wait_until

parser = pytest.importorskip("prometheus_client.parser")

pytestmark = pytest.mark.erlang

TOKEN = "metrics-token"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    with Service(local_nodes=1, token=TOKEN, config={"result_ttl_s": 60}) as service:
        yield service


def scrape(client: Client) -> tuple[dict[str, str], Samples]:
    """The families' types, and every sample by (name, sorted labels)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in parser.text_string_to_metric_families(client.metrics()):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def raw_get(svc: Service, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(svc.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def test_metrics_need_the_token_and_pass_the_host_and_origin_checks(svc: Service) -> None:
    with pytest.raises(Unauthorized):
        Client(svc.url).metrics()
    with pytest.raises(Unauthorized):
        Client(svc.url, token="wrong").metrics()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    host = urllib.parse.urlsplit(svc.url).netloc
    status, headers, body = raw_get(svc, "/metrics", {**auth, "Host": host})
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    # A DNS-rebinding page names its own host; a foreign page sends its Origin.
    assert raw_get(svc, "/metrics", {**auth, "Host": "evil.example"})[0] == 400
    assert raw_get(svc, "/metrics", {**auth, "Host": host, "Origin": "http://evil.example"})[0] == 403
    # Not writable.
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(svc.url).hostname,
                                      urllib.parse.urlsplit(svc.url).port, timeout=10)
    try:
        conn.request("POST", "/metrics", body=b"{}", headers={**auth, "Content-Type": "application/json"})
        assert conn.getresponse().status == 405
    finally:
        conn.close()


def test_the_families_and_their_types(svc: Service) -> None:
    types, samples = scrape(svc.client())
    assert types["beambridge_compute_jobs"] == "counter"  # the parser strips _total
    assert types["beambridge_compute_job_duration_seconds"] == "histogram"
    assert types["beambridge_compute_jobs_running"] == "gauge"
    assert types["beambridge_compute_nodes"] == "gauge"
    assert types["beambridge_compute_result_store_bytes"] == "gauge"
    for status in ("done", "failed", "cancelled", "timeout"):
        assert value(samples, "beambridge_compute_jobs_total", op="map", status=status) >= 0
    assert value(samples, "beambridge_compute_nodes", role="service") == 1
    assert wait_until(
        lambda: value(scrape(svc.client())[1], "beambridge_compute_nodes", role="local") == 1, 10)
    assert value(samples, "beambridge_compute_result_store_limit_bytes") > 0


def test_counters_histogram_and_gauges_move_as_jobs_run(svc: Service) -> None:
    client = svc.client()
    _, before = scrape(client)

    assert client.map("bbc_sample_jobs:square", [1, 2, 3]) == [1, 4, 9]
    with pytest.raises(JobFailed):
        client.call("bbc_sample_jobs:fail", 1)
    with pytest.raises(JobTimeout):
        client.call("bbc_sample_jobs:sleep", 2000, timeout=0.2)
    slow = client.submit("map", fun="bbc_sample_jobs:sleep_square", items=[[200, i] for i in range(50)],
                         chunk=1, processes=1)
    assert wait_until(lambda: value(scrape(client)[1], "beambridge_compute_jobs_running") >= 1, 10)
    slow.cancel()
    with pytest.raises(JobCancelled):
        slow.result(timeout=10)
    # A background job's result is kept (a synchronous one is dropped once answered).
    kept = client.submit("map", fun="bbc_sample_jobs:echo", items=["x" * 1000] * 20)
    assert len(kept.result(timeout=20)) == 20

    _, after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("beambridge_compute_jobs_total", op="map", status="done") == 2
    assert delta("beambridge_compute_jobs_total", op="call", status="failed") == 1
    assert delta("beambridge_compute_jobs_total", op="call", status="timeout") == 1
    assert delta("beambridge_compute_jobs_total", op="map", status="cancelled") == 1
    assert delta("beambridge_compute_job_duration_seconds_count", op="map") == 3
    assert delta("beambridge_compute_job_duration_seconds_count", op="call") == 2
    # The timed-out call ran its 0.2 s at least.
    assert delta("beambridge_compute_job_duration_seconds_sum", op="call") >= 0.19
    # Buckets are cumulative and end with +Inf = count.
    histogram = "beambridge_compute_job_duration_seconds"
    bounds = sorted((float(dict(labels)["le"]), v) for (name, labels), v in after.items()
                    if name == f"{histogram}_bucket" and dict(labels)["op"] == "call")
    assert [v for _, v in bounds] == sorted(v for _, v in bounds)
    assert bounds[-1] == (float("inf"), value(after, f"{histogram}_count", op="call"))
    assert value(after, "beambridge_compute_job_duration_seconds_bucket", op="call", le="0.1") < bounds[-1][1]
    assert value(after, "beambridge_compute_jobs_running") == 0
    assert delta("beambridge_compute_result_store_bytes") >= 20 * 1000
    assert value(after, "beambridge_compute_jobs_kept") >= 1
    # Dropping the kept job frees its bytes.
    kept.cancel()
    assert wait_until(lambda: value(scrape(client)[1], "beambridge_compute_result_store_bytes")
                      <= value(after, "beambridge_compute_result_store_bytes") - 20 * 1000, 10)
