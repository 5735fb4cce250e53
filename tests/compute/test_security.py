"""The compute service attacked from outside, as a hostile client or a web page would: each
test asserts the refusal AND that a legitimate request made meanwhile still succeeds.

Attackers connect from other loopback addresses (127.0.0.2, 127.0.0.3: all of 127/8 is
loopback on Linux) so the per-address limits can be seen apart from the legitimate client.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import stat
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beambridge.compute import (
    Client,
    Forbidden,
    JobFailed,
    JobLost,
    NotFound,
    PayloadTooLarge,
    ResultDropped,
    ResultTooLarge,
    Service,
    ServiceFailed,
)

pytestmark = pytest.mark.erlang

J = "bbc_sample_jobs"
ALICE, BOB = "alice-token-1", "bob-token-2"


def port_of(svc: Service) -> int:
    return int(urllib.parse.urlsplit(svc.url).port or 0)


def exchange(svc: Service, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, source: str = "127.0.0.1",
         token: str | None = ALICE, timeout: float = 30) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One exchange; a legitimate client unless ``headers`` say otherwise."""
    base = {"Content-Type": "application/json"} if method in ("POST", "DELETE") else {}
    if token:
        base["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port_of(svc), timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers={**base, **(headers or {})})
        answer = conn.getresponse()
        data = answer.read()
        return answer.status, (json.loads(data) if data else {}), {k.lower(): v for k, v in
                                                                    answer.getheaders()}
    finally:
        conn.close()


def job(**spec: Any) -> bytes:
    return json.dumps(spec).encode()


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "notes.txt").write_text("alpha beta beta\n")
    (root / "sub").mkdir()
    (root / "sub" / "more.txt").write_text("gamma\n")
    outside = tmp_path_factory.mktemp("secret")
    (outside / "secret.txt").write_text("password hunter\n")
    (root / "escape").symlink_to(outside / "secret.txt")
    (root / "escape_dir").symlink_to(outside)
    (root / "inside_link").symlink_to(root / "sub" / "more.txt")
    return root


@pytest.fixture(scope="module")
def guarded(roots: Path) -> Iterator[Service]:
    """Two named clients, small limits and short deadlines, one data root."""
    config = {"tokens": {"alice": ALICE, "bob": BOB}, "max_jobs": 8, "max_jobs_per_client": 4,
              "header_timeout_ms": 1000, "body_timeout_ms": 2000, "max_connections": 200,
              "max_connections_per_peer": 60, "max_integer_digits": 4300, "max_result_bytes": 60_000,
              "allowed_origins": ["http://app.example:3000"], "result_ttl_s": 600}
    svc = Service(config=config, data_roots=[roots]).start()
    try:
        yield svc
    finally:
        svc.stop()


def client(svc: Service, token: str = ALICE) -> Client:
    return Client(svc.url, token=token)


# -- no file, OS or network access on a client's say-so -------------------------------------

def test_file_jobs_read_only_under_the_data_roots(guarded: Service, roots: Path) -> None:
    alice = client(guarded)
    assert sorted(alice.call(f"{J}:word_count", str(roots / "notes.txt"))) == [["alpha", 1], ["beta", 2]]
    assert sorted(alice.mapreduce(f"{J}:word_count", [str(roots / "notes.txt"),
                                                       str(roots / "inside_link")],
                                  f"{J}:sum_counts").items()) == [("alpha", 1), ("beta", 2), ("gamma", 1)]
    refused = ["/etc/passwd", str(roots / ".." / Path(roots).name / ".." / "x"), str(roots / "escape"),
               str(roots / "escape_dir" / "secret.txt"), str(roots / "sub" / ".." / ".." / "etc"),
               "notes.txt", os.path.expanduser("~/.erlang.cookie")]
    for path in refused:
        status, body, _ = exchange(guarded, "POST", "/jobs",
                                   job(op="call", fun=f"{J}:word_count", args=[path]))
        assert (status, body["error"]) == (403, "forbidden"), (path, body)
        assert "data roots" in body["reason"] or "absolute" in body["reason"]
        assert "secret" not in body["reason"] or "secret" in path  # the real target is not told
    # as the item of a map too, and never as a function that gets computed values
    with pytest.raises(Forbidden):
        alice.map(f"{J}:word_count", [str(roots / "notes.txt"), "/etc/passwd"])
    status, body, _ = exchange(guarded, "POST", "/jobs",
                               job(op="fold", fun=f"{J}:sum", fuse=f"{J}:word_count", items=[1], init=0))
    assert status in (403, 404), body  # word_count/1 has no arity-2 form: unknown, or refused
    # module_info would tell where the service is installed
    status, body, _ = exchange(guarded, "POST", "/jobs", job(op="call", fun=f"{J}:module_info", args=[]))
    assert (status, body["error"]) == (404, "unknown_function")
    # legitimate work meanwhile
    assert alice.call(f"{J}:add", 1, 2) == 3


def test_without_data_roots_no_file_is_read(service: Service) -> None:
    svc = Service(token=None).start()
    try:
        status, body, _ = exchange(svc, "POST", "/jobs", job(op="call", fun=f"{J}:word_count",
                                                          args=["/etc/passwd"]), token=None)
        assert (status, body["error"]) == (403, "forbidden")
        assert "none are set" in body["reason"]
        assert Client(svc.url).call(f"{J}:add", 2, 2) == 4
    finally:
        svc.stop()


def test_the_cookie_is_on_no_command_line_and_in_no_config(service: Service) -> None:
    assert service.pid is not None
    pids = [service.pid, *service.worker_pids()]
    assert len(pids) == 3, "the fixture's two workers"
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert service.cookie.encode() not in cmdline and b"-setcookie" not in cmdline, pid
    home = Path(os.readlink(f"/proc/{service.pid}/cwd"))
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    cookie = home / ".erlang.cookie"
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o400 and cookie.read_text() == service.cookie
    assert service.cookie not in (home / "config.json").read_text()
    # a job cannot read it either: it is under no data root
    status, _body, _ = exchange(service, "POST", "/jobs", job(op="call", fun=f"{J}:word_count",
                                                          args=[str(cookie)]), token=None)
    assert status == 403
    # and the cluster still works with it: the workers joined with the same cookie
    assert len(service.client().map(f"{J}:where", list(range(8)), chunk=1)) == 8


# -- browsers can't drive it ---------------------------------------------------------------

def test_a_web_page_cannot_drive_the_service(guarded: Service) -> None:
    add = job(op="call", fun=f"{J}:add", args=[1, 2])
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, body, _ = exchange(guarded, "POST", "/jobs", add, {"Content-Type": ctype})
        assert (status, body["error"]) == (415, "unsupported_media_type"), ctype
    status, body, _ = exchange(guarded, "DELETE", "/jobs/0123456789abcdef", None,
                               {"Content-Type": "text/plain"})
    assert status == 415
    # DNS rebinding: the page's own name in Host
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
        status, body, _ = exchange(guarded, "GET", "/health", headers={"Host": host})
        assert (status, body["error"]) == (400, "bad_host"), host
    with socket.create_connection(("127.0.0.1", port_of(guarded)), timeout=10) as raw:
        raw.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert b" 400 " in raw.recv(4096).split(b"\r\n")[0]
    # a foreign Origin, even with a valid token and JSON
    status, body, _ = exchange(guarded, "POST", "/jobs", add, {"Origin": "http://evil.example"})
    assert (status, body["error"]) == (403, "bad_origin")
    status, body, _ = exchange(guarded, "OPTIONS", "/jobs", None, {"Origin": "http://evil.example"},
                               token=None)
    assert status == 403
    # the service's own origin, and one the operator allowed (with CORS for it)
    own = f"http://127.0.0.1:{port_of(guarded)}"
    status, body, _ = exchange(guarded, "POST", "/jobs", add, {"Origin": own})
    assert (status, body["result"]) == (200, 3)
    status, _, headers = exchange(guarded, "OPTIONS", "/jobs", None, {"Origin": "http://app.example:3000"},
                              token=None)
    assert status == 204 and headers["access-control-allow-origin"] == "http://app.example:3000"
    status, body, headers = exchange(guarded, "POST", "/jobs", add, {"Origin": "http://app.example:3000"})
    assert status == 200 and headers["access-control-allow-origin"] == "http://app.example:3000"
    # loopback names are served
    for host in ("localhost", f"localhost:{port_of(guarded)}", "127.0.0.1"):
        assert exchange(guarded, "GET", "/health", headers={"Host": host})[0] == 200


def test_a_public_bind_without_a_token_refuses_to_start() -> None:
    with pytest.raises(ServiceFailed, match="without a token"):
        Service(bind="0.0.0.0").start()  # refused before anything binds


# -- slow or greedy clients can't starve it -----------------------------------------------

def test_slowloris_gets_evicted_and_legitimate_requests_get_through(guarded: Service) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 3000:
        pytest.skip(f"needs 3000 file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 3000), hard))
    port = port_of(guarded)
    stop = threading.Event()
    stats = {"opened": 0, "closed_by_server": 0}

    def attacker(source: str, count: int) -> None:
        socks: list[socket.socket] = []
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            while len(socks) < count and not stop.is_set():
                s = socket.socket()
                s.settimeout(2)
                s.bind((source, 0))
                try:
                    s.connect(("127.0.0.1", port))
                    s.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                except OSError:
                    s.close()
                    break
                s.setblocking(False)
                socks.append(s)
                stats["opened"] += 1
            alive = []
            for s in socks:  # one more header byte each, now and then
                try:
                    s.send(b"X")
                    alive.append(s)
                except OSError:
                    stats["closed_by_server"] += 1
                    s.close()
            socks = alive
            time.sleep(0.2)
        for s in socks:
            s.close()

    threads = [threading.Thread(target=attacker, args=(src, 1100)) for src in ("127.0.0.2", "127.0.0.3")]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        alice = client(guarded)
        latencies = []
        for i in range(20):
            t0 = time.perf_counter()
            assert alice.call(f"{J}:add", i, 1) == i + 1
            latencies.append(time.perf_counter() - t0)
            status, _, _ = exchange(guarded, "GET", "/health", timeout=10)
            assert status == 200
        opened_during = stats["opened"]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert opened_during >= 2000, stats
    assert stats["closed_by_server"] > 1000, stats
    print(f"slowloris: {stats}; legitimate call max {max(latencies) * 1000:.0f} ms")


def test_a_connection_that_never_finishes_its_headers_is_closed(guarded: Service) -> None:
    with socket.create_connection(("127.0.0.1", port_of(guarded)), timeout=10) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t0 = time.monotonic()
        assert slow.recv(100) == b""  # closed by the header deadline (1 s here), not answered
        assert time.monotonic() - t0 < 9
    with socket.create_connection(("127.0.0.1", port_of(guarded)), timeout=10) as slow:
        slow.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + ALICE.encode() + b"\r\nContent-Length: 100\r\n\r\n{")
        assert slow.recv(100) == b""  # body deadline (2 s here)
    assert exchange(guarded, "GET", "/health")[0] == 200


def test_each_client_gets_its_share_of_the_job_slots(guarded: Service) -> None:
    alice, bob = client(guarded, ALICE), client(guarded, BOB)
    slow = [alice.submit("call", fun=f"{J}:sleep", args=[20000]) for _ in range(4)]
    try:
        status, body, headers = exchange(guarded, "POST", "/jobs",
                                         job(op="call", fun=f"{J}:add", args=[1, 1]))
        assert (status, body["error"]) == (429, "client_share") and headers["retry-after"] == "1"
        # bob still has his: four of his own run while alice's four hold theirs
        bobs = [bob.submit("call", fun=f"{J}:sleep", args=[300]) for _ in range(4)]
        assert [j.result(timeout=30) for j in bobs] == [bobs[0].result(timeout=1)] * 4
        assert bob.call(f"{J}:add", 2, 2) == 4
    finally:
        for j in slow:
            j.cancel()
    assert alice.call(f"{J}:add", 1, 1) == 2


def test_without_tokens_each_peer_address_is_a_client() -> None:
    svc = Service(config={"max_jobs": 4, "max_jobs_per_client": 2}).start()
    try:
        sleeper = job(op="call", fun=f"{J}:sleep", args=[20000], **{"async": True})
        ids = [exchange(svc, "POST", "/jobs", sleeper, source="127.0.0.2", token=None)[1]["id"]
               for _ in range(2)]
        status, body, _ = exchange(svc, "POST", "/jobs", sleeper, source="127.0.0.2", token=None)
        assert (status, body["error"]) == (429, "client_share")
        assert Client(svc.url).call(f"{J}:add", 3, 4) == 7  # from 127.0.0.1
        for i in ids:
            exchange(svc, "DELETE", f"/jobs/{i}", token=None)
    finally:
        svc.stop()


# -- big numbers can't stall it ------------------------------------------------------------

def test_long_json_numbers_are_refused_before_decoding(guarded: Service) -> None:
    huge = b'{"op":"call","fun":"' + J.encode() + b':echo","args":[' + b"7" * 600_000 + b"]}"
    answers: dict[str, Any] = {}

    def attack() -> None:
        t0 = time.perf_counter()
        answers["status"], answers["body"], _ = exchange(guarded, "POST", "/jobs", huge)
        answers["seconds"] = time.perf_counter() - t0

    attacker = threading.Thread(target=attack)
    attacker.start()
    assert exchange(guarded, "GET", "/health")[0] == 200
    attacker.join(60)
    assert (answers["status"], answers["body"]["error"]) == (400, "number_too_long")
    print(f"600,000-digit integer refused in {answers['seconds']:.3f} s")
    alice = client(guarded)
    assert alice.call(f"{J}:echo", int("9" * 4300)) == int("9" * 4300)
    assert alice.call(f"{J}:echo", "1" * 50_000) == "1" * 50_000  # digits in a string are text


# -- finished results have a memory budget -------------------------------------------------

def test_results_are_kept_within_their_byte_budget(guarded: Service) -> None:
    alice = client(guarded)
    first = alice.submit("call", fun=f"{J}:echo", args=["a" * 25_000])
    assert first.result(timeout=30) == "a" * 25_000
    second = alice.submit("call", fun=f"{J}:echo", args=["b" * 25_000])
    second.result(timeout=30)
    third = alice.submit("call", fun=f"{J}:echo", args=["c" * 25_000])
    assert third.result(timeout=30) == "c" * 25_000  # 75 KB > 60 KB: the oldest goes
    with pytest.raises(ResultDropped, match="max_result_bytes"):
        first.result(timeout=5)
    assert alice.job(second.id).result(timeout=5) == "b" * 25_000
    # one result over the whole budget fails its job clearly, sync or not
    with pytest.raises(ResultTooLarge, match="max_result_bytes"):
        alice.call(f"{J}:echo", "x" * 70_000)
    with pytest.raises(ResultTooLarge):
        alice.submit("call", fun=f"{J}:echo", args=["x" * 70_000]).result(timeout=30)
    assert alice.call(f"{J}:add", 1, 1) == 2


# -- accepted work is never lost silently --------------------------------------------------

def test_accepted_jobs_survive_a_crash_of_the_service(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Service(data_dir=data).start()
    port = port_of(first)
    try:
        c = Client(first.url, job_timeout=60)
        done = c.submit("call", fun=f"{J}:add", args=[20, 22])
        assert done.result(timeout=30) == 42
        running = c.submit("call", fun=f"{J}:sleep_square", args=[[1500, 12]])
        outcome: dict[str, Any] = {}

        def wait() -> None:  # a client that keeps waiting through the crash
            try:
                outcome["value"] = c.job(running.id).result(timeout=90)
            except Exception as error:  # reported below
                outcome["error"] = error

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.stop()
    second = Service(data_dir=data, port=port).start()
    try:
        waiter.join(90)
        assert outcome == {"value": 144}, outcome
        assert c.job(done.id).result(timeout=10) == 42  # a finished result is back too
        doomed = c.submit("call", fun=f"{J}:sleep", args=[5000])
        assert second.pid is not None
        os.kill(second.pid, signal.SIGKILL)
    finally:
        second.stop()
    # restarted with the job's module no longer allowed: the job can't run again, and says so
    third = Service(data_dir=data, port=port, config={"job_modules": ["bbc_bench"]}).start()
    try:
        with pytest.raises(JobLost, match="restart"):
            c.job(doomed.id).result(timeout=10)
    finally:
        third.stop()


# -- what errors tell --------------------------------------------------------------------

def test_error_bodies_name_no_installation_paths(guarded: Service) -> None:
    status, body, _ = exchange(guarded, "POST", "/jobs",
                               job(op="map", fun=f"{J}:fail", items=[1, 2], chunk=1))
    assert (status, body["error"]) == (500, "job_failed")
    assert body["stack"] and body["stack"][0]["module"] == J and body["stack"][0]["function"] == "fail"
    assert all(not f["module"].startswith(("bbc_plists", "bbc_exec", "bbc_jobs")) for f in body["stack"])
    assert all("/" not in f.get("file", "") for f in body["stack"])
    with pytest.raises(JobFailed) as failed:
        client(guarded).call(f"{J}:fail", 3)
    assert "(bbc_sample_jobs.erl:" in str(failed.value)  # the file, without its folders
    assert "/" not in json.dumps(exchange(guarded, "POST", "/jobs", b"{nope")[1])


def test_the_client_reports_an_oversized_request_as_payload_too_large(service: Service) -> None:
    with pytest.raises(PayloadTooLarge, match="limit of 8388608"):
        service.client().call(f"{J}:echo", "x" * (9 << 20))
    assert service.client().call(f"{J}:add", 1, 1) == 2


# -- found by an attack review --------------------------------------------------------------

@pytest.fixture(scope="module")
def tight(roots: Path) -> Iterator[Service]:
    """Few connection slots, to see which connection gives way."""
    config = {"max_connections": 40, "max_connections_per_peer": 10, "header_timeout_ms": 3000,
              "body_timeout_ms": 8000, "max_finished_jobs": 5, "result_ttl_s": 600}
    svc = Service(config=config, data_roots=[roots]).start()
    try:
        yield svc
    finally:
        svc.stop()


def test_long_polls_cannot_hold_the_connection_slots(tight: Service) -> None:
    slow = Client(tight.url).submit("call", fun=f"{J}:sleep", args=[15000])
    polls: list[socket.socket] = []
    try:
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            for _ in range(10):
                s = socket.socket()
                s.bind((source, 0))
                s.connect(("127.0.0.1", port_of(tight)))
                s.sendall(f"GET /jobs/{slow.id}?wait=60000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                polls.append(s)
        time.sleep(0.5)
        for _ in range(5):  # each legitimate request gets in, taking a poller's slot
            assert exchange(tight, "GET", "/health", token=None, timeout=10)[0] == 200
    finally:
        for s in polls:
            s.close()
        slow.cancel()
    assert exchange(tight, "GET", "/health", token=None)[0] == 200


def test_a_flood_evicts_its_own_connections_not_a_slow_legitimate_upload(tight: Service) -> None:
    stop = threading.Event()

    def churn() -> None:  # many connections from one address, never finishing a request
        held: list[socket.socket] = []
        deadline = time.monotonic() + 15
        while not stop.is_set() and time.monotonic() < deadline:
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            try:
                s.connect(("127.0.0.1", port_of(tight)))
                s.sendall(b"GET /health HTTP/1.1\r\n")
            except OSError:
                s.close()
                continue
            held.append(s)
            if len(held) > 200:
                held.pop(0).close()
            time.sleep(0.002)
        for s in held:
            s.close()

    flood = threading.Thread(target=churn)
    flood.start()
    try:
        time.sleep(0.5)
        body = b'{"op":"call","fun":"bbc_sample_jobs:echo","args":["' + b"z" * 200_000 + b'"]}'
        with socket.create_connection(("127.0.0.1", port_of(tight)), timeout=20) as up:
            up.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            for i in range(0, len(body), 20_000):  # about 1 s, past the floods' churn
                up.sendall(body[i:i + 20_000])
                time.sleep(0.1)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = up.recv(65536)
                assert chunk, "the upload was cut off"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
    finally:
        stop.set()
        flood.join(30)


def test_a_body_may_take_its_own_deadline_not_the_headers(tight: Service) -> None:
    body = job(op="call", fun=f"{J}:add", args=[20, 22])
    with socket.create_connection(("127.0.0.1", port_of(tight)), timeout=20) as up:
        up.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        time.sleep(4)  # past header_timeout_ms (3 s), within body_timeout_ms (8 s)
        up.sendall(body)
        answer = up.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200") and b'"result":42' in answer, answer


def test_malformed_framing_is_refused_and_the_connection_closed(tight: Service) -> None:
    cases = [(b"Content-Length: 1x\r\n", b" 400 "), (b"Transfer-Encoding: Chunked\r\n", b" 501 "),
             (b"Transfer-Encoding: gzip\r\n", b" 501 ")]
    for header, status in cases:
        with socket.create_connection(("127.0.0.1", port_of(tight)), timeout=10) as raw:
            raw.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        + header + b"\r\n5\r\nhello\r\n0\r\n\r\n")
            answer = b""
            while chunk := raw.recv(65536):
                answer += chunk
        assert status in answer.split(b"\r\n")[0], (header, answer)
        assert b'"error"' in answer
    for host in (b"[::1]evil.example", b"[::1]:", b"[::1]x:80"):
        with socket.create_connection(("127.0.0.1", port_of(tight)), timeout=10) as raw:
            raw.sendall(b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
            assert b" 400 " in raw.recv(65536).split(b"\r\n")[0], host
    assert exchange(tight, "GET", "/health", headers={"Host": "[::1]:8080"}, token=None)[0] == 200
    log = tight.log_text()
    assert "should_close" not in log and "crash" not in log.lower(), log[-2000:]


def test_no_data_root_reaches_the_services_own_files(tmp_path: Path) -> None:
    # A data root as wide as the folder the service keeps its cookie, config and jobs in.
    root = Path(tempfile_dir())
    svc = Service(token="tok-1", data_roots=[root]).start()
    try:
        home = Path(os.readlink(f"/proc/{svc.pid}/cwd"))
        assert home.is_relative_to(root.resolve())
        for private in (home / ".erlang.cookie", home / "config.json", home / "service.log",
                        home / "data" / "jobs"):
            status, body, _ = exchange(svc, "POST", "/jobs", job(op="call", fun=f"{J}:word_count",
                                                                  args=[str(private)]), token="tok-1")
            assert (status, body["error"]) == (403, "forbidden"), (private, body)
            assert "private" in body["reason"]
        other = tmp_path / "fine.txt"
        other.write_text("fine words")
        if other.resolve().is_relative_to(root.resolve()):
            assert sorted(Client(svc.url, token="tok-1").call(f"{J}:word_count", str(other))) == \
                [["fine", 1], ["words", 1]]
    finally:
        svc.stop()


def tempfile_dir() -> str:
    """Where Service makes its private folder."""
    import tempfile

    from beambridge.compute._service import _runtime_dir

    return _runtime_dir() or tempfile.gettempdir()


def test_finished_jobs_are_bounded_in_number_and_their_requests_leave_the_disk(tmp_path: Path) -> None:
    svc = Service(config={"max_finished_jobs": 3}, data_dir=tmp_path / "data").start()
    try:
        c = Client(svc.url)
        jobs = [c.submit("call", fun=f"{J}:echo", args=[" " * 1000 + str(i)]) for i in range(5)]
        assert [j.result(timeout=30).strip() for j in jobs[2:]] == ["2", "3", "4"]
        folder = tmp_path / "data" / "jobs"
        deadline = time.monotonic() + 10  # files are written after the answers, in the background
        while time.monotonic() < deadline and (list(folder.glob("*.job"))
                                               or len(list(folder.glob("*.done"))) > 3):
            time.sleep(0.05)
        assert list(folder.glob("*.job")) == []  # outcomes replaced requests
        assert len(list(folder.glob("*.done"))) == 3
        with pytest.raises(NotFound):
            jobs[0].status()
        assert c.call(f"{J}:add", 1, 1) == 2
    finally:
        svc.stop()


def test_a_token_sees_only_its_own_jobs(guarded: Service) -> None:
    mine = client(guarded, ALICE).submit("call", fun=f"{J}:add", args=[1, 2])
    assert mine.result(timeout=30) == 3
    with pytest.raises(NotFound):
        client(guarded, BOB).job(mine.id).status()
    status, _, _ = exchange(guarded, "DELETE", f"/jobs/{mine.id}", token=BOB)
    assert status == 404
    assert client(guarded, ALICE).job(mine.id).result(timeout=5) == 3
    # the scheme is case-insensitive, as HTTP says
    assert exchange(guarded, "GET", "/nodes", headers={"Authorization": f"bearer {ALICE}"},
                    token=None)[0] == 200


def test_recovered_jobs_wait_for_a_slot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Service(data_dir=data, config={"max_jobs": 4, "max_jobs_per_client": 4}).start()
    port = port_of(first)
    try:
        c = Client(first.url)
        jobs = [c.submit("call", fun=f"{J}:sleep_square", args=[[400, i]]) for i in range(4)]
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.stop()
    second = Service(data_dir=data, port=port, config={"max_jobs": 1}).start()
    try:
        most = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(j.status().finished for j in jobs):
            most = max(most, c.health()["jobs_running"])
            time.sleep(0.05)
        assert [j.result(timeout=5) for j in jobs] == [0, 1, 4, 9]
        assert most == 1  # one at a time, as the restarted service's max_jobs says
    finally:
        second.stop()


def test_a_request_smuggled_in_a_refused_body_never_runs(guarded: Service, roots: Path) -> None:
    """A page may POST text/plain cross-site; if its unread body were parsed as the next
    request on the connection, a JSON POST hidden in it would run."""
    inner = job(op="call", fun=f"{J}:word_count", args=[str(roots / "notes.txt")])
    smuggled = (b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + ALICE.encode() + b"\r\nContent-Length: "
                + str(len(inner)).encode() + b"\r\n\r\n" + inner)
    for outer_type in (b"text/plain", b"application/json"):  # refused as 415, and as 401
        auth = b"" if outer_type == b"text/plain" else b"Authorization: Bearer wrong\r\n"
        with socket.create_connection(("127.0.0.1", port_of(guarded)), timeout=10) as raw:
            raw.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + outer_type + b"\r\n"
                        + auth + b"Content-Length: " + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
            answer = b""
            while chunk := raw.recv(65536):
                answer += chunk
        assert answer.count(b"HTTP/1.1 ") == 1, answer  # one answer, then the connection closed
        assert b"alpha" not in answer and (b" 415 " in answer or b" 401 " in answer)
