"""Clients we did not write (Elixir, erl_interface's ei, Jinterface, erl_call, a nameless ``erl``)
against a beambridge node.

The node tests' fixtures serve here too (a private EPMD for the session, a ``py`` node;
loopback only, unique names). Each client reports its results back to a Python
mailbox as Erlang terms, so the tests check terms rather than parse printed text. A client whose
package is not installed is skipped with the Debian package to install; every process a test
starts is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from beambridge import otp
from tests.node.conftest import (  # noqa: F401  (epmd_port, py: fixtures shared with tests/node)
    COOKIE,
    epmd_port,
    py,
    unique,
)

__all__ = ["CLIENTS", "COOKIE", "client", "unique"]

CLIENTS = Path(__file__).parent / "clients"


@contextlib.contextmanager
def client(command: Sequence[str], epmd: int, tmp_path: Path, *,
           env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run a client program in ``tmp_path`` (where a crash dump would go), its output in a file
    shown when the test fails; killed by its pid if still running when the block ends."""
    out = tmp_path / f"{Path(command[0]).name}.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**(env or os.environ), "ERL_EPMD_PORT": str(epmd)})
        try:
            yield proc
        except BaseException:
            print(f"--- output of {command[0]} ---\n{out.read_text(errors='replace')}")
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def system_otp() -> otp.Runtime:
    """Debian's OTP: the one that brings erl_interface, Jinterface, and runs Debian's Elixir."""
    return otp.default_runtime()


@pytest.fixture(scope="session")
def elixir() -> str:
    found = shutil.which("elixir")
    if found is None:
        pytest.skip("Elixir is not installed (Debian package: elixir)")
    return found


@pytest.fixture(scope="session")
def erl_interface(system_otp: otp.Runtime) -> Path:
    """The erl_interface folder with ei.h and libei.a (Debian's erlang-dev), and gcc."""
    for folder in sorted(system_otp.root.glob("lib/erl_interface-*"), reverse=True):
        if (folder / "include" / "ei.h").exists() and (folder / "lib" / "libei.a").exists():
            break
    else:
        pytest.skip("erl_interface headers and libei.a not found (Debian package: erlang-dev)")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (Debian package: gcc)")
    return folder


@pytest.fixture(scope="session")
def jinterface(system_otp: otp.Runtime) -> Path:
    """OtpErlang.jar (Debian's erlang-jinterface), and a java that runs a source file (the
    jdk.compiler module: a JDK, not only a JRE)."""
    jars = [Path("/usr/share/java/OtpErlang.jar"),
            *sorted(system_otp.root.glob("lib/jinterface-*/priv/OtpErlang.jar"), reverse=True)]
    jar = next((j for j in jars if j.exists()), None)
    if jar is None:
        pytest.skip("Jinterface's OtpErlang.jar not found (Debian package: erlang-jinterface)")
    java = shutil.which("java")
    if java is None:
        pytest.skip("java is not installed (Debian package: openjdk-17-jdk-headless)")
    modules = subprocess.run([java, "--list-modules"], capture_output=True, text=True, timeout=60)
    if "jdk.compiler" not in modules.stdout:
        pytest.skip("java cannot run a source file without jdk.compiler "
                    "(Debian package: openjdk-17-jdk-headless)")
    return jar
