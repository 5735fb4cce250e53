"""What decoding leaves behind, beyond the values: GC tracking, shared objects, the GC's state.

The compiled decoder keeps the containers it builds out of the cyclic GC until the call returns
and shares one object per repeated short binary within a call; these tests hold both codecs to
what a plain Python build of the same structure gives (no timings here: see bench/).
"""

from __future__ import annotations

import gc
import struct
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from beambridge import Atom, DecodeError, Mapping, binary_to_term, term_to_binary
from beambridge.term import decode_body


def documents(n: int = 300) -> list[dict[Any, Any]]:
    return [{b"id": i, b"name": b"user-%d" % i, b"score": i * 0.5 + 0.25,
             b"tags": [b"alpha", b"beta", b"gamma"], b"pos": [i, i + 1000],
             b"meta": {b"ok": True, b"point": (i, b"alpha"), b"empty": ()}, Atom("kind"): []}
            for i in range(n)]


def containers(value: Any) -> Iterator[Any]:
    """Every list, tuple and dict in ``value`` (keys included)."""
    if isinstance(value, list | tuple):
        yield value
        for item in value:
            yield from containers(item)
    elif isinstance(value, dict):
        yield value
        for key, item in value.items():
            yield from containers(key)
            yield from containers(item)


def must_be_tracked(value: Any) -> bool:
    """Whether the GC must see ``value`` to find every cycle through it: a list always; a tuple
    or dict when it holds a tracked object (CPython untracks the others in a collection, so a
    decoded tuple of ints may be either)."""
    if isinstance(value, list):
        return True
    items = value if isinstance(value, tuple) else [x for pair in value.items() for x in pair]
    return any(gc.is_tracked(x) for x in items)


@pytest.mark.parametrize("n", [1, 300])  # a small term is not held at all; a big one is
def test_decoded_containers_are_tracked_as_python_tracks_them(n: int) -> None:
    decoded = binary_to_term(term_to_binary(documents(n)))
    for container in containers(decoded):
        assert gc.is_tracked(container) or not must_be_tracked(container), container
    assert decoded == documents(n)
    for container in containers(decoded):
        assert gc.is_tracked(container) or not must_be_tracked(container), container


def test_a_cycle_made_through_a_decoded_structure_is_collected() -> None:
    class Node:
        pass

    decoded = binary_to_term(term_to_binary(documents()))
    for doc in decoded[::50]:
        node = Node()
        node.doc = doc  # type: ignore[attr-defined]
        doc[b"tags"].append(node)  # node -> dict -> list -> node
        doc[b"meta"][b"point"] = (node,)  # and through a tuple in a nested dict
    refs = [weakref.ref(doc[b"tags"][-1]) for doc in decoded[::50]]
    del decoded, doc, node
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_repeated_binaries_share_only_immutable_objects() -> None:
    decoded = binary_to_term(term_to_binary(documents()))
    first, second = decoded[0], decoded[1]
    assert first[b"tags"] is not second[b"tags"]  # lists are never shared
    assert first[b"meta"] is not second[b"meta"]
    assert first[b"pos"] is not second[b"pos"]
    for doc in decoded:
        for key in doc:
            assert type(key) in (bytes, Atom)
        assert all(type(tag) is bytes for tag in doc[b"tags"])
    first[b"tags"].append(b"delta")  # changing one document leaves the others alone
    assert second[b"tags"] == [b"alpha", b"beta", b"gamma"]


def test_text_mapping_with_repeated_binaries_is_exact() -> None:
    # Under binary_as="str": ASCII, non-ASCII text and non-text binaries, each repeated.
    values = [b"alpha", "\u00e9t\u00e9".encode(), b"\xff\xfe", b"x" * 32, b"x" * 33, b"ab", b""]
    term = [{b"k%d" % (i % 3): values[i % len(values)]} for i in range(600)]
    decoded = binary_to_term(term_to_binary(term), mapping=Mapping.TEXT)
    for got, want in zip(decoded, term, strict=True):
        ((wk, wv),) = want.items()
        ((gk, gv),) = got.items()
        assert gk == wk.decode()
        assert type(gv) is type(_text(wv)) and gv == _text(wv)


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def test_many_unique_short_binaries_decode_exactly() -> None:
    # A cache that rarely hits turns itself off; the values must not change when it does.
    term = {b"key-%05d" % i: [b"v%d" % (i % 7), b"key-%05d" % i] for i in range(3000)}
    assert binary_to_term(term_to_binary(term)) == term


@pytest.mark.parametrize("enabled", [True, False])
def test_an_error_midway_leaves_the_gc_as_it_was(enabled: bool) -> None:
    good = term_to_binary(documents())
    cut = good[: len(good) * 2 // 3]  # thousands of containers built, then the input ends
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        with pytest.raises(DecodeError, match="unexpected end of input") as info:
            binary_to_term(cut)
        assert info.value.offset == len(cut)
        assert gc.isenabled() is enabled
        assert binary_to_term(good) == documents()
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


class CollectingCache:
    """An atom cache whose lookups run Python code: a full collection, and a switch of the
    GC's state that the decoder must leave alone."""

    def __init__(self, switch_to: bool) -> None:
        self.switch_to = switch_to

    def __getitem__(self, index: int) -> Atom:
        gc.collect()
        gc.enable() if self.switch_to else gc.disable()
        return Atom("cached")


@pytest.mark.parametrize("switch_to", [True, False])
def test_python_code_run_mid_decode_sees_a_consistent_gc(switch_to: bool) -> None:
    # [ATOM_CACHE_REF 0, <the documents>, ATOM_CACHE_REF 0]: the cache runs after thousands of
    # containers are built and before the last one.
    docs = term_to_binary(documents())[1:]
    body = b"l" + struct.pack(">I", 3) + b"R\x00" + docs + b"R\x00j"
    was = gc.isenabled()
    try:
        gc.enable() if not switch_to else gc.disable()
        term, end = decode_body(body, 0, atom_cache=CollectingCache(switch_to))
        assert gc.isenabled() is switch_to  # the decoder did not put its own state back
    finally:
        gc.enable() if was else gc.disable()
    assert end == len(body)
    assert term == [Atom("cached"), documents(), Atom("cached")]
    for container in containers(term):
        assert gc.is_tracked(container) or not must_be_tracked(container), container
