"""The shape of the code, kept: the core (generation/, conversations/) knows no HTTP and no dialect, imports point
one way (no circle, engine/ and storage/ never import server/), no module grows past the size one reads at once,
and no test module imports another (shared code lives in tests/support)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ("server.generation", "server.conversations")
# What the core must not know: HTTP, the error envelopes, the dialects and the app's wiring.
NOT_IN_CORE = ("starlette", "server.errors", "server.apis", "server.state", "server.app")
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, TYPE_CHECKING blocks and function bodies included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_the_core_imports_no_http_and_no_dialect() -> None:
    core = [path for path in sources("server") if module_name(path).startswith(CORE)]
    assert len(core) >= 10
    direct = {module_name(path): sorted(i for i in imports_of(path) if i.startswith(NOT_IN_CORE)) for path in core}
    assert {name: found for name, found in direct.items() if found} == {}
    # Nor through what it imports: every core module loaded, in a fresh interpreter.
    names = ", ".join(module_name(path) for path in core)
    code = (f"import sys, {names}; print(sorted(m for m in sys.modules if m.startswith({NOT_IN_CORE!r})))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_imports_point_one_way() -> None:
    modules = {module_name(path): path for path in sources("server", "engine", "storage")}
    edges = {name: {i for i in imports_of(path) if i in modules and i != name} for name, path in modules.items()}
    assert {name: sorted(i for i in found if i.startswith("server"))
            for name, found in edges.items() if name.startswith(("engine", "storage"))
            and any(i.startswith("server") for i in found)} == {}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(modules):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_the_circle_check_finds_a_circle(tmp_path: Path) -> None:
    """The check above can fail: two modules that import each other are a circle to imports_of."""
    first, second = tmp_path / "a.py", tmp_path / "b.py"
    first.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from server.b import B\n")
    second.write_text("from server.a import A\n")
    assert "server.b.B" in imports_of(first) and "server.a" in imports_of(second)


def test_no_module_is_longer_than_one_reads_at_once() -> None:
    lengths = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
               for path in sources("server", "engine", "storage", "loadtests")}
    assert {path: lines for path, lines in lengths.items() if lines > MAX_MODULE_LINES} == {}


def test_no_test_module_imports_another() -> None:
    test_modules = {path.stem for path in sources("tests") if path.stem.startswith("test_")}
    offenders = {}
    for path in sources("tests"):
        found = {i for i in imports_of(path) if i.split(".")[-1] in test_modules or i.split(".")[0] in test_modules}
        if found:
            offenders[str(path.relative_to(ROOT))] = sorted(found)
    assert offenders == {}
