"""Strict equality for decoded terms: same types all the way down, floats by their bits.

Python's ``==`` says ``1 == 1.0 == True`` and ``0.0 == -0.0``; Erlang's ``=:=`` does not, and
neither may the codec's round trips.
"""

from __future__ import annotations

import struct
from typing import Any

from beambridge import BitString, Fun, ImproperList, Map


def strict_eq(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return struct.pack(">d", a) == struct.pack(">d", b)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(map(strict_eq, a, b))
    if type(a) is dict:
        if len(a) != len(b):
            return False
        return all(any(strict_eq(k, k2) and strict_eq(v, v2) for k2, v2 in b.items())
                   for k, v in a.items())
    if type(a) is Map:
        remaining = list(b.items())
        for k, v in a.items():
            for i, (k2, v2) in enumerate(remaining):
                if strict_eq(k, k2) and strict_eq(v, v2):
                    del remaining[i]
                    break
            else:
                return False
        return not remaining
    if type(a) is ImproperList:
        return strict_eq(a.items, b.items) and strict_eq(a.tail, b.tail)
    if type(a) is Fun:
        return (a.module, a.old_index, a.old_uniq, a.pid, a.arity, a.uniq, a.index) == (
            b.module, b.old_index, b.old_uniq, b.pid, b.arity, b.uniq, b.index
        ) and strict_eq(a.free_vars, b.free_vars)
    if type(a) is BitString:
        return bool(a == b)
    return bool(a == b)
