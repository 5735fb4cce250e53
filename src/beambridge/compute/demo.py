"""The main job's demonstration: a map/reduce word count over the installed Python
standard library's source files, on a local cluster of worker nodes, beside the same
count in plain Python.

The Python side only lists the files; each worker node reads and counts its share
(``bbc_sample_jobs:word_count``: runs of ASCII letters, lower-cased) and the counts are
summed per chunk and once more at the end. Everything started here is stopped here.
"""

from __future__ import annotations

import collections
import re
import sysconfig
import time
from pathlib import Path

from ._service import Service

_WORD = re.compile(rb"[A-Za-z]+")


def stdlib_sources() -> list[str]:
    """Every ``.py`` file of the standard library (third-party packages left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(str(p) for p in root.rglob("*.py")
                  if "site-packages" not in p.parts and "dist-packages" not in p.parts)


def count_in_python(paths: list[str]) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError:
            continue
        counts.update(w.decode().lower() for w in _WORD.findall(data))
    return dict(counts)


def run(local_nodes: int = 2, top: int = 15) -> int:
    """Run the demo, print what it found; 0 when both counts agree."""
    paths = stdlib_sources()
    size = sum(Path(p).stat().st_size for p in paths)
    print(f"word count over {len(paths)} standard-library files ({size / 1e6:.1f} MB) "
          f"under {sysconfig.get_paths()['stdlib']}")
    started = time.perf_counter()
    # The word count reads files: the service may read under the standard library only.
    with Service(local_nodes=local_nodes, data_roots=[sysconfig.get_paths()["stdlib"]]) as service:
        boot = time.perf_counter() - started
        client = service.client(job_timeout=600)
        workers = [n["name"] for n in client.nodes() if n["role"] != "service"]
        print(f"cluster up in {boot:.1f} s: service {service.node} at {service.url}, "
              f"workers {', '.join(workers)}")
        t0 = time.perf_counter()
        counts = client.mapreduce("bbc_sample_jobs:word_count", paths, "bbc_sample_jobs:sum_counts",
                                  chunk=max(1, len(paths) // (8 * max(1, local_nodes))))
        erlang_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    expected = count_in_python(paths)
    python_time = time.perf_counter() - t0
    print(f"\ntop {top} words of {sum(counts.values()):,} ({len(counts):,} distinct):")
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]:
        print(f"  {word:<16}{n:>10,}")
    print(f"\nErlang map/reduce on {local_nodes} worker nodes (incl. HTTP+JSON): {erlang_time:.2f} s")
    print(f"plain Python, one process:                         {python_time:.2f} s")
    same = counts == expected
    print("the two counts are " + ("identical" if same else "DIFFERENT"))
    print("everything started was stopped")
    return 0 if same else 1
