"""Running DVC from the report and the gate: one way to find it, one way to read its errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlora.errors import SqloraError


def dvc_command() -> list[str]:
    """How to run DVC: the one beside this interpreter, the one on PATH, or ``python -m dvc``."""
    beside = Path(sys.executable).parent / "dvc"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("dvc")
    if found:
        return [found]
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    raise SqloraError("dvc is not installed (run `make setup`, or pip install dvc)")


def run_dvc(*args: str, repo: str | os.PathLike = ".") -> str:
    """``dvc args...`` in ``repo``: its stdout, or a one-line error with DVC's own reason."""
    repo = Path(repo)
    if not repo.is_dir():
        raise SqloraError(f"{repo}: no such folder")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(dvc_command() + list(args), cwd=repo, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR")]
        why = errors[0] if errors else (lines[-1] if lines else f"exit status {result.returncode}")
        raise SqloraError(f"`dvc {' '.join(args)}` in {repo}: {why}")
    return result.stdout


def dvc_json(*args: str, repo: str | os.PathLike = ".", expect: type = dict) -> Any:
    """``dvc args... --json`` read as JSON of type ``expect``; a one-line error when it is not."""
    out = run_dvc(*args, "--json", repo=repo)
    what = f"`dvc {' '.join(args)} --json` in {repo}"
    try:
        data = json.loads(out or ("[]" if expect is list else "{}"))
    except json.JSONDecodeError as exc:
        raise SqloraError(f"{what}: output is not JSON ({exc.msg})") from None
    if not isinstance(data, expect):
        raise SqloraError(f"{what}: expected a JSON {expect.__name__}, got {type(data).__name__}")
    return data
