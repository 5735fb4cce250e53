"""The main job's computation in Python, as a Python developer would write it: which start
below a bound has the longest Collatz chain (Project Euler 14), in one process and in a
``multiprocessing`` pool on every core. The same algorithm as ``bbc_sample_jobs:
collatz_longest/2`` (no cache, the smallest start on a tie), so the answers must be equal.
"""

from __future__ import annotations

import os
import signal
from multiprocessing import get_context

__all__ = ["chunks", "fuse", "in_one_process", "in_processes", "longest"]

Best = list[int]  # [start, steps], as the Erlang job returns it


def longest(lo: int, hi: int) -> Best:
    """The start in ``[lo, hi)`` with the longest chain, and its number of steps."""
    best_n = best_s = 0
    for n in range(lo, hi):
        s, m = 0, n
        while m != 1:
            m = 3 * m + 1 if m & 1 else m >> 1
            s += 1
        if s > best_s:
            best_n, best_s = n, s
    return [best_n, best_s]


def fuse(a: Best, b: Best) -> Best:
    """The better of two answers: more steps, else the smaller start."""
    if a[1] != b[1]:
        return a if a[1] > b[1] else b
    return [min(a[0], b[0]), a[1]]


def chunks(below: int, count: int) -> list[list[int]]:
    """``[lo, hi]`` ranges covering ``[1, below)`` in ``count`` near-equal parts."""
    step = max(1, -(-(below - 1) // count))
    return [[lo, min(lo + step, below)] for lo in range(1, below, step)]


def in_one_process(below: int) -> Best:
    return longest(1, below)


def _range(bounds: list[int]) -> Best:
    return longest(bounds[0], bounds[1])


def _quiet_worker() -> None:
    # A terminal's Ctrl-C reaches the whole process group: the parent stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def in_processes(below: int, processes: int | None = None, parts: int = 100) -> Best:
    """The same over a process pool (one process per core by default): what
    ``multiprocessing`` buys a Python developer on this machine."""
    ranges = chunks(below, parts)
    pool = get_context("fork").Pool(processes or os.cpu_count() or 1, initializer=_quiet_worker)
    try:
        best: Best = [0, 0]
        for part in pool.imap_unordered(_range, ranges):
            best = fuse(best, part)
        return best
    finally:  # on success, Ctrl-C and SIGTERM alike: no worker outlives the call
        pool.terminate()
        pool.join()
