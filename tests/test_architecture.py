"""The layout's rules, checked on the source itself (issue "Layout and boundaries").

- no import cycle between chatmem's modules (imports under TYPE_CHECKING count too: a
  cycle hidden from the interpreter is still two modules that cannot be read apart);
- dependencies point one way: api/ and cli/ never import redis-py or the store, and nothing
  below api/ imports FastAPI or Starlette;
- no module over 400 lines.

The import graph is read with `ast`, so the check costs no imports and sees every module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "chatmem"
MAX_MODULE_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            # `from chatmem.store import keys` imports the module chatmem.store.keys.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ that re-exports its modules is not a cycle with them."""
    packages = {name for name in graph if (PACKAGE.parent / name.replace(".", "/")).is_dir()}
    return {
        name: {dep for dep in deps if not (dep in packages and name.startswith(dep + "."))}
        for name, deps in graph.items()
    }


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = _find_cycle(_without_package_inits(_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", ["chatmem.api", "chatmem.cli"])
def test_interfaces_do_not_reach_redis(layer: str) -> None:
    """Routes and the CLI call the service; only store/ speaks to Redis."""
    offenders = {
        f"{module} imports {dep}"
        for module, path in ((_module_name(p), p) for p in PACKAGE.rglob("*.py"))
        if module == layer or module.startswith(layer + ".")
        for dep in _imports(path)
        if dep == "redis" or dep.startswith(("redis.", "chatmem.store"))
    }
    assert not offenders, sorted(offenders)


def test_nothing_below_the_api_imports_fastapi() -> None:
    """The web framework stays in api/ (and the CLI's in-process client)."""
    allowed = ("chatmem.api", "chatmem.cli")
    offenders = {
        f"{module} imports {dep}"
        for module, path in ((_module_name(p), p) for p in PACKAGE.rglob("*.py"))
        if not module.startswith(allowed)
        for dep in _imports(path)
        if dep.split(".")[0] in {"fastapi", "starlette", "sse_starlette"}
    }
    assert not offenders, sorted(offenders)


def test_no_module_over_400_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long
