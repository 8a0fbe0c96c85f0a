"""The package's import graph: no cycles, and a config that loads without torch or strategies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fedcifar

SRC = Path(fedcifar.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """fedcifar modules imported anywhere in the file (lazy imports inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            # Importing a.b.c runs a/__init__ and a/b/__init__ first, except those of the
            # importer's own packages, which are already running when it is imported.
            parts = target.split(".")
            implicit = {".".join(parts[:i]) for i in range(1, len(parts))} - _ancestors(name)
            found.update(m for m in (*implicit, target) if m in known)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) - {"fedcifar"} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def test_the_graph_is_read_correctly():
    graph = import_graph()
    assert "fedcifar.messages" in graph["fedcifar.strategy.fedavg"]
    assert "fedcifar.server.loop" in graph["fedcifar.sim.engine"]
    assert (
        "fedcifar.client" in graph["fedcifar.client.train"] or "fedcifar.client.hooks" in graph["fedcifar.client.train"]
    )


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_src():
    assert cycles(import_graph()) == []


def test_config_imports_nothing_heavy():
    graph = import_graph()
    forbidden = ("fedcifar.strategy", "fedcifar.client", "fedcifar.sim", "fedcifar.server")
    assert not [m for m in graph["fedcifar.config"] if m.startswith(forbidden)]
    code = (
        "import sys; from fedcifar.config import build_config; build_config('paper-cpu'); "
        "print(sorted(m for m in ('torch', 'fedcifar.strategy.registry', 'fedcifar.client') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_client_and_strategies_do_not_know_each_other_or_the_simulator():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("fedcifar.client"):
            assert not [d for d in deps if d.startswith(("fedcifar.strategy", "fedcifar.sim", "fedcifar.server"))], name
        if name.startswith("fedcifar.strategy"):
            assert not [d for d in deps if d.startswith(("fedcifar.client", "fedcifar.sim", "fedcifar.server"))], name


GROUND_FLOOR = ("fedcifar.atomic", "fedcifar.errors")  # imported from every layer, so they import no other
LOWER = ("fedcifar.config", "fedcifar.messages", "fedcifar.data", "fedcifar.model")  # below fedcifar.track


def test_the_ground_floor_imports_nothing_and_the_lower_layers_not_track():
    graph = import_graph()
    assert {n: graph[n] for n in GROUND_FLOOR if graph[n]} == {}
    upward = {
        n: {d for d in deps if d.startswith("fedcifar.track")} for n, deps in graph.items() if n.startswith(LOWER)
    }
    assert {n: deps for n, deps in upward.items() if deps} == {}
