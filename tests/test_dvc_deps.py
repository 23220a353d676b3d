"""Every stage depends on every file of ours it runs: its script and the sqlora modules it imports,
directly or through other modules, at the top or inside functions. A dep that misses one lets DVC
keep stale predictions or metrics after a code change."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tests.helpers import REPO

SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """The file of module ``sqlora.x.y`` (a package's __init__.py), None if it is not ours."""
    if name != "sqlora" and not name.startswith("sqlora."):
        return None
    path = SRC.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported(path: Path) -> set[str]:
    """Every module an import statement anywhere in ``path`` names (``from a import b``: a, and a.b if a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def closure(script: Path) -> set[Path]:
    """The script and every sqlora file it can import (packages bring their __init__.py)."""
    seen, todo = {script}, [script]
    while todo:
        for name in imported(todo.pop()):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
                path = module_file(".".join(parts[:depth]))
                if path is not None and path.is_file() and path not in seen:
                    seen.add(path)
                    todo.append(path)
    return seen


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == REPO / dep or (REPO / dep) in path.parents for dep in deps)


def test_every_stage_depends_on_everything_it_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = REPO / stage["cmd"].split()[-1]
        assert script.is_file(), f"{name}: its command runs {script}, which does not exist"
        missing = sorted(str(p.relative_to(REPO)) for p in closure(script) if not covered(p, stage["deps"]))
        assert not missing, f"stage {name} imports files outside its deps: {missing}"


def test_no_stage_depends_on_library_code_it_does_not_import():
    """Deps follow the subpackages: a change to the evaluator does not rerun training."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        files = closure(REPO / stage["cmd"].split()[-1])
        unused = [dep for dep in stage["deps"] if dep.startswith("src/") and not any(covered(p, [dep]) for p in files)]
        assert not unused, f"stage {name} depends on {unused}, which it never imports"
    # training runs the evaluator's execution scoring (validation EX), not its reports
    assert "src/sqlora/evaluate" not in stages["train"]["deps"] and "src/sqlora/evaluate/error_kinds.py" not in stages["train"]["deps"]


def test_the_closure_follows_imports_inside_functions(tmp_path):
    """The check itself: a module imported only inside a function still counts."""
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from sqlora.infer.voting import vote\n")
    files = {p.relative_to(REPO).as_posix() for p in closure(script) if p != script}
    assert {"src/sqlora/infer/voting.py", "src/sqlora/sql/pool.py", "src/sqlora/__init__.py"} <= files
    assert not covered(REPO / "src/sqlora/infer/voting.py", ["stages/predict.py", "src/sqlora/evaluate"])
    assert covered(REPO / "src/sqlora/infer/fast.py", ["src/sqlora/infer"])
