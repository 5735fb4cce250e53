"""TLS everywhere a node is made: the CLI (``--tls-optfile``, ``$BEAMBRIDGE_TLS_OPTFILE``), the
web settings (``BEAMBRIDGE_TLS_OPTFILE``, ``BEAMBRIDGE_LISTEN_PORTS``, checked up front), a Flask
worker's node and the receiver, against real Erlang nodes on ``-proto_dist inet_tls``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from beambridge import BlockingNode, web
from beambridge.node import epmd_names
from beambridge.term import Atom
from beambridge.web import Receiver, SettingsError, WebSettings, check_settings
from tests.node.conftest import COOKIE, ErlNode, free_port, registered, unique
from tests.tls.conftest import Pki

ROOT = Path(__file__).resolve().parents[2]
A = Atom


def cli(epmd_port: int, *args: str, timeout: float = 60, **env: str
        ) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "BEAMBRIDGE_TLS_OPTFILE"}
    environ.update(ERL_EPMD_PORT=str(epmd_port), **env)
    return subprocess.run([sys.executable, "-m", "beambridge", *args], env=environ,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bad_optfiles(tls_pki: Pki) -> dict[str, Path]:
    """Optfiles each refused for its own reason (and one that does not exist)."""
    folder = tls_pki.folder
    unparsable = folder / "unparsable.conf"
    unparsable.write_text('[{server, [{certfile, "x"}]}')
    unsupported = tls_pki.optfile("unsupported", tls_pki.node, extra_client=", {verify_fun, x}")
    no_server = folder / "client_only.conf"
    no_server.write_text(f'[{{client, [{{cacertfile, "{tls_pki.ca}"}}]}}].\n')
    return {"missing": folder / "nowhere.conf", "unparsable": unparsable,
            "unsupported": unsupported, "no_server": no_server}


# ---------------------------------------------------------------- the command line

@pytest.mark.erlang
def test_cli_pings_and_rpcs_a_tls_node(tls_erl: ErlNode, tls_pki: Pki, epmd_port: int) -> None:
    done = cli(epmd_port, "ping", tls_erl.name, "--cookie", COOKIE, "--tls-optfile", str(tls_pki.good))
    assert (done.returncode, done.stdout.strip()) == (0, "pong"), done.stderr
    done = cli(epmd_port, "rpc", tls_erl.name, "init", "get_argument", "[proto_dist]",
               "--cookie", COOKIE, "--tls-optfile", str(tls_pki.good))
    assert (done.returncode, done.stdout.strip()) == (0, '{ok,[["inet_tls"]]}'), done.stderr
    # the variable the web settings read serves the CLI too; '' forces plain TCP
    env = {"BEAMBRIDGE_TLS_OPTFILE": str(tls_pki.good)}
    done = cli(epmd_port, "rpc", tls_erl.name, "erlang", "node", "[]", "--cookie", COOKIE, **env)
    assert (done.returncode, done.stdout.strip()) == (0, f"'{tls_erl.name}'"), done.stderr
    done = cli(epmd_port, "send", tls_erl.name, "nobody_registered", "hi", "--cookie", COOKIE, **env)
    assert done.returncode == 0, done.stderr
    done = cli(epmd_port, "ping", tls_erl.name, "--cookie", COOKIE, "--tls-optfile", "",
               "--timeout", "5", **env)
    assert (done.returncode, done.stdout.strip()) == (3, "pang")
    assert "pass --tls-optfile" in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert "$BEAMBRIDGE_TLS_OPTFILE, now " + str(tls_pki.good) in " ".join(
        cli(epmd_port, "ping", "--help", **env).stdout.split())


@pytest.mark.erlang
def test_cli_says_when_tls_refuses(tls_erl: ErlNode, tls_pki: Pki, epmd_port: int) -> None:
    stranger = tls_pki.optfile("cli_stranger", tls_pki.stranger)  # trusts our CA; Erlang won't it
    done = cli(epmd_port, "ping", tls_erl.name, "--cookie", COOKIE, "--tls-optfile", str(stranger),
               "--timeout", "5")
    assert (done.returncode, done.stdout.strip()) == (3, "pang")
    assert f"{tls_erl.name}: TLS failed:" in done.stderr, done.stderr


@pytest.mark.parametrize("case", ["missing", "unparsable", "unsupported", "no_server"])
def test_cli_refuses_a_bad_optfile_in_one_line(case: str, bad_optfiles: dict[str, Path],
                                               epmd_port: int) -> None:
    path = bad_optfiles[case]
    done = cli(epmd_port, "rpc", "erl@127.0.0.1", "erlang", "node", "[]", "--tls-optfile", str(path))
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.startswith("beambridge: --tls-optfile: ") and str(path) in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    expected = {"missing": "No such file", "unparsable": "not an Erlang term",
                "unsupported": "verify_fun is not supported", "no_server": "no server section"}[case]
    assert expected in done.stderr, done.stderr
    # from the variable, it is named instead of the flag; the receiver refuses it the same way
    done = cli(epmd_port, "ping", "erl@127.0.0.1", BEAMBRIDGE_TLS_OPTFILE=str(path))
    assert done.returncode == 2 and done.stderr.startswith("beambridge: $BEAMBRIDGE_TLS_OPTFILE: ")
    done = cli(epmd_port, "receiver", "--name", unique("r") + "@127.0.0.1", "--tls-optfile",
               str(path), "tests.web.apps.handlers:handle")
    assert done.returncode == 2 and str(path) in done.stderr, done


def test_cli_listen_ports_are_checked(epmd_port: int) -> None:
    done = cli(epmd_port, "receiver", "--name", "r@127.0.0.1", "--listen-ports", "9105-9100",
               "tests.web.apps.handlers:handle")
    assert done.returncode == 2 and "LOW-HIGH" in done.stderr


# ---------------------------------------------------------------- the web settings

def test_web_settings_check_the_optfile(tls_pki: Pki, bad_optfiles: dict[str, Path]) -> None:
    node = {"BEAMBRIDGE_ERLANG_NODE": "erl@127.0.0.1"}
    good = {**node, "BEAMBRIDGE_TLS_OPTFILE": str(tls_pki.good),
            "BEAMBRIDGE_LISTEN_PORTS": "9100-9105", "BEAMBRIDGE_LISTEN_HOST": "127.0.0.1"}
    assert check_settings(good) == []
    settings = WebSettings.from_mapping(good)
    assert settings.node_options() == {"tls": str(tls_pki.good), "listen_ports": (9100, 9105),
                                       "listen_host": "127.0.0.1"}
    for case, path in bad_optfiles.items():
        found = check_settings({**node, "BEAMBRIDGE_TLS_OPTFILE": str(path)})
        assert [(p.key, p.level, p.id) for p in found] == [
            ("BEAMBRIDGE_TLS_OPTFILE", "error", "beambridge.E009")], (case, found)
        assert str(path) in found[0].message, found
        with pytest.raises(SettingsError, match="BEAMBRIDGE_TLS_OPTFILE"):
            WebSettings.from_env({**node, "BEAMBRIDGE_TLS_OPTFILE": str(path)})
    lax = tls_pki.optfile("lax_client", tls_pki.node, verify=False)
    assert [p.id for p in check_settings({**node, "BEAMBRIDGE_TLS_OPTFILE": str(lax)})] == [
        "beambridge.W003"]  # a client that accepts any certificate: allowed, but said
    assert WebSettings.from_mapping({"BEAMBRIDGE_TLS_OPTFILE": ""}).tls_optfile is None


@pytest.mark.parametrize("value, expected", [("9100-9105", (9100, 9105)), ("9100", (9100, 9100)),
                                             ((9100, 9105), (9100, 9105)), ([9100, 9101], (9100, 9101)),
                                             (9100, (9100, 9100))])
def test_listen_ports_setting(value: object, expected: tuple[int, int]) -> None:
    assert WebSettings.from_mapping({"BEAMBRIDGE_LISTEN_PORTS": value}).listen_ports == expected


@pytest.mark.parametrize("value", ["9105-9100", "0-10", "a-b", "9100-70000", (1, 2, 3), True, 1.5])
def test_bad_listen_ports_setting(value: object) -> None:
    found = [p for p in check_settings({"BEAMBRIDGE_LISTEN_PORTS": value}) if p.level == "error"]
    assert [p.id for p in found] == ["beambridge.E010"] and "LOW-HIGH" in found[0].message


def test_flask_and_django_report_a_bad_optfile(bad_optfiles: dict[str, Path]) -> None:
    flask = pytest.importorskip("flask")
    from beambridge.web.flask import Beambridge

    app = flask.Flask(__name__)
    app.config.update(BEAMBRIDGE_ERLANG_NODE="erl@127.0.0.1",
                      BEAMBRIDGE_TLS_OPTFILE=bad_optfiles["missing"])  # a Path is accepted too
    with pytest.raises(SettingsError, match=f"BEAMBRIDGE_TLS_OPTFILE: cannot read the "
                                            f"ssl_dist_optfile {bad_optfiles['missing']}"):
        Beambridge(app)
    pytest.importorskip("django")
    # Django is configured once per process (tests/web configures it its own way): its own
    # process, as `manage.py check` runs
    script = ("import sys, django\nfrom django.conf import settings\n"
              "settings.configure(INSTALLED_APPS=['beambridge.web.django'], SECRET_KEY='x' * 50,\n"
              "    BEAMBRIDGE_ERLANG_NODE='erl@127.0.0.1', BEAMBRIDGE_TLS_OPTFILE=sys.argv[1],\n"
              "    BEAMBRIDGE_LISTEN_PORTS='9105-9100')\n"
              "django.setup()\nfrom django.core.management import call_command\n"
              "call_command('check')\n")
    done = subprocess.run([sys.executable, "-c", script, str(bad_optfiles["unsupported"])],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "(beambridge.E009) BEAMBRIDGE_TLS_OPTFILE:" in done.stderr, done.stderr
    assert f"{bad_optfiles['unsupported']}: client option verify_fun is not supported" in done.stderr
    assert "(beambridge.E010) BEAMBRIDGE_LISTEN_PORTS" in done.stderr, done.stderr


# ---------------------------------------------------------------- web workers and the receiver

@pytest.fixture
def tls_web(tls_erl: ErlNode, tls_pki: Pki, epmd_port: int) -> Iterator[dict[str, object]]:
    config: dict[str, object] = {
        "BEAMBRIDGE_ERLANG_NODE": tls_erl.name, "BEAMBRIDGE_COOKIE": COOKIE,
        "BEAMBRIDGE_EPMD_PORT": epmd_port, "BEAMBRIDGE_NODE_NAME": unique("tlsweb") + "@127.0.0.1",
        "BEAMBRIDGE_TLS_OPTFILE": str(tls_pki.good), "BEAMBRIDGE_RPC_TIMEOUT": 5,
        "BEAMBRIDGE_CONNECT_TIMEOUT": 5}
    yield config
    web.close_node()
    web.configure(WebSettings())


@pytest.mark.erlang
def test_a_flask_worker_node_talks_tls(tls_web: dict[str, object], tls_erl: ErlNode) -> None:
    flask = pytest.importorskip("flask")
    from beambridge.web.flask import Beambridge

    app = flask.Flask(__name__)
    app.config.update(tls_web)
    erlang = Beambridge(app)

    @app.get("/where")
    def where() -> dict[str, str]:
        return {"erlang": str(erlang.rpc("init", "get_argument", [A("proto_dist")])),
                "node": str(erlang.rpc("erlang", "node")), "me": erlang.node.name}

    answer = app.test_client().get("/where").get_json()
    assert answer["node"] == tls_erl.name
    assert answer["erlang"] == str((A("ok"), [[list(b"inet_tls")]]))
    assert erlang.node.node.tls is not None  # the worker's node is on TLS itself


def _registered_port(epmd_port: int, alive: str) -> int:
    return dict(epmd_names("127.0.0.1", epmd_port, 5))[alive]


@pytest.mark.erlang
def test_the_receiver_over_tls_answers_gen_server_call(tls_erl: ErlNode, tls_pki: Pki,
                                                       epmd_port: int) -> None:
    name = unique("tls_recv") + "@127.0.0.1"
    low = free_port()
    env = {**os.environ, "BEAMBRIDGE_EPMD_PORT": str(epmd_port),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    env.pop("BEAMBRIDGE_TLS_OPTFILE", None)
    proc = subprocess.Popen([sys.executable, "-m", "beambridge", "receiver", "--name", name,
                             "--cookie", COOKIE, "--tls-optfile", str(tls_pki.good),
                             "--listen-ports", f"{low}-{low + 4}", "tests.web.apps.handlers:handle"],
                            env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        alive = name.partition("@")[0]
        while alive not in registered(epmd_port):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stdout.read() if proc.stdout else "")
            time.sleep(0.1)
        assert low <= _registered_port(epmd_port, alive) <= low + 4
        with BlockingNode(unique("tlsask") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                          tls=tls_pki.good) as asker:
            # the Erlang TLS node opens TLS to the receiver and calls it
            answer = asker.rpc(tls_erl.name, "gen_server", "call",
                               [(A(alive), A(name)), (A("hello"), b"tls"), 5000], timeout=10)
        assert answer == (A("got"), (A("hello"), b"tls"), proc.pid)
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out


@pytest.mark.erlang
def test_receiver_from_settings_over_tls(tls_erl: ErlNode, tls_pki: Pki, epmd_port: int) -> None:
    low = free_port()
    settings = WebSettings(cookie=COOKIE, epmd_port=epmd_port, tls_optfile=str(tls_pki.good),
                           listen_ports=(low, low + 4))
    name = unique("tls_recv2") + "@127.0.0.1"
    with Receiver.from_settings(name, lambda m: (A("seen"), m), settings=settings) as receiver, \
            BlockingNode(unique("tlsask") + "@127.0.0.1", COOKIE, epmd_port=epmd_port,
                         tls=tls_pki.good) as asker:
        assert receiver.node is not None and receiver.node.node.tls is not None
        assert low <= receiver.node.node.port <= low + 4
        assert asker.rpc(tls_erl.name, "gen_server", "call",
                         [(A(name.partition("@")[0]), A(name)), 7, 5000], timeout=10) == (A("seen"), 7)
