"""Hypothesis strategies for the values the default (exact) mapping accepts."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from beambridge import (
    Atom,
    BitString,
    ExportFun,
    ImproperList,
    Map,
    Pid,
    Port,
    Reference,
)

_RESERVED = {"true", "false", "undefined"}

atom_names = st.text(st.characters(exclude_categories=("Cs",)), max_size=255).filter(
    lambda s: s not in _RESERVED
)
atoms = st.one_of(
    st.sampled_from(["ok", "error", "nonode@nohost", "é", "ünïcödé", "a b", ""]),
    atom_names,
).map(Atom)
nodes = st.sampled_from(["py@localhost", "erl@host.example", "ñodé@höst"]).map(Atom)
u32 = st.integers(0, (1 << 32) - 1)

pids = st.builds(Pid, nodes, u32, u32, u32)
ports = st.builds(Port, nodes, st.integers(0, (1 << 64) - 1), u32)
refs = st.builds(Reference, nodes, u32, st.lists(u32, min_size=3, max_size=5).map(tuple))
export_funs = st.builds(ExportFun, atoms, atoms, st.integers(0, 255))


@st.composite
def bitstrings(draw: st.DrawFn) -> BitString:
    size = draw(st.integers(1, 80).filter(lambda n: n % 8))
    data = draw(st.binary(min_size=(size + 7) // 8, max_size=(size + 7) // 8))
    return BitString(data, size)


integers = st.one_of(
    st.integers(0, 255),
    st.integers(-(1 << 31), (1 << 31) - 1),
    st.integers(-(2**64), 2**64),
    st.builds(lambda bits, sign, low: sign * ((1 << bits) + low),
              st.integers(32, 3000), st.sampled_from([1, -1]), st.integers(0, 2**32)),
)
floats = st.floats(allow_nan=False, allow_infinity=False)

leaves = st.one_of(
    integers, floats, atoms, st.booleans(), st.none(), st.binary(max_size=64), bitstrings(),
    pids, ports, refs, export_funs,
    st.lists(st.integers(0, 255), max_size=20),
)

hashable_leaves = st.one_of(integers, floats, atoms, st.booleans(), st.none(), st.binary(max_size=16),
                            pids, refs)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.dictionaries(hashable_leaves, children, max_size=5),
        st.builds(ImproperList, st.lists(children, min_size=1, max_size=4),
                  children.filter(lambda t: not isinstance(t, (list, ImproperList)))),
        # Keys a dict cannot hold: a list key (unhashable) keeps the map a Map.
        st.builds(lambda k, v, rest: Map([(k, v), *rest]),
                  st.lists(st.integers(), min_size=0, max_size=3), children,
                  st.lists(st.tuples(hashable_leaves, children), max_size=3)
                  ).filter(lambda m: len({repr(k).replace("-0.0", "0.0") for k in m}) == len(m)),
    )


terms = st.recursive(leaves, _containers, max_leaves=25)
