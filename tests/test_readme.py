"""The README's snippets run as written, so it cannot rot.

Every ```python block in README.md carries a marker on the line before it, an HTML comment
GitHub does not show: ``<!-- test: ENV -->`` runs it in a fresh interpreter (as pasted), in
ENV; ``<!-- test: skip: why -->`` says why it cannot run unattended. A ```sh block runs only
when marked. ENVs:

* ``plain``: nothing else running (what it starts finds a private EPMD on ``$ERL_EPMD_PORT``);
* ``node``: the Erlang node the README tells a reader to start, started here with the README's
  own ``erl`` line (marked ``<!-- test: erl -->``) on a private loopback EPMD;
* ``node-erl-sends``: ``node``, and meanwhile Erlang sends ``{hi, Pid}`` to the registered
  mailbox ``inbox`` on ``py@127.0.0.1`` (what the README asks the reader to type in the erl
  shell), and expects ``{hello, <<"back">>}`` at ``Pid``;
* ``compute``: a compute service with two workers, standing for the README's
  ``beambridge compute serve --local-nodes 2``; its URL replaces ``http://127.0.0.1:8080``.

``print(...)  # TEXT`` lines are the README's promises: the snippet's output, line by line, must
be those TEXTs (a note may follow after two spaces, and "..." stands for an id). Every process
started here binds loopback, uses a free port and is stopped by pid.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from beambridge import Atom, BlockingNode, Timeout, otp
from beambridge.compute import Service
from tests.node.conftest import epmd_port, free_port, registered  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMPUTE_URL = "http://127.0.0.1:8080"
ENVS = {"plain", "node", "node-erl-sends", "compute"}

_MARKER = re.compile(r"^<!-- test: ([\w-]+)(?:: (.*?))? -->$")
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Snippet:
    env: str
    lang: str
    code: str
    line: int  # where it starts in the README (1-based)

    @property
    def expected(self) -> list[str]:
        """The trailing ``# TEXT`` of each ``print(...)`` call (on its last line, when the call
        spans several)."""
        promises = []
        depth = 0  # open parentheses of the print call being read
        for line in self.code.splitlines():
            code, _, comment = line.partition("  # ")
            if depth == 0 and not code.lstrip().startswith("print("):
                continue
            depth += code.count("(") - code.count(")")
            if depth <= 0:
                depth = 0
                if comment:
                    promises.append(comment.strip())
        return promises


def snippets(text: str | None = None) -> list[Snippet]:
    """Every fenced block with its marker ("" when it has none)."""
    lines = (README.read_text() if text is None else text).splitlines()
    found: list[Snippet] = []
    marker = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            end = i + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            found.append(Snippet(marker, fence.group(1), "\n".join(lines[i + 1:end]) + "\n", i + 2))
            marker = ""
            i = end + 1
            continue
        match = _MARKER.match(line.strip())
        if match:
            marker = match.group(1)
        elif line.strip():
            marker = ""
        i += 1
    return found


def _of(env: str) -> list[Snippet]:
    return [s for s in snippets() if s.env == env and s.lang in ("python", "sh")]


def _ids(found: list[Snippet]) -> list[str]:
    return [f"line{s.line}" for s in found]


def _env(port: int, **extra: str) -> dict[str, str]:
    env = {**os.environ, "ERL_EPMD_PORT": str(port), "ERL_EPMD_ADDRESS": "127.0.0.1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    env.pop("ERLANG_COOKIE", None)
    return env


def run(snippet: Snippet, env: dict[str, str], tmp: Path, *,
        replace: tuple[str, str] | None = None, timeout: float = 90) -> str:
    code = snippet.code if replace is None else snippet.code.replace(*replace)
    if snippet.lang == "python":
        script = tmp / f"snippet_{snippet.line}.py"
        script.write_text(code)
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-e", "-c", code]
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    where = f"README.md line {snippet.line}:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, where
    if snippet.lang == "python":
        printed = [line.rstrip() for line in done.stdout.splitlines()]
        assert len(printed) == len(snippet.expected), where
        for line, promise in zip(printed, snippet.expected, strict=True):
            assert _keeps(promise, line), f"printed {line!r}, promised {promise!r}\n{where}"
    return done.stdout


def _keeps(promise: str, printed: str) -> bool:
    """A promise may carry a note after two spaces ("1824  (zlib, level 6)"), and "..." stands
    for what changes from run to run (an id)."""
    for text in (promise, promise.split("  ", 1)[0]):
        if re.fullmatch(re.escape(text).replace(re.escape("..."), ".*"), printed):
            return True
    return False


# -- the README itself ---------------------------------------------------------------------

def test_every_python_snippet_is_marked() -> None:
    found = [s for s in snippets() if s.lang == "python"]
    assert len(found) >= 6
    unmarked = [s.line for s in found if s.env not in ENVS | {"skip"}]
    assert unmarked == [], f"README python blocks with no <!-- test: ENV --> marker at lines {unmarked}"
    assert len(_of("node")) >= 2 and _of("compute") and _of("plain")


def test_promises_allow_notes_and_ids() -> None:
    assert _keeps("1824  (zlib)", "1824") and _keeps("job ... was cancelled", "job 12ab was cancelled")
    assert not _keeps("1824", "1825") and not _keeps("[1, 2]", "[1, 2, 3]")


def test_the_parser_reads_markers_and_promises() -> None:
    text = ("<!-- test: plain -->\n```python\nprint(1)  # 1\nx = 2\nprint(f(1,\n  2))  # 3\n```\n\n"
            "```python\nprint(2)\n```\n<!-- test: node -->\ntext between\n```sh\nls\n```\n")
    first, second, third = snippets(text)
    assert (first.env, first.lang, first.expected, first.line) == ("plain", "python", ["1", "3"], 3)
    assert second.env == "" and third.env == ""


@pytest.fixture(scope="session")
def epmd(request: pytest.FixtureRequest) -> int:
    """A private loopback EPMD: the node tests' own (``epmd_port``, one per session)."""
    return int(request.getfixturevalue("epmd_port"))


@pytest.mark.erlang
@pytest.mark.parametrize("snippet", _of("plain"), ids=_ids(_of("plain")))
def test_plain_snippet(snippet: Snippet, epmd: int, tmp_path: Path) -> None:
    run(snippet, _env(epmd), tmp_path)


# -- the node road -------------------------------------------------------------------------

def _erl_command() -> list[str]:
    blocks = _of("erl")
    assert len(blocks) == 1, "one <!-- test: erl --> block: the erl line readers start their node with"
    lines = [line for line in blocks[0].code.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1 and lines[0].startswith("erl "), lines
    return shlex.split(lines[0].partition(" #")[0])


@pytest.fixture(scope="module")
def erl_node(otp_runtime: otp.Runtime, epmd: int) -> Iterator[str]:
    """The reader's node, from the README's line; loopback only and no shell (nobody types)."""
    command = _erl_command()
    name = command[command.index("-name") + 1]
    assert name == "erl@127.0.0.1" and command[command.index("-setcookie") + 1] == "secret"
    proc = subprocess.Popen([str(otp_runtime.erl), *command[1:], "-noinput",
                             "-kernel", "inet_dist_use_interface", "{127,0,0,1}"],
                            env=otp_runtime.environ(_env(epmd)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while "erl" not in registered(epmd):
        assert proc.poll() is None and time.monotonic() < deadline, "the README's erl did not start"
        time.sleep(0.1)
    yield name
    proc.kill()
    proc.wait(10)


@pytest.mark.erlang
@pytest.mark.parametrize("snippet", _of("node"), ids=_ids(_of("node")))
def test_node_snippet(snippet: Snippet, erl_node: str, epmd: int, tmp_path: Path) -> None:
    run(snippet, _env(epmd), tmp_path)


@pytest.mark.erlang
@pytest.mark.parametrize("snippet", _of("node-erl-sends"), ids=_ids(_of("node-erl-sends")))
def test_node_snippet_that_erlang_sends_to(snippet: Snippet, erl_node: str, epmd: int,
                                          tmp_path: Path) -> None:
    got: list[object] = []
    stop = threading.Event()

    def erlang_side() -> None:
        # What the reader types in the erl shell, {inbox, 'py@127.0.0.1'} ! {hi, self()}, done by
        # the erl node itself (through rpc) until the snippet's mailbox answers.
        with BlockingNode(f"readme_{os.getpid()}@127.0.0.1", "secret", epmd_port=epmd) as helper:
            me = helper.mailbox()
            while not stop.is_set():
                if "py" in registered(epmd):
                    helper.rpc(erl_node, "erlang", "send",
                               [(Atom("inbox"), Atom("py@127.0.0.1")), (Atom("hi"), me.pid)], timeout=5)
                    try:
                        got.append(me.receive(timeout=0.5))
                        return
                    except Timeout:
                        continue
                time.sleep(0.1)

    thread = threading.Thread(target=erlang_side, daemon=True)
    thread.start()
    try:
        run(snippet, _env(epmd), tmp_path)
    finally:
        stop.set()
        thread.join(10)
    assert got == [(Atom("hello"), b"back")]


# -- the compute road ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def compute(epmd: int) -> Iterator[Service]:
    svc = Service(local_nodes=2, epmd_port=epmd).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.mark.erlang
@pytest.mark.parametrize("snippet", _of("compute"), ids=_ids(_of("compute")))
def test_compute_snippet(snippet: Snippet, compute: Service, epmd: int, tmp_path: Path) -> None:
    run(snippet, _env(epmd, BEAMBRIDGE_COMPUTE_URL=compute.url), tmp_path,
        replace=(COMPUTE_URL, compute.url))
