"""The README's "Across hosts" commands, run as written: its ``openssl`` block makes the CA, the
certificates and the optfiles; its ``erl`` line starts an Erlang TLS node with them; its Python
snippet and its web block (gunicorn, the receiver, ``beambridge ping``) talk TLS to that node.

The README's two hosts become two loopback addresses (``10.0.0.5`` -> ``127.0.0.1`` for Python,
``10.0.0.6`` -> ``127.0.0.2`` for Erlang), its folder a temporary one, its port range a free
one, and the app and handler names the test suite's own; nothing else is changed. A private EPMD
listens on both addresses (a host's EPMD is on its own address); the cookie is in
``$HOME/.erlang.cookie`` as the README says.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from beambridge import BlockingNode, otp
from beambridge.node import epmd_names
from beambridge.term import Atom
from tests.node.conftest import free_port, registered
from tests.test_readme import Snippet, snippets
from tests.tls.conftest import need_ssl

pytestmark = pytest.mark.erlang

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
README_DIR = "/etc/beambridge/tls"
PY_HOST, ERL_HOST = "127.0.0.1", "127.0.0.2"
COOKIE = "readme_tls_cookie"


def block(env: str) -> Snippet:
    found = [s for s in snippets() if s.env == env]
    assert len(found) == 1, f"one <!-- test: {env} --> block in README.md, found {len(found)}"
    return found[0]


def python_snippet() -> Snippet:
    found = [s for s in snippets() if s.lang == "python" and f'tls="{README_DIR}/' in s.code]
    assert len(found) == 1, "one Python snippet with tls= in the Across hosts section"
    return found[0]


class Loopback:
    """The README's hosts, folder and ports mapped onto this machine."""

    def __init__(self, folder: Path, low: int) -> None:
        self.folder, self.low = folder, low
        self.pairs = [(README_DIR, str(folder)), ("10.0.0.5", PY_HOST), ("10.0.0.6", ERL_HOST),
                      ("10,0,0,6", ERL_HOST.replace(".", ",")), ("9100", str(low)),
                      ("9105", str(low + 5))]

    def __call__(self, text: str) -> str:
        for old, new in self.pairs:
            text = text.replace(old, new)
        return text


@pytest.fixture
def hosts(tmp_path: Path) -> Loopback:
    return Loopback(tmp_path / "tls", free_port())


@pytest.fixture
def epmd_both() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(["epmd", "-port", str(port), "-address", f"{PY_HOST},{ERL_HOST}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection((ERL_HOST, port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"no EPMD on {ERL_HOST} (this loopback has only 127.0.0.1?)")
            time.sleep(0.05)
    yield port
    proc.kill()
    proc.wait(10)


def _env(home: Path, epmd_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BEAMBRIDGE_", "ERLANG_COOKIE"))}
    env.update(HOME=str(home), ERL_EPMD_PORT=str(epmd_port),
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}")
    return env


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            time.sleep(0.2)  # the group's other members (gunicorn's workers) after the leader
        except subprocess.TimeoutExpired:
            continue


def test_the_readme_pki_serves_erlang_and_python(otp_runtime: otp.Runtime, hosts: Loopback,
                                                 epmd_both: int, tmp_path: Path) -> None:
    need_ssl(otp_runtime)
    # 1. the openssl block, as written but for the folder and the addresses
    pki = block("tls-pki")
    done = subprocess.run(["bash", "-e", "-c", hosts(pki.code)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"README.md line {pki.line}:\n{done.stderr}"
    folder = hosts.folder
    for host in (PY_HOST, ERL_HOST):
        assert {f"{host}.{ext}" for ext in ("pem", "key", "conf")} <= {p.name for p in folder.iterdir()}
        assert stat.S_IMODE((folder / f"{host}.key").stat().st_mode) == 0o600
    # the optfile the README shows is the one its commands write
    assert (folder / f"{ERL_HOST}.conf").read_text() == hosts(block("tls-optfile").code)

    home = tmp_path / "home"
    home.mkdir()
    (home / ".erlang.cookie").write_text(COOKIE)
    (home / ".erlang.cookie").chmod(0o400)
    env = _env(home, epmd_both)

    # 2. the Erlang node from the README's erl line (no shell: nobody types; beambridge_web's
    # modules for the web app's view)
    erl_line = hosts(block("tls-erl").code).replace("\\\n", " ")
    command = shlex.split(erl_line.strip())
    assert command[0] == "erl" and f"erl@{ERL_HOST}" in command
    web_ebin = otp.build_erlang_app("beambridge_web")
    erl = subprocess.Popen([str(otp_runtime.erl), *command[1:], "-noinput", "-pa", str(web_ebin)],
                           env=otp_runtime.environ(env), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    web: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while "erl" not in registered(epmd_both):
            assert erl.poll() is None and time.monotonic() < deadline, "the README's erl did not start"
            time.sleep(0.1)
        erl_port = dict(epmd_names(ERL_HOST, epmd_both, 5))["erl"]
        assert hosts.low <= erl_port <= hosts.low + 5

        # 3. the Python snippet: rpc to Erlang, and Erlang's erpc back into Python, both TLS
        snippet = python_snippet()
        script = tmp_path / "snippet.py"
        script.write_text(hosts(snippet.code))
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"README.md line {snippet.line}:\n{done.stderr}"
        assert done.stdout.splitlines() == [hosts(p) for p in snippet.expected], done.stdout

        # 4. the web block: gunicorn and the receiver in the background, then beambridge ping
        http = free_port()
        code = hosts(block("tls-web").code).replace("myapp.wsgi:app", "tests.web.apps.plain:app")
        code = code.replace("myapp.erlang:handle", "tests.web.apps.handlers:handle")
        code = code.replace(f"{PY_HOST}:8000", f"{PY_HOST}:{http}")
        log = tmp_path / "web.log"
        with log.open("wb") as out:
            web = subprocess.Popen(["bash", "-e", "-c", code], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        # the ping ends the block; gunicorn and the receiver go on in its process group
        assert web.wait(60) == 0, log.read_text()
        assert "pong" in log.read_text().splitlines(), log.read_text()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{PY_HOST}:{http}/rpc", timeout=10) as answer:
                    page = json.loads(answer.read())
                break
            except OSError:
                assert time.monotonic() < deadline, f"gunicorn did not answer:\n{log.read_text()}"
                time.sleep(0.2)
        assert page["erlang"] == f"erl@{ERL_HOST}" and page["node"].startswith("web_")
        while "receiver" not in registered(epmd_both):
            assert time.monotonic() < deadline, f"no receiver:\n{log.read_text()}"
            time.sleep(0.1)
        assert hosts.low <= dict(epmd_names(PY_HOST, epmd_both, 5))["receiver"] <= hosts.low + 5
        with BlockingNode(f"asker@{PY_HOST}", COOKIE, tls=folder / f"{PY_HOST}.conf",
                          epmd_port=epmd_both) as asker:
            got = asker.rpc(f"erl@{ERL_HOST}", "gen_server", "call",
                            [(Atom("receiver"), Atom(f"receiver@{PY_HOST}")), Atom("hi"), 5000],
                            timeout=10)
        assert got[:2] == (Atom("got"), Atom("hi")), got
    finally:
        if web is not None:
            _stop_group(web)
        _stop_group(erl)
