"""Build hook for the optional compiled parts: the term codec (``beambridge.term._cterm``) and
the node's GIL-free spin for bytes (``beambridge.node._cwait``).

All metadata lives in pyproject.toml; this file only declares the C extensions. A failed compile
(no compiler, no Python headers) is not an install failure: the package then runs on the pure
Python codec, and a warning says how to get the fast one.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

_HINT = (
    "beambridge: {part} could not be built ({error}); installing with its pure-Python twin, "
    "which is correct but slower. To get the compiled one, install a C compiler and the Python "
    "headers (Debian/Ubuntu: apt-get install gcc python3-dev) and reinstall beambridge."
)
_PARTS = {"beambridge.term._cterm": "the compiled term codec",
          "beambridge.node._cwait": "the node's compiled spin for socket bytes"}


class OptionalBuildExt(build_ext):
    """build_ext that warns and carries on when the extension cannot be compiled."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # setuptools raises several unrelated types here
            self._warn(error, "the compiled parts")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:
            self._warn(error, _PARTS.get(ext.name, ext.name))

    @staticmethod
    def _warn(error: BaseException, part: str) -> None:
        message = _HINT.format(part=part,
                               error=str(error).strip().splitlines()[-1] if str(error) else error)
        print("*" * 78, file=sys.stderr)
        print(message, file=sys.stderr)
        print("*" * 78, file=sys.stderr)


class BuildPyWithErlang(build_py):
    """Ship the Erlang side (``erlang/``) inside the package as ``beambridge/_erlang``, so an
    installed wheel can build and start the compute service and the helpers with ``erlc``."""

    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "erlang"
        if source.is_dir() and not self.editable_mode:
            target = Path(self.build_lib) / "beambridge" / "_erlang"
            shutil.copytree(source, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.beam", "_build", "ebin"))


_CFLAGS = ["-O2", "-std=c99", "-Wall", "-Wno-missing-braces"] if os.name == "posix" else []

setup(
    ext_modules=[
        Extension(
            "beambridge.term._cterm",
            sources=["src/beambridge/term/_cterm.c"],
            extra_compile_args=_CFLAGS,
            optional=True,
        ),
        Extension(
            "beambridge.node._cwait",
            sources=["src/beambridge/node/_cwait.c"],
            extra_compile_args=_CFLAGS,
            optional=True,
        ),
    ],
    cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithErlang},
)
