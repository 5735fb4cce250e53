"""``GET /functions``, ``Client.functions()`` and ``beambridge compute jobs``: what a service
allows, with each function's doc, against a real service with the sample jobs and a user's
own module (documented with ``-bbc_doc``, one function left undocumented)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from beambridge import otp
from beambridge.compute import AsyncClient, Client, JobFunction, Service, Unauthorized

pytestmark = pytest.mark.erlang

TOKEN = "fn-list-token"

USER_MODULE = """\
-module(my_listed_jobs).
-export([shout/1, quiet/1, read_it/1]).
-bbc_doc({shout, 1, "Upper-cases a string.\\nA second line the CLI leaves out."}).
-bbc_reads_files([{read_it, 1}]).
-bbc_doc([{read_it, 1, <<"Reads a file.">>}]).
shout(S) -> string:uppercase(S).
quiet(S) -> S.
read_it(P) -> file:read_file(P).
"""


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("listed")
    (folder / "my_listed_jobs.erl").write_text(USER_MODULE)
    subprocess.run([str(otp.erlc()), "-Wall", "-o", str(folder), str(folder / "my_listed_jobs.erl")],
                   check=True, capture_output=True, timeout=120)
    service = Service(token=TOKEN, config={
        "job_modules": ["bbc_sample_jobs", "my_listed_jobs", "no_such_module"],
        "code_paths": [str(folder)]}).start()
    try:
        yield service
    finally:
        service.stop()


def _by_signature(listed: list[JobFunction]) -> dict[str, JobFunction]:
    return {f.signature: f for f in listed}


def test_lists_the_sample_jobs_with_docs_and_nothing_else(svc: Service) -> None:
    with svc.client() as client:
        listed = _by_signature(client.functions())
    for signature in ("bbc_sample_jobs:square/1", "bbc_sample_jobs:add/2", "bbc_sample_jobs:sum/2",
                      "bbc_sample_jobs:word_count/1", "bbc_sample_jobs:collatz_longest/2",
                      "bbc_sample_jobs:nothing/0"):
        assert signature in listed, signature
    # Every sample job is documented (the module's -bbc_doc covers all its exports).
    samples = [f for f in listed.values() if f.name.startswith("bbc_sample_jobs:")]
    assert len(samples) >= 17
    assert all(f.doc for f in samples), [f.signature for f in samples if not f.doc]
    assert listed["bbc_sample_jobs:square/1"].summary.startswith("X * X")
    assert listed["bbc_sample_jobs:word_count/1"].reads_files
    assert not listed["bbc_sample_jobs:square/1"].reads_files
    # Never module_info, never a module outside job_modules (the service's own, lists, ...).
    assert not [s for s in listed if ":module_info/" in s]
    assert {s.partition(":")[0] for s in listed} == {"bbc_sample_jobs", "my_listed_jobs"}


def test_a_users_module_documents_itself_with_bbc_doc(svc: Service) -> None:
    with svc.client() as client:
        listed = _by_signature(client.functions())
        shout = listed["my_listed_jobs:shout/1"]
        assert shout.doc == "Upper-cases a string.\nA second line the CLI leaves out."
        assert shout.summary == "Upper-cases a string."
        assert listed["my_listed_jobs:quiet/1"].doc is None
        assert listed["my_listed_jobs:read_it/1"] == JobFunction("my_listed_jobs:read_it", 1,
                                                                 "Reads a file.", True)
        # What is listed can be called.
        assert client.call("my_listed_jobs:shout", "hi") == "HI"


def test_the_listing_needs_the_token(svc: Service) -> None:
    with Client(svc.url) as anonymous, pytest.raises(Unauthorized) as refused:
        anonymous.functions()
    assert refused.value.status == 401
    with Client(svc.url, token="wrong") as wrong, pytest.raises(Unauthorized):
        wrong.functions()
    # The async twin sees the same listing.
    async def listing() -> list[JobFunction]:
        async with AsyncClient(svc.url, token=TOKEN) as client:
            return await client.functions()
    with svc.client() as client:
        assert asyncio.run(listing()) == client.functions()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "beambridge", "compute", "jobs", *args],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent)


def test_cli_prints_the_listing(svc: Service) -> None:
    done = _cli("--url", svc.url, "--token", TOKEN)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    square = next(line for line in lines if line.startswith("bbc_sample_jobs:square/1 "))
    assert "X * X" in square
    shout = next(line for line in lines if line.startswith("my_listed_jobs:shout/1 "))
    assert shout.rstrip().endswith("Upper-cases a string.")
    assert "second line" not in done.stdout
    assert any(line.startswith("my_listed_jobs:quiet/1 ") and "(no doc)" in line for line in lines)
    assert "reads files" in next(line for line in lines if line.startswith("bbc_sample_jobs:word_count/1"))
    assert "module_info" not in done.stdout
    as_json = json.loads(_cli("--url", svc.url, "--token", TOKEN, "--json").stdout)
    assert {"name": "bbc_sample_jobs:square", "arity": 1, "doc": square.split(None, 1)[1].strip(),
            "reads_files": False} in as_json


def test_cli_without_the_token_says_so(svc: Service) -> None:
    done = _cli("--url", svc.url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "401" in done.stderr and "--token" in done.stderr
