"""The Erlang library's own EUnit tests, run in a real distributed erl on every OTP
release found (OTP 28's bundled runtime lacks eunit: Debian's is added to its path)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from beambridge import otp
from beambridge.compute._service import APP, _debian_lib

TESTS = Path(otp.erlang_source_dir()) / APP / "test"
PLISTS_TESTS = Path(otp.erlang_source_dir()) / "bbc_plists" / "test"


def run_eunit(runtime: otp.Runtime, modules: list[str], paths: list[Path], tmp: Path) -> str:
    spec = "[" + ",".join(modules) + "]"
    script = (f"R = eunit:test({spec}, []), "
              "io:format(\"~neunit_result ~p~n\", [R]), halt(case R of ok -> 0; _ -> 1 end).")
    name = f"bbceunit_{secrets.token_hex(3)}_{os.getpid()}@127.0.0.1"
    command = [str(runtime.erl), "-noshell", "-name", name,
               "-setcookie", secrets.token_hex(8), "-connect_all", "false",
               "-kernel", "inet_dist_use_interface", "{127,0,0,1}"]
    for path in paths:
        command += ["-pa", str(path)]
    env = runtime.environ()
    env.setdefault("ERL_EPMD_ADDRESS", "127.0.0.1")
    done = subprocess.run([*command, "-eval", script], capture_output=True, text=True, timeout=240,
                          env=env, cwd=tmp)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


@pytest.mark.erlang
def test_plists_eunit(otp_runtime: otp.Runtime, tmp_path: Path) -> None:
    plists = otp.build_erlang_app("bbc_plists")
    ebin = otp.build_erlang_app(APP)
    out = tmp_path / "ebin"
    out.mkdir()
    tests = [*sorted(PLISTS_TESTS.glob("*.erl")), *sorted(TESTS.glob("*.erl"))]
    subprocess.run([str(otp.erlc()), "-o", str(out), "-pa", str(ebin), "-pa", str(plists),
                    *map(str, tests)], check=True, capture_output=True, timeout=120)
    paths = [out, plists, ebin]
    eunit = _debian_lib("eunit-")
    if eunit is not None and not any((otp_runtime.root / "lib").glob("eunit-*")):
        paths.append(eunit)
    output = run_eunit(otp_runtime, [p.stem for p in tests if p.stem.endswith("_tests")], paths, tmp_path)
    match = re.search(r"All (\d+) tests passed", output)
    assert match, output[-4000:]
    assert int(match.group(1)) >= 20
