"""Every module of the agent, the supervisor and the TUI imports on its own in a fresh interpreter,
and no trainwarden module imports another in a cycle (read from the source with ast)."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGES = ("trainwarden.agent", "trainwarden.supervisor", "trainwarden.tui")


def source_files() -> dict[str, tuple[Path, bool]]:
    """Every module of PACKAGES (subpackages included): name -> (file, is a package's __init__).
    `__main__` modules are left out: importing one runs the program."""
    found: dict[str, tuple[Path, bool]] = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
        for folder in spec.submodule_search_locations:
            for path in sorted(Path(folder).rglob("*.py")):
                parts = [package, *path.relative_to(folder).with_suffix("").parts]
                if parts[-1] == "__main__":
                    continue
                is_package = parts[-1] == "__init__"
                found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = source_files()


# ------------------------------------------------------------------ imports
@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports_alone(module: str) -> None:
    """A module that only imports after some other module was imported first (a cycle, or a name
    that moved) fails here, whatever order the test suite happened to import things in."""
    r = subprocess.run([sys.executable, "-c", "import importlib, sys; importlib.import_module(sys.argv[1])", module],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"importing {module} alone failed:\n{r.stderr}"


# ------------------------------------------------------------------- cycles
def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_nodes(tree: ast.Module, *, deferred: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported (module level, including those
    under if/try/with and class bodies); with `deferred`, also those inside functions. Imports under
    `if TYPE_CHECKING:` never run and are left out."""
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif _is_type_checking(node):
            continue
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not deferred:
            continue
        else:
            todo.extend(ast.iter_child_nodes(node))


def import_graph(modules: Mapping[str, tuple[Path, bool]], *, deferred: bool) -> dict[str, set[str]]:
    """Module -> the trainwarden modules it imports. `from P import X` counts as importing P.X when
    that is a module, else P; the parent packages Python imports on the way are not counted (a
    package importing its own submodules is no cycle)."""
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path)), deferred=deferred):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in modules)
                continue
            base = node.module or ""
            if node.level:  # relative: `.` is this package, `..` its parent
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    targets.add(f"{base}.{alias.name}")
                elif base in modules:
                    targets.add(base)
        graph[name] = targets - {name}
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(found: list[list[str]], graph: Mapping[str, set[str]]) -> str:
    return "\n".join(
        "cycle among: " + ", ".join(f"{m} -> [{', '.join(sorted(graph[m] & set(c)))}]" for m in c) for c in found)


def test_no_import_cycle_at_module_level() -> None:
    graph = import_graph(MODULES, deferred=False)
    found = cycles(graph)
    assert not found, _describe(found, graph)


def test_no_import_cycle_even_through_imports_inside_functions() -> None:
    """An import put inside a function only hides a cycle until that function runs: the modules
    still depend on each other (the command line and its helpers once did, through cli.py)."""
    graph = import_graph(MODULES, deferred=True)
    found = cycles(graph)
    assert not found, _describe(found, graph)


def test_the_cycle_check_sees_imports_and_cycles(tmp_path: Path) -> None:
    """The checks above would pass on a graph with no edges: show they read real imports."""
    graph = import_graph(MODULES, deferred=True)
    assert "trainwarden.supervisor.watch" in graph["trainwarden.supervisor.daemon"]  # from .watch import RunWatch
    assert "trainwarden.supervisor.cli.parser" in graph["trainwarden.supervisor.cli"]  # from .parser import ...
    assert "trainwarden.supervisor.export" in graph["trainwarden.supervisor.cli.parser"]  # from .. import export
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    fake = {"p.a": (tmp_path / "a.py", False), "p.b": (tmp_path / "b.py", False)}
    assert cycles(import_graph(fake, deferred=False)) == []
    assert cycles(import_graph(fake, deferred=True)) == [["p.a", "p.b"]]
