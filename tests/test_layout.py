"""The library's shape: imports point one way (no cycle among sqlora's modules, lazy imports included)
and no module imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sqlora_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every sqlora import in ``path``, in functions too, but not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}  # fmt: skip
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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


def test_no_private_names_imported_across_modules():
    found = [f"{name} imports {module}.{n}" for name, path in MODULES.items() for module, names in sqlora_imports(path)
             for n in names if n.startswith("_") and module != name]  # fmt: skip
    assert not found, found


def test_the_checks_see_lazy_imports_and_cycles(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from sqlora.b import x\n")
    assert sqlora_imports(tmp_path / "a.py") == [("sqlora.b", ["x"])]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
