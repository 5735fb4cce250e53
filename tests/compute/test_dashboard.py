"""The dashboard: the page at ``/`` (static, no token, strict headers) and ``GET /cluster`` (behind
the token; only the caller's jobs), on a real service with two workers and two named tokens;
Python nodes connected to the service listed as peers; and the page itself in Debian's headless
chromium (Selenium): it asks for the token, lists the workers, shows a job's progress bar
advancing, cancels it with its button, and shows a failed job's reason and stack.

The browser test skips when chromium, chromedriver or selenium is missing, except under CI
(``CI=true``), where it fails: ``make test`` installs them.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beambridge import Atom, UsageError
from beambridge.compute import Client, JobFailed, Service, Unauthorized

pytestmark = pytest.mark.erlang

ALICE, BOB = "alice-token-1", "bob-token-2"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    tokens = {"alice": ALICE, "bob": BOB}
    with Service(local_nodes=2, config={"tokens": tokens, "result_ttl_s": 60}) as service:
        yield service


def until(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(interval)


def get(svc: Service, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(svc.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": parts.netloc, **(headers or {})})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def slow_map(client: Client, items: int = 40, ms: int = 150) -> Any:
    """A background job that advances one item at a time (one process per node)."""
    return client.submit("map", fun="bbc_sample_jobs:sleep_square", items=[[ms, i] for i in range(items)],
                         chunk=1, processes=1)


# ------------------------------------------------------------------ the page and /cluster

def test_the_page_is_static_needs_no_token_and_forbids_everything_else(svc: Service) -> None:
    status, headers, body = get(svc, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    policy = headers["content-security-policy"]
    for rule in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert rule in policy, policy
    assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in headers
    assert svc.node.encode() not in body and b"<script src=\"/dashboard/dashboard.js\"" in body
    assert b"<script>" not in body and b"style=" not in body  # nothing inline: the CSP allows none
    status, headers, script = get(svc, "/dashboard/dashboard.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert b"sessionStorage" in script and b"innerHTML" not in script
    assert get(svc, "/dashboard/dashboard.css")[0] == 200
    for path in ("/dashboard/nope.js", "/dashboard/index.htm"):
        assert get(svc, path)[0] == 404, path
    # Only the page's own files by name: no path reaches the file system.
    assert get(svc, "/dashboard/..%2f..%2fsrc%2fbbc_http.erl")[0] in (401, 404)
    assert get(svc, "/dashboard/../../src/bbc_http.erl")[0] in (401, 404)
    # The page passes the same Host and Origin checks as the API (DNS rebinding, foreign pages).
    assert get(svc, "/", {"Host": "evil.example"})[0] == 400
    assert get(svc, "/", {"Origin": "http://evil.example"})[0] == 403


def test_cluster_needs_a_token_and_shows_each_client_its_own_jobs(svc: Service) -> None:
    with pytest.raises(Unauthorized):
        Client(svc.url).cluster()
    alice, bob = Client(svc.url, token=ALICE), Client(svc.url, token=BOB)
    job = slow_map(alice)
    try:
        assert until(lambda: any(j["id"] == job.id for j in alice.cluster()["running"]))
        assert all(j["id"] != job.id for j in bob.cluster()["running"])
        assert bob.cluster()["counts"]["running"] >= 1  # the count is the service's, not a job list
    finally:
        job.cancel()
    assert until(lambda: any(j["id"] == job.id and j["status"] == "cancelled"
                             for j in alice.cluster()["finished"]))
    assert all(j["id"] != job.id for j in bob.cluster()["finished"])
    with pytest.raises(UsageError):
        alice.cluster(finished=-1)
    # Bounded: at most 200 ended jobs, whatever is asked.
    status, _, _ = get(svc, "/cluster?finished=abc", {"Authorization": f"Bearer {ALICE}"})
    assert status == 200
    assert len(alice.cluster(finished=10**6)["finished"]) <= 200
    assert alice.cluster(finished=0)["finished"] == []


def test_cluster_shows_workers_progress_failures_and_throughput(svc: Service) -> None:
    client = Client(svc.url, token=ALICE)
    cluster = until(lambda: (c := client.cluster()) and sum(
        n["role"] == "local" and n["status"] == "up" for n in c["nodes"]) == 2 and c, timeout=20)
    assert cluster, client.cluster()["nodes"]
    service, *workers = cluster["nodes"][:3]
    assert service["role"] == "service" and service["name"] == svc.node and service["os_pid"] == svc.os_pid
    for node in [service, *workers]:
        assert node["kind"] == "erlang"
        assert isinstance(node["run_queue"], int) and node["process_count"] > 10 and node["memory_bytes"] > 0
    assert {w["name"] for w in workers} <= set(service["connections"])
    assert all(svc.node in w["connections"] and w["host"] == "127.0.0.1" for w in workers)

    before = sum(b["done"] + b["failed"] + b["cancelled"] for b in cluster["throughput"]["buckets"])
    job = slow_map(client)
    seen = []
    def progress() -> int:
        running = [j for j in client.cluster()["running"] if j["id"] == job.id]
        if running:
            assert running[0]["fun"] == "bbc_sample_jobs:sleep_square" and running[0]["op"] == "map"
            assert running[0]["progress"]["total"] == 40 and running[0]["elapsed_ms"] >= 0
            seen.append(running[0]["progress"]["done"])
        return len(set(seen)) >= 3
    assert until(progress, timeout=15), seen
    assert seen == sorted(seen)
    job.cancel()

    with pytest.raises(JobFailed):
        client.call("bbc_sample_jobs:fail", 42)  # synchronous: forgotten once answered, yet listed
    failed = client.cluster()["finished"][0]
    assert failed["status"] == "failed" and failed["fun"] == "bbc_sample_jobs:fail"
    assert failed["error"]["kind"] == "error" and "job_failed_on_purpose" in failed["error"]["reason"]
    assert failed["error"]["stack"][0]["module"] == "bbc_sample_jobs"
    assert failed["duration_ms"] >= 0 and "client" not in failed
    assert all(not f["module"].startswith("bbc_") or f["module"] == "bbc_sample_jobs"
               for f in failed["error"]["stack"])
    after = client.cluster()
    assert sum(b["done"] + b["failed"] + b["cancelled"] for b in after["throughput"]["buckets"]) >= before + 2
    assert after["throughput"]["bucket_ms"] == 5000 and len(after["throughput"]["buckets"]) == 60


def test_python_nodes_connected_to_the_service_are_listed(svc: Service) -> None:
    from beambridge.node import BlockingNode

    client = Client(svc.url, token=ALICE)
    base = f"bbcdash_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    with BlockingNode(f"{base}_a@127.0.0.1", cookie=svc.cookie, start_epmd=False) as plain, \
            BlockingNode(f"{base}_b@127.0.0.1", cookie=svc.cookie, start_epmd=False) as telling:
        # One that says what it is, the way a web worker's node can.
        # (Atom keys and bytes values: a Python str has two Erlang forms, and the codec asks.)
        telling.expose("beambridge_node", {"info": lambda: {
            Atom("os_pid"): os.getpid(), Atom("role"): b"web worker",
            Atom("exposes"): [Atom("beambridge_node")], Atom("rpc_calls"): 3, Atom("other"): b"ignored"}})
        assert plain.ping(svc.node, timeout=10) and telling.ping(svc.node, timeout=10)

        def peers() -> dict[str, dict[str, Any]]:
            return {n["name"]: n for n in client.cluster()["nodes"] if n["role"] == "peer"}
        found = until(lambda: (p := peers()) and plain.name in p and telling.name in p and p, timeout=10)
        assert found, client.cluster()["nodes"]
        a, b = found[plain.name], found[telling.name]
        # Every beambridge node says what it is (beambridge_node:info/0, built in).
        assert a["kind"] == "python" and a["os_pid"] == os.getpid() and a["status"] == "up"
        assert a["node_role"] == "python node" and a["host"] == socket.gethostname()
        assert "beambridge_node" in a["exposes"] and a["connections"] >= 1
        assert a["connection"] in ("normal", "hidden")
        assert b["kind"] == "python" and b["os_pid"] == os.getpid() and b["node_role"] == "web worker"
        assert b["exposes"] == ["beambridge_node"] and b["rpc_calls"] == 3 and "other" not in b
        assert "beambridge_compute_nodes{role=\"peer\"} 2" in client.metrics()
    # Gone once they disconnect.
    assert until(lambda: not any(n["role"] == "peer" for n in client.cluster()["nodes"]), timeout=10)


# ------------------------------------------------------------------ in a browser

def _browser(tmp_path: Path) -> Any:
    """A headless Debian chromium driven through chromedriver, or skip (fail under CI)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service as DriverService
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        reason = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1300,1000", f"--user-data-dir={tmp_path / 'chromium'}",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=DriverService(str(CHROMEDRIVER)))


def test_the_page_in_a_browser(svc: Service, tmp_path: Path, record_property: Any) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = Client(svc.url, token=ALICE)
    def up_workers() -> list[str]:
        nodes = client.nodes()
        if sum(n["status"] == "up" for n in nodes) != 3:
            return []
        return [n["name"] for n in nodes if n["role"] == "local"]
    workers = until(up_workers, timeout=20)
    assert len(workers) == 2
    driver = _browser(tmp_path)
    chromedriver = driver.service.process
    try:
        wait = WebDriverWait(driver, 15, poll_frequency=0.05,
                             ignored_exceptions=[StaleElementReferenceException])

        def shown(css: str) -> Any:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return found[0] if found and found[0].is_displayed() else False

        # No token yet: the page asks for one; a wrong one is refused, the right one shows the cluster.
        driver.get(svc.url + "/")
        wait.until(lambda _: shown("#login"))
        driver.find_element(By.ID, "token").send_keys("not-the-token")
        driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        wait.until(lambda _: (e := shown("#login-error")) and "refused" in e.text)
        driver.find_element(By.ID, "token").send_keys(ALICE)
        driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        wait.until(lambda _: shown("body[data-ready=true] #main"))
        assert not driver.get_cookies()  # the token is no cookie

        # From the URL's fragment, which is then taken out of the address bar.
        driver.get("about:blank")
        driver.get(svc.url + "/#token=" + ALICE)
        wait.until(lambda _: shown("body[data-ready=true] #main"))
        assert "token" not in driver.current_url
        timing = driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "const r = performance.getEntriesByName('bbc-first-render')[0];"
            "return [n.loadEventEnd, r ? r.startTime : null];")
        record_property("page_load_ms", timing[0])
        record_property("first_render_ms", timing[1])

        for name in workers:
            wait.until(lambda _, name=name: shown(f'#nodes tr[data-node="{name}"]'))
        assert shown(f'#nodes tr[data-node="{svc.node}"][data-role="service"]')

        # A job submitted from Python: its bar advances, its button cancels it.
        job = slow_map(client, items=60, ms=200)
        row = f'#running tr[data-job-id="{job.id}"]'

        def value() -> float:
            bar = driver.find_elements(By.CSS_SELECTOR, row + " progress")
            return float(bar[0].get_attribute("value") or 0) if bar else -1.0
        wait.until(lambda _: value() > 0)
        first = value()
        wait.until(lambda _: value() > first)
        driver.find_element(By.CSS_SELECTOR, row + " button.cancel").click()
        wait.until(lambda _: shown(f'#finished tr[data-job-id="{job.id}"][data-status="cancelled"]'))
        assert not driver.find_elements(By.CSS_SELECTOR, row)
        assert job.status().status == "cancelled"

        # A failing job: its reason, and its stack one click away.
        failing = client.submit("call", fun="bbc_sample_jobs:fail", args=["from the browser test"])
        with pytest.raises(JobFailed):
            failing.result(timeout=10)
        failed = f'#finished tr[data-job-id="{failing.id}"][data-status="failed"]'
        cell = wait.until(lambda _: shown(failed + " td.reason"))
        assert "job_failed_on_purpose" in cell.text and "from the browser test" in cell.text
        cell.find_element(By.TAG_NAME, "summary").click()
        stack = wait.until(lambda _: shown(failed + " pre.stack"))
        assert "bbc_sample_jobs:fail/1" in stack.text
        # The chart has bars for what ended.
        assert client.map("bbc_sample_jobs:square", [1, 2]) == [1, 4]
        for kind in ("done", "failed", "cancelled"):
            wait.until(lambda _, kind=kind: driver.find_elements(By.CSS_SELECTOR, f"#chart rect.{kind}"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
                  and "401" not in e["message"]]  # the wrong token's answer above
        assert errors == []
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
    finally:
        driver.quit()
        if chromedriver is not None and chromedriver.poll() is None:
            chromedriver.kill()
            chromedriver.wait(10)
    assert shutil.which("chromium") is None or chromedriver is None or chromedriver.poll() is not None
