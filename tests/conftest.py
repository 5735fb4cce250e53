"""Shared fixtures: the Erlang runtimes that integration tests run on.

Every test that takes ``otp_runtime`` runs once per release found (ids ``otp25``, ``otp28``), so a
failure names the release. In CI both releases must be present: a missing one fails the run
instead of silently testing less.
"""

from __future__ import annotations

import os

import pytest

from beambridge import otp

REQUIRED_RELEASES = {25, 28}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "otp_runtime" in metafunc.fixturenames:
        runtimes = otp.find_runtimes()
        metafunc.parametrize("otp_runtime", runtimes, ids=[f"otp{r.major}" for r in runtimes],
                             scope="session")


def pytest_sessionstart(session: pytest.Session) -> None:
    found = {r.major for r in otp.find_runtimes()}
    missing = REQUIRED_RELEASES - found
    if missing and os.environ.get("CI"):
        raise pytest.UsageError(
            f"CI needs OTP releases {sorted(REQUIRED_RELEASES)}; missing {sorted(missing)}")
