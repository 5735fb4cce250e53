"""Run beambridge's benchmarks: ``python bench/run.py [--only codec|node|compute] [bench options]``.

With no ``--only`` the codec benchmark runs. Each benchmark is its own script
(``bench/<name>_bench.py``), run with this interpreter; options this script does not know are
passed on to it (for example ``--quick``). ``--all`` runs every benchmark present, and
``--install-peers`` installs the PyPI peers listed in pyproject's ``bench`` extra one at a time, so
one that fails to build does not keep the others out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("codec", "node", "compute")


def script(name: str) -> Path:
    return HERE / f"{name}_bench.py"


def install_peers() -> int:
    """pip-install each package of the ``bench`` extra; report which ones failed."""
    project = tomllib.loads((HERE.parent / "pyproject.toml").read_text())
    peers = project["project"]["optional-dependencies"].get("bench", [])
    failed = []
    for requirement in peers:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", requirement],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            failed.append(requirement)
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            print(f"bench: could not install {requirement}; it is left out:", *tail, sep="\n  ")
    print(f"bench peers installed: {len(peers) - len(failed)} of {len(peers)}"
          + (f" (failed: {', '.join(failed)})" if failed else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run beambridge's benchmarks.")
    parser.add_argument("--only", choices=BENCHES, help="run just this benchmark")
    parser.add_argument("--all", action="store_true", help="run every benchmark present")
    parser.add_argument("--install-peers", action="store_true",
                        help="pip-install the bench extra's peers one by one, then exit")
    args, rest = parser.parse_known_args(argv)
    if args.install_peers:
        return install_peers()
    if args.only:
        chosen = [args.only]
    elif args.all:
        chosen = [name for name in BENCHES if script(name).exists()]
    else:
        chosen = ["codec"]
    status = 0
    for name in chosen:
        path = script(name)
        if not path.exists():
            print(f"bench: {path.relative_to(HERE.parent)} does not exist (yet)", file=sys.stderr)
            status = 2
            continue
        if len(chosen) > 1:
            print(f"\n=== {name} ===", flush=True)
        status = subprocess.run([sys.executable, str(path), *rest]).returncode or status
    return status


if __name__ == "__main__":
    sys.exit(main())
