"""Real compute services for the tests: real erl nodes, real MochiWeb, loopback HTTP.

``service`` has two local worker nodes and the default limits; ``limited`` requires a
token and has tiny limits (2 jobs in flight, 2000-byte bodies) to reach every error code.
Both are started once per module and stopped by pid.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator

import pytest

from beambridge.compute import Service

TOKEN = "s3cret-token"


@pytest.fixture(scope="package")
def service() -> Iterator[Service]:
    # word_count tests read the standard library's sources: that is the data root named.
    svc = Service(local_nodes=2, config={"max_jobs": 200, "max_jobs_per_client": 200},
                  data_roots=[sysconfig.get_paths()["stdlib"]]).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="package")
def limited() -> Iterator[Service]:
    svc = Service(token=TOKEN, config={"max_jobs": 2, "max_jobs_per_client": 2, "max_body": 2000,
                                      "result_ttl_s": 60}).start()
    try:
        yield svc
    finally:
        svc.stop()
