"""Attacks on a node's ports, each asserting the refusal and that legitimate traffic made
meanwhile still passes: what ``expose`` offers, unfinished fragments, decompression bombs,
half-open connection floods, stalled handshakes, oversized handshake and EPMD packets."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from beambridge import Atom
from beambridge.node import BlockingNode

from .conftest import COOKIE, ErlNode, unique

pytestmark = pytest.mark.erlang
A = Atom


@pytest.fixture
def py(epmd_port: int) -> Iterator[BlockingNode]:
    node = BlockingNode(unique("py") + "@127.0.0.1", COOKIE, epmd_port=epmd_port)
    yield node
    node.close()


# ------------------------------------------------------------------ expose: only what is ours

def _load(path: Path, source: str) -> ModuleType:
    path.write_text(source)
    name = unique("bb_exposed")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _undef_shape(answer: Any) -> tuple[Any, Any, Any]:
    """``{badrpc, {'EXIT', {undef, [{M, F, Args, _} | _]}}}`` as (badrpc, undef, {M, F})."""
    badrpc, (exit_tag, (reason, stack)) = answer[0], answer[1]
    assert exit_tag == A("EXIT")
    return badrpc, reason, stack[0][:2]


def test_expose_a_module_offers_what_it_defines_not_what_it_imported(
        py: BlockingNode, erl: ErlNode, tmp_path: Path) -> None:
    module = _load(tmp_path / "handlers.py", (
        "from subprocess import getoutput\n"
        "from os import system as _system\n"
        "import shutil\n"
        "class Helper:\n"
        "    pass\n"
        "def double(x):\n"
        "    return 2 * x\n"
        "def _private(x):\n"
        "    return x\n"))
    py.expose("handlers", module)
    me = A(py.name)
    assert py.rpc(erl.name, "rpc", "call", [me, A("handlers"), A("double"), [21]]) == 42
    for name in ("getoutput", "_private", "Helper", "shutil", "_system"):
        answer = py.rpc(erl.name, "rpc", "call", [me, A("handlers"), A(name), [b"id"]])
        assert _undef_shape(answer) == (A("badrpc"), A("undef"), (A("handlers"), A(name))), answer
    # the same error Erlang itself gives for a function that is not there
    erlang_answer = py.rpc(erl.name, "rpc", "call", [A(erl.name), A("handlers"), A("getoutput"), []])
    assert _undef_shape(erlang_answer)[:2] == (A("badrpc"), A("undef"))


def test_expose_a_module_with_all_offers_its_list(py: BlockingNode, erl: ErlNode, tmp_path: Path) -> None:
    module = _load(tmp_path / "listed.py", (
        "from subprocess import getoutput\n"
        "from operator import neg\n"
        "__all__ = ['neg', 'triple', 'LIMIT']\n"
        "LIMIT = 3\n"
        "def triple(x):\n"
        "    return 3 * x\n"
        "def unlisted(x):\n"
        "    return x\n"))
    py.expose("listed", module)
    me = A(py.name)
    assert py.rpc(erl.name, "rpc", "call", [me, A("listed"), A("triple"), [2]]) == 6
    assert py.rpc(erl.name, "rpc", "call", [me, A("listed"), A("neg"), [5]]) == -5  # listed: re-exported
    for name in ("getoutput", "unlisted", "LIMIT"):
        answer = py.rpc(erl.name, "rpc", "call", [me, A("listed"), A(name), []])
        assert _undef_shape(answer)[1] == A("undef"), answer


def test_expose_an_object_offers_its_own_methods(py: BlockingNode, erl: ErlNode) -> None:
    class Base:
        def inherited(self) -> bytes:
            return b"base"

    class Api(Base):
        shell = subprocess.getoutput  # a function from elsewhere, assigned in the class body

        def __init__(self) -> None:
            self.run = subprocess.run  # an instance attribute that happens to be callable
            self.factor = 10

        def scale(self, x: int) -> int:
            return self.factor * x

        @staticmethod
        def static(x: int) -> int:
            return x + 1

        @classmethod
        def kind(cls) -> bytes:
            return cls.__name__.encode()

        def _hidden(self) -> None:
            raise AssertionError("never exposed")

    py.expose("api", Api())
    me = A(py.name)
    call = lambda f, args: py.rpc(erl.name, "rpc", "call", [me, A("api"), A(f), args])  # noqa: E731
    assert call("scale", [4]) == 40
    assert call("static", [4]) == 5
    assert call("kind", []) == b"Api"
    assert call("inherited", []) == b"base"
    for name in ("shell", "run", "_hidden", "__init__", "__repr__", "__reduce__", "factor"):
        assert _undef_shape(call(name, [b"id"]))[1] == A("undef"), name
    # a class itself: its static and class methods, not the plain ones (they need an instance)
    py.expose("apicls", Api)
    assert py.rpc(erl.name, "rpc", "call", [me, A("apicls"), A("static"), [1]]) == 2
    answer = py.rpc(erl.name, "rpc", "call", [me, A("apicls"), A("scale"), [1]])
    assert _undef_shape(answer)[1] == A("undef")
