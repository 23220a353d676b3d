"""What pyproject.toml and requirements.txt claim about the environment the code needs."""

import re
import tomllib

import transformers
from packaging.requirements import Requirement  # a dependency of transformers

from conftest import REPO


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_requires_python_matches_the_stdlib_we_use():
    # sqlora.io.folder_stamp uses hashlib.file_digest, new in Python 3.11 (as is tomllib, used here).
    assert _pyproject()["project"]["requires-python"] == ">=3.11"


def _transformers(lines) -> Requirement:
    reqs = [Requirement(line.split("#")[0]) for line in lines if re.match(r"\s*transformers\s*[<>=!~]", line)]
    assert len(reqs) == 1, reqs
    return reqs[0]


def test_transformers_has_an_upper_bound_in_both_files():
    # The fast engine (infer/fast.py) relies on transformers' cache and attention internals: a new
    # minor version must not be installed unchecked.
    pyproject = _transformers(_pyproject()["project"]["dependencies"])
    requirements = _transformers((REPO / "requirements.txt").read_text(encoding="utf-8").splitlines())
    for req in (pyproject, requirements):
        assert any(s.operator in ("<", "<=", "==") for s in req.specifier), f"no upper bound: {req}"
        assert req.specifier.contains(transformers.__version__), (str(req), transformers.__version__)
        major, minor = map(int, transformers.__version__.split(".")[:2])
        assert not req.specifier.contains(f"{major}.{minor + 1}.0"), f"{req} allows the next minor version"
