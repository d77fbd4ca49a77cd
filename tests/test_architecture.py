"""The shape of the core: layered subpackages, no import cycles between its modules, no plugin
named, modules kept short, a package list that ships every subpackage."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "toolbox"
#: A module longer than this must say why in its docstring (none does today).
MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> dict[str, Path]:
    return {module_name(p): p for p in CORE.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The core modules ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import submodule`` imports the submodule (and runs pkg/__init__, which
            # imports nothing eagerly); ``from module import name`` imports the module
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [sub for sub in subs if sub in modules] or [node.module]
        else:
            continue
        found.update(name for name in names if name in modules and name != "toolbox")
    found.discard(module_name(path))
    return found


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    nodes: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        nodes.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_core_modules() -> None:
    modules = core_modules()
    graph = {name: imports_of(path, modules) for name, path in modules.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_names_no_builtin_plugin_package() -> None:
    offenders = [str(p) for p in CORE.rglob("*.py") if "toolbox_plugins" in p.read_text()]
    assert offenders == []


def test_core_modules_are_short() -> None:
    long = {str(p.relative_to(CORE)): n for p in CORE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


#: The plugin-facing API modules directly in ``toolbox/``.
API = {"toolbox.errors", "toolbox.hookspecs", "toolbox.context", "toolbox.options", "toolbox._legacy"}
#: What each part of the core may import (``toolbox.errors`` is open to all), lowest first.
BELOW_RUN = {"api", "plugin_host", "runtime", "storage", "models", "data"}
MAY_IMPORT: dict[str, set[str]] = {
    "runtime": set(),
    "models": set(),
    "storage": {"runtime", "models"},
    "data": {"runtime", "storage"},
    "plugin_host": {"api"},
    "api": {"plugin_host", "runtime", "storage", "models", "data", "sparsity", "methods", "pruning"},
    "sparsity": BELOW_RUN,
    "methods": BELOW_RUN | {"sparsity"},
    "pruning": BELOW_RUN | {"sparsity", "methods"},
    "preflight": BELOW_RUN | {"sparsity", "methods", "pruning"},
    "run": BELOW_RUN | {"sparsity", "methods", "pruning", "preflight"},
    "tune": BELOW_RUN | {"sparsity", "methods", "pruning", "preflight", "run"},
    "deploy": BELOW_RUN | {"sparsity", "methods", "pruning", "preflight", "run"},
    "compare": BELOW_RUN | {"sparsity", "methods", "pruning", "preflight", "run", "tune"},
    "cli": BELOW_RUN | {"sparsity", "methods", "pruning", "preflight", "run", "tune", "deploy", "compare"},
    # the package's front door (toolbox.load_model, toolbox.load_predictor): lazily, anything but cli
    "front": BELOW_RUN | {"sparsity", "methods", "pruning", "preflight", "run", "tune", "deploy", "compare"},
}


def part_of(module: str) -> str:
    """The part of the core a module belongs to: ``front`` (``toolbox/__init__``), ``api`` or the
    subpackage's name."""
    if module == "toolbox":
        return "front"
    return "api" if module in API else module.split(".")[1]


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of ``b`` that ``a``'s part may not make."""
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                  if b != "toolbox.errors" and part_of(b) != part_of(a)
                  and part_of(b) not in MAY_IMPORT[part_of(a)])


def test_the_core_is_layered() -> None:
    modules = core_modules()
    assert {part_of(name) for name in modules} == set(MAY_IMPORT)
    graph = {name: imports_of(path, modules) for name, path in modules.items()}
    assert layering_violations(graph) == []


def test_the_layering_check_sees_a_wrong_way_import() -> None:
    graph = {"toolbox.sparsity.training": {"toolbox.run.results", "toolbox.errors"},
             "toolbox.run.run": {"toolbox.sparsity.channels"}}
    assert layering_violations(graph) == ["toolbox.sparsity.training -> toolbox.run.results"]


def test_the_top_level_holds_the_api_and_subpackages() -> None:
    top = {p.name for p in CORE.glob("*.py")}
    assert top == {"__init__.py", "_legacy.py", "errors.py", "hookspecs.py", "context.py", "options.py"}
    for package in CORE.iterdir():
        if package.is_dir() and package.name != "__pycache__":
            doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
            assert doc and "May import" in doc, package.name


def test_the_wheel_ships_every_subpackage() -> None:
    project = tomllib.loads((CORE.parent / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    packages = {module_name(p) for p in CORE.rglob("__init__.py")}
    assert packages <= listed, packages - listed


def test_hooks_are_called_from_one_module() -> None:
    """The core calls plugins only through ``plugin_host/calls.py`` and reads entry points only in
    ``plugin_host/entry_points.py``."""
    calling = {str(p.relative_to(CORE)) for p in CORE.rglob("*.py") if ".hook." in p.read_text()}
    assert calling == {"plugin_host/calls.py"}
    reading = {str(p.relative_to(CORE)) for p in CORE.rglob("*.py") if "entry_points(" in p.read_text()}
    assert reading == {"plugin_host/entry_points.py"}
