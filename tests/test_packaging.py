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
    "src/beambridge/__init__.py", "src/beambridge/term/_cterm.c", "src/beambridge/node/_cwait.c",
    "src/beambridge/py.typed",
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


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    # egg_info goes to tmp too: nothing is written into the checkout.
    done = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(out),
                           "sdist", "-d", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    built, = out.glob("beambridge-*.tar.gz")
    return built


def test_sdist_carries_examples_erlang_and_bench(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    missing = [n for n in SDIST_MUST_HAVE if n not in names]
    assert missing == [], f"not in the sdist: {missing}"
    assert [n for n in names if _junk(n)] == []
    # Every Erlang source of the checkout is there (a new application is shipped without a word).
    erlang = {str(p.relative_to(ROOT)) for p in (ROOT / "erlang").rglob("*") if p.is_file()
              and not _junk(str(p.relative_to(ROOT)))}
    assert erlang - set(names) == set()


@pytest.mark.erlang
def test_an_example_runs_from_the_unpacked_sdist(sdist: Path, tmp_path: Path) -> None:
    """What the README tells a pip user: unpack the sdist, run an example there (it builds its
    Erlang side from the sdist's erlang/ into the sdist's own _build)."""
    pytest.importorskip("flask")
    pytest.importorskip("gunicorn")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    unpacked, = tmp_path.glob("beambridge-*")
    env = {k: v for k, v in os.environ.items() if k not in ("BEAMBRIDGE_BUILD_DIR", "PYTHONPATH")}
    done = subprocess.run([sys.executable, "examples/flask_app/run.py", "--smoke"], cwd=unpacked,
                          env=env, capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "-> 200" in output, output[-4000:]
    assert (unpacked / "_build" / "erlang" / "beambridge_web" / "ebin").is_dir()


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


def test_a_built_app_carries_its_priv_folder() -> None:
    """``code:priv_dir/1`` and a release look beside ``ebin/``: the dashboard's files are there."""
    from beambridge import otp

    ebin = otp.build_erlang_app("beambridge_compute")
    source = otp.erlang_source_dir() / "beambridge_compute" / "priv" / "dashboard"
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        assert (ebin.parent / "priv" / "dashboard" / name).read_bytes() == (source / name).read_bytes()
