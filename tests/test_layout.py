"""The library's shape: imports point one way (no cycle among sqlora's modules, lazy imports included)
and no module imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

SRC = REPO / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sqlora_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every sqlora import in ``path``: in functions and under TYPE_CHECKING too (a
    type-only import is an arrow all the same: the module cannot be read without the other)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sqlora"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("sqlora")]
    return found


MODULES = {module_name(p): p for p in (SRC / "sqlora").rglob("*.py")}


def resolve(module: str, names: list[str]) -> list[str]:
    """The modules an import reaches: ``from sqlora.data import sample`` is the subpackage sample."""
    targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return targets or [module]


def graph() -> dict[str, set[str]]:
    return {name: {t for module, names in sqlora_imports(path) for t in resolve(module, names) if t != name}
            for name, path in MODULES.items()}  # fmt: skip


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycle():
    cycles = find_cycles(graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


# The library's layers, bottom first: a module imports only from its own layer or those below. Within a
# layer, only the no-cycle rule applies. (Top-level modules and subpackages by their first name.)
LAYERS = [
    {"errors", "io", "config"},  # what every stage shares: errors, atomic files, params
    {"sql"},  # databases, the sandbox, SQL text (parsing, Spider hardness, the official reading)
    {"data"},  # datasets into records and prompts
    {"model"},  # base models: loading, attention routing, export
    {"train", "infer"},  # fine-tuning; generation
    {"evaluate"},  # scoring (validation EX generates through infer)
    {"testsuite", "report", "serve"},
    {"ask", "cli"},  # the public entry points
]


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    [index] = [i for i, names in enumerate(LAYERS) if part in names]
    return index


def test_every_module_has_a_layer():
    parts = {name.split(".")[1] for name in MODULES if "." in name}
    assert parts == set().union(*LAYERS), parts ^ set().union(*LAYERS)


def test_arrows_point_down_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if layer(b) > layer(a))
    assert not upward, "imports that point up the layers: " + "; ".join(upward)


def test_no_private_names_imported_across_modules():
    found = [f"{name} imports {module}.{n}" for name, path in MODULES.items() for module, names in sqlora_imports(path)
             for n in names if n.startswith("_") and module != name]  # fmt: skip
    assert not found, found


def test_the_checks_see_lazy_and_type_only_imports_and_cycles(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from sqlora.b import x\n")
    assert sqlora_imports(tmp_path / "a.py") == [("sqlora.b", ["x"])]
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sqlora.d import Y\n")
    assert sqlora_imports(tmp_path / "c.py") == [("sqlora.d", ["Y"])]
    assert layer("sqlora.data.prepare") > layer("sqlora.sql.hardness") and layer("sqlora.config") == 0
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
