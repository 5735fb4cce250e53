"""The tools see everything: every test module is collected, every source file linted and typed.

pytest, ruff and black skip folders that Python packaging calls build output (``dist``, ``build``)
without a word, which once hid the protocol core's tests and code from CI. These tests fail the
moment a file falls outside what ``make test`` runs, lints or type-checks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_files(*tops: str) -> set[Path]:
    skip = {".venv", "__pycache__", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "_build"}
    found = set()
    for top in tops:
        for path in (ROOT / top).rglob("*.py"):
            if not skip.intersection(path.relative_to(ROOT).parts) and ".egg-info" not in str(path):
                found.add(path.relative_to(ROOT))
    return found


def test_every_test_module_is_collected() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = {Path(line.split("::", 1)[0]) for line in done.stdout.splitlines() if "::" in line}
    modules = {p for p in _python_files("tests") if p.name.startswith("test_")}
    assert Path("tests/protocol/test_protocol.py") in modules
    assert modules - collected == set(), "test modules pytest does not collect"


def test_every_python_file_is_linted() -> None:
    # The same command as `make lint`: ruff on the project root with its own excludes.
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--show-files"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    checked = {Path(line).resolve().relative_to(ROOT) for line in done.stdout.splitlines()
               if line.endswith(".py")}
    ours = _python_files("src", "tests", "bench", "examples", "fuzz")
    assert Path("src/beambridge/protocol/_connection.py") in ours
    assert ours - checked == set(), "Python files ruff does not check"


def test_every_source_module_is_type_checked() -> None:
    from mypy.config_parser import parse_config_file
    from mypy.find_sources import create_source_list
    from mypy.options import Options

    strict = []
    options = Options()
    parse_config_file(options, lambda: strict.append(True), str(ROOT / "pyproject.toml"),
                      stdout=sys.stderr, stderr=sys.stderr)
    assert strict, "mypy is not configured with strict = true"
    sources = create_source_list([str(ROOT / f) for f in options.files or []], options)
    checked = {Path(s.path).resolve().relative_to(ROOT) for s in sources if s.path}
    ours = _python_files("src")
    assert Path("src/beambridge/protocol/_connection.py") in ours
    assert ours - checked == set(), "source files mypy does not check"


def _runtime_imports(path: Path, module: str) -> set[str]:
    """The ``beambridge`` modules ``path`` imports when it runs (``if TYPE_CHECKING:`` left out)."""
    import ast

    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:  # relative to the module's own package
                    base = module.split(".")[:-child.level]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                for alias in child.names:  # `from . import x` imports the module x
                    found.add(f"{name}.{alias.name}" if child.module is None else name)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            visit(child)

    visit(tree)
    return {m for m in found if m.startswith("beambridge")}


def test_no_import_circle_between_modules() -> None:
    """A module per job only helps if the jobs stack: no module imports, at run time, one that
    (through others) imports it back. Packages' ``__init__`` re-exports are left out."""
    src = ROOT / "src"
    modules: dict[str, Path] = {}
    for path in (src / "beambridge").rglob("*.py"):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        if not name.endswith("__init__"):
            modules[name] = path
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _runtime_imports(path, name) if m in modules and m != name}
    assert len(graph["beambridge.node._node"]) > 5  # the parser sees the hub's imports
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def walk(name: str, stack: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert circles == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles)
