"""A worker node named in the config (not started by the service) is joined, and the job
code it lacks is pushed to it: the node here is a bare ``erl`` with no beambridge code."""

from __future__ import annotations

import os
import secrets
import subprocess
import time

import pytest

from beambridge import otp
from beambridge.compute import Service

pytestmark = pytest.mark.erlang


def test_config_nodes_are_joined_and_get_the_code() -> None:
    runtime = otp.default_runtime()
    cookie = secrets.token_hex(8)
    name = f"bbcbare_{secrets.token_hex(3)}_{os.getpid()}@127.0.0.1"
    env = runtime.environ()
    env.setdefault("ERL_EPMD_ADDRESS", "127.0.0.1")
    bare = subprocess.Popen([str(runtime.erl), "-noinput", "-name", name, "-setcookie", cookie,
                             "-connect_all", "false"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Service(config={"nodes": [name], "cookie": cookie}) as svc:
            client = svc.client()
            deadline = time.monotonic() + 30
            while not any(n["name"] == name and n["status"] == "up" for n in client.nodes()):
                assert time.monotonic() < deadline, client.nodes()
                time.sleep(0.2)
            assert client.map("bbc_sample_jobs:where", [1, 2, 3], chunk=1) == [[i, name] for i in (1, 2, 3)]
            assert client.map("bbc_sample_jobs:square", [4], nodes=[name]) == [16]
            role = next(n["role"] for n in client.nodes() if n["name"] == name)
            assert role == "remote"
        assert bare.poll() is None  # a joined node is not ours to stop
    finally:
        bare.terminate()
        bare.wait(20)
