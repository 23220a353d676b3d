"""The CI gate on a real git + DVC repository: `dvc repro` rewrites metrics/eval.json, `sqlora gate`
compares it with the committed one through `dvc metrics diff`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

# A one-stage pipeline whose metrics/eval.json comes from scores.json: a stand-in for a model that
# got better or worse, without training one.
WRITE_METRICS = """import json
ex, em = json.load(open("scores.json"))
json.dump({"ex": {"easy": ex, "all": ex}, "em": {"easy": em, "all": em}, "count": {"all": 222}}, open("metrics/eval.json", "w"))
"""
DVC_YAML = """stages:
  evaluate:
    cmd: python write_metrics.py
    deps: [write_metrics.py, scores.json]
    metrics:
      - metrics/eval.json:
          cache: false
"""


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def rebuild(repo: Path, ex: float, em: float) -> None:
    (repo / "scores.json").write_text(json.dumps([ex, em]))
    result = run(["dvc", "repro", "-q"], repo)
    assert result.returncode == 0, result.stderr


def gate(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "sqlora.cli", "gate", *args], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gated")
    (root / "metrics").mkdir()
    (root / "write_metrics.py").write_text(WRITE_METRICS)
    (root / "dvc.yaml").write_text(DVC_YAML)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")  # gate.max_drop: 0.02
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        assert run(cmd, root).returncode == 0
    rebuild(root, 0.41, 0.401)
    assert run(["git", "add", "-A"], root).returncode == 0
    assert run(["git", "commit", "-qm", "baseline"], root).returncode == 0
    return root


@pytest.mark.slow
def test_same_metrics_pass(repo):
    rebuild(repo, 0.41, 0.401)
    result = gate(repo)
    assert result.returncode == 0, result.stderr
    assert "ok   ex.all: 0.4100 -> 0.4100 (+0.0 points; allowed drop 2.0)" in result.stdout
    assert "gate: passed (ex.all, em.all within 2.0 points of HEAD)" in result.stdout


@pytest.mark.slow
def test_a_worse_model_fails_with_the_diff(repo):
    rebuild(repo, 0.0, 0.0)  # what a learning rate of 0 does to EX and EM
    result = gate(repo)
    assert result.returncode == 1
    # DVC's own diff table, then one line per guarded metric.
    assert "| Path" in result.stdout and "metrics/eval.json" in result.stdout and "ex.easy" in result.stdout
    assert "FAIL ex.all: 0.4100 -> 0.0000 (-41.0 points; allowed drop 2.0)" in result.stdout
    assert "FAIL em.all: 0.4010 -> 0.0000 (-40.1 points; allowed drop 2.0)" in result.stdout
    assert result.stderr.strip() == "gate: FAILED: ex.all, em.all fell more than 2.0 points below HEAD"


@pytest.mark.slow
def test_drops_within_the_tolerance_pass_and_beyond_fail(repo):
    rebuild(repo, 0.395, 0.39)  # -1.5 and -1.1 points
    assert gate(repo).returncode == 0
    rebuild(repo, 0.41, 0.37)  # EM alone -3.1 points
    result = gate(repo)
    assert result.returncode == 1 and "FAIL em.all" in result.stdout and "ok   ex.all" in result.stdout


@pytest.mark.slow
def test_tolerance_comes_from_params(repo, tmp_path):
    rebuild(repo, 0.37, 0.37)
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("max_drop: 0.02", "max_drop: 0.05"))
    assert gate(repo, "--params", str(params)).returncode == 0
    assert gate(repo).returncode == 1


@pytest.mark.slow
def test_missing_metrics_fail(repo):
    rebuild(repo, 0.41, 0.401)
    (repo / "metrics/eval.json").write_text(json.dumps({"ex": {"all": 0.41}}))  # EM gone
    result = gate(repo)
    assert result.returncode == 1 and "FAIL em.all: missing from this run's metrics/eval.json" in result.stdout


def test_unknown_baseline_is_one_line_and_exit_2(repo):
    result = gate(repo, "--rev", "no-such-rev")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == "error: `dvc metrics diff --all --json no-such-rev --targets metrics/eval.json` in .: unknown Git revision 'no-such-rev'"


def test_ci_runs_the_tests_and_the_gate():
    script = (REPO / ".ci/run").read_text()
    assert "make test" in script and "make gate" in script
    makefile = (REPO / "Makefile").read_text()
    assert "gate: repro\n\tsqlora gate" in makefile


@pytest.mark.parametrize(
    "output, message",
    [
        ("WARNING: something\n{}", "output is not JSON (Expecting value at line 1 column 1)"),
        ('["metrics/eval.json"]', "unexpected output"),
        ('{"metrics/eval.json": {"ex.all": 0.5}}', "unexpected output"),
    ],
)
def test_an_unreadable_metrics_diff_is_one_line(monkeypatch, capsys, output, message):
    """`dvc metrics diff --json` output of another shape: one error line, exit status 2."""
    from sqlora import cli
    from sqlora.report import gate as gate_module

    monkeypatch.setattr(gate_module, "run_dvc", lambda *args, **kw: output)
    with pytest.raises(SystemExit) as exit:
        cli.main(["gate", "--params", str(REPO / "params.yaml")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: `dvc metrics diff --all --json HEAD --targets metrics/eval.json`: {message}"), err
