"""What a pip user gets: the sdist carries the examples, the Erlang side and the benchmarks (run
from the unpacked sdist), and the wheel's Python files carry the Erlang sources the package
builds at run time into the user's cache (``beambridge/_erlang``).

Both are built offline with the setuptools already installed (no build isolation, no compiler:
the compiled codec is ``tests/test_package.py``'s slow wheel test)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SDIST_MUST_HAVE = [
    "README.md", "SECURITY.md", "pyproject.toml", "setup.py",
    "src/beambridge/__init__.py", "src/beambridge/term/_cterm.c", "src/beambridge/py.typed",
    "examples/README.md", "examples/flask_app/run.py", "examples/django_project/run.py",
    "examples/django_project/manage.py",
    "erlang/beambridge_compute/README.md", "erlang/beambridge_compute/src/bbc_http.erl",
    "erlang/beambridge_compute/src/bbc_sample_jobs.erl",
    "erlang/beambridge_compute/src/beambridge_compute.app.src",
    "erlang/bbc_plists/src/bbc_plists.erl", "erlang/beambridge/src/bb_term_port.erl",
    "erlang/beambridge_web/src/beambridge_web.app.src",
    "bench/README.md", "bench/run.py",
]


def _junk(name: str) -> bool:
    parts = name.split("/")
    return (name.endswith((".beam", ".pyc", ".so")) or "__pycache__" in parts or "_build" in parts
            or "ebin" in parts or ".venv" in parts or ".git" in parts)


def test_sdist_carries_examples_erlang_and_bench(tmp_path: Path) -> None:
    # egg_info goes to tmp too: nothing is written into the checkout.
    done = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
                           "sdist", "-d", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sdist, = tmp_path.glob("beambridge-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    missing = [n for n in SDIST_MUST_HAVE if n not in names]
    assert missing == [], f"not in the sdist: {missing}"
    assert [n for n in names if _junk(n)] == []
    # Every Erlang source of the checkout is there (a new application is shipped without a word).
    erlang = {str(p.relative_to(ROOT)) for p in (ROOT / "erlang").rglob("*") if p.is_file()
              and not _junk(str(p.relative_to(ROOT)))}
    assert erlang - set(names) == set()


def test_wheel_files_carry_the_erlang_side_and_installed_code_builds_it_in_the_cache(
        tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shipped = site / "beambridge" / "_erlang"
    for name in ("beambridge_compute/src/bbc_http.erl", "beambridge_compute/src/beambridge_compute.app.src",
                 "bbc_plists/src/bbc_plists.erl", "beambridge/src/bb_term_port.erl",
                 "beambridge_web/src/beambridge_web.app.src"):
        assert (shipped / name).is_file(), name
    assert not list(shipped.rglob("*.beam"))
    # Imported from there (not the checkout), the package finds that copy and builds into the cache.
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(cache), "BEAMBRIDGE_PURE_PYTHON": "1"}
    env.pop("BEAMBRIDGE_BUILD_DIR", None)
    script = ("from beambridge import otp; print(otp.erlang_source_dir()); print(otp.build_dir()); "
              "print(otp.build_erlang_app('beambridge'))")
    if not _erlc():
        script = script.rsplit(";", 1)[0]
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split()
    assert Path(lines[0]) == shipped
    assert Path(lines[1]).is_relative_to(cache / "beambridge")
    if len(lines) > 2:
        assert (Path(lines[2]) / "bb_term_port.beam").is_file()
    else:
        pytest.skip("erlc is missing: the build into the cache was not tried")


def _erlc() -> bool:
    import shutil

    return shutil.which("erlc") is not None
