"""End to end: the real stages under the real `dvc repro`, on the sample, with a tiny random model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from sqlora.model.loader import dtype_name, resolve_dtype
from tests.helpers import REPO, SLOW_BATCHES

pytestmark = pytest.mark.slow


def tool_env(**extra: str) -> dict[str, str]:
    """The environment of the commands a test runs: this venv's dvc and sqlora first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def set_params(project: Path, **groups) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in groups.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir) -> Path:
    """A fresh git + DVC project holding this repository's pipeline, set to a tiny configuration."""
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for name in ("stages", "src"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    set_params(
        root,
        method="lora",
        model={"name": str(tiny_model_dir)},
        data={"max_train_examples": 16, "max_dev_examples": 6},
        train={"batch_size": 4, "logging_steps": 1},
        predict={"batch_size": 4, "max_new_tokens": 8},
        eval={"workers": 1},
    )
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny pipeline"], root)
    run(["dvc", "repro"], root)
    return root


def project_model(project: Path) -> str:
    return yaml.safe_load((project / "params.yaml").read_text())["model"]["name"]


def test_repro_writes_every_output(project):
    assert (project / "data/sample/database").is_dir() and (project / "data/sample/tables.json").is_file()
    assert (project / "models/base/config.json").is_file()
    train_lines = (project / "data/prepared/train.jsonl").read_text().splitlines()
    dev_records = [json.loads(line) for line in (project / "data/prepared/dev.jsonl").read_text().splitlines()]
    assert len(train_lines) == 16 and len(dev_records) == 6
    assert set(dev_records[0]) == {"db_id", "instruction", "input", "output"}
    assert (project / "models/finetuned/adapter_model.safetensors").is_file()
    info = json.loads((project / "models/finetuned/sqlora_model.json").read_text())  # what `sqlora ask` prompts with
    assert (
        info["model"] == str(project_model(project)) and info["prompt"]["schema_format"] == "natural" and info["prompt"]["values"] is False
    )
    data = json.loads((project / "metrics/data.json").read_text())
    assert data["train"]["records"] == 16 and data["dev"]["records"] == 6 and data["dev"]["questions"] == 222
    assert sum(data["dev"]["hardness"].values()) == 6 and data["dev"]["prompt_tokens"]["max"] <= 512 - 8
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    assert meta == {
        "dataset": "sample",
        "database_dir": "data/sample/database",
        "tables_json": "data/sample/tables.json",
        "validation_database_dir": "data/sample/database",
    }
    assert (project / "data/prepared/validation.jsonl").read_text() == "" and data["validation"]["records"] == 0

    train = json.loads((project / "metrics/train.json").read_text())
    assert train["method"] == "lora" and train["steps"] == 4 and train["train_examples"] == 16
    loss_steps = [row.split("\t")[0] for row in (project / "dvclive/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert loss_steps == ["1", "2", "3", "4"]
    assert (project / "models/checkpoints/fingerprint.txt").is_file()  # persisted, nothing left to resume
    assert not list((project / "models/checkpoints").glob("checkpoint-*"))

    predictions = (project / "predictions/dev.sql").read_text().split("\n")
    assert len(predictions) == 7 and predictions[-1] == ""  # one line per question
    raw = [json.loads(line) for line in (project / "predictions/dev.jsonl").read_text().splitlines()]
    assert [r["sql"] for r in raw] == predictions[:-1]

    assert (project / "models/exported/model.safetensors").is_file()  # the export stage
    # model.dtype auto: bf16 where this machine has it natively (AVX512-BF16, AMX), fp32 elsewhere
    exported = json.loads((project / "models/exported/sqlora_export.json").read_text())["dtype"]
    assert exported == dtype_name(resolve_dtype("auto")) == train["dtype"]

    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert metrics["count"]["all"] == 6 and 0.0 <= metrics["ex"]["all"] <= 1.0 and 0.0 <= metrics["em"]["all"] <= 1.0
    assert sum(metrics["count"][level] for level in ("easy", "medium", "hard", "extra")) == 6
    report = json.loads((project / "reports/eval_examples.json").read_text())
    assert [e["gold"] for e in report["examples"]] == [r["output"] for r in dev_records]


def test_second_repro_is_a_no_op(project):
    result = run(["dvc", "repro"], project)
    assert "Running stage" not in result.stdout
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."


def test_eval_param_reruns_evaluate_alone(project):
    set_params(project, eval={"timeout_s": 12.5})
    result = run(["dvc", "repro"], project)
    ran = [line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["evaluate"]


def test_unknown_method_fails_cleanly(project):
    set_params(project, method="bogus")
    try:
        result = run(["dvc", "repro"], project, check=False)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == ["error: params.yaml: 'method' is 'bogus'; expected one of lora, qlora, full, none"]
        # DVC removed the stage's old outputs before running it; the stage wrote nothing new.
        assert not (project / "models/finetuned").exists() and not (project / "metrics/train.json").exists()
    finally:
        set_params(project, method="lora")
    run(["dvc", "repro"], project)
    assert (project / "metrics/train.json").is_file()


def test_missing_dataset_fails_cleanly(project, tmp_path):
    missing = tmp_path / "nowhere"
    set_params(project, data={"source": str(missing)})
    try:
        result = run([sys.executable, "stages/prepare.py"], project, check=False)
    finally:
        set_params(project, data={"source": "data/sample"})
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: params.yaml: 'data.source' {str(missing)!r} is neither a folder nor a .zip archive"


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_exp_run_other_methods(project, method):
    if method == "qlora":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "state after repro", "--allow-empty"], project)
    run(["dvc", "exp", "run", "-S", f"method={method}"], project)
    train = json.loads((project / "metrics/train.json").read_text())
    assert train["method"] == method and train["steps"] == 4
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    assert (project / "models/finetuned" / weights).is_file()
    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    assert "ex" in shown


# A sitecustomize.py, run by every Python started with it on PYTHONPATH: slows the train stage's
# batches so that the test can kill `dvc exp run` between two checkpoints.
SLOW_TRAIN = 'import sys\nif sys.argv and sys.argv[0].endswith("train.py"):\n' + textwrap.indent(SLOW_BATCHES, "    ")


def test_killed_exp_run_resumes_from_its_checkpoint(project, tmp_path):
    """A long `dvc exp run` killed mid-train (the end of a session) resumes from its last checkpoint
    when run again: DVC's checkout before the run must not wipe them."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_TRAIN)
    overrides = ["-S", "method=lora", "-S", "data.max_train_examples=48", "-S", "train.save_steps=2"]
    killed = subprocess.Popen(
        ["dvc", "exp", "run", *overrides],
        cwd=project,
        env=tool_env(PYTHONPATH=str(tmp_path)),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = project / "models/checkpoints/checkpoint-4/trainer_state.json"
    deadline = time.monotonic() + 300
    try:
        while not checkpoint.is_file():
            assert killed.poll() is None and time.monotonic() < deadline, "no checkpoint-4 before the run ended"
            time.sleep(0.05)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # dvc and the stage it runs
        killed.wait()
    try:
        resumed = run(["dvc", "exp", "run", *overrides], project)
    finally:
        set_params(project, data={"max_train_examples": 16}, train={"save_steps": 20})
    started = [line for line in resumed.stdout.splitlines() if line.startswith("train: resuming from")]
    assert len(started) == 1 and started[0].startswith("train: resuming from models/checkpoints/checkpoint-"), resumed.stdout
    train = json.loads((project / "metrics/train.json").read_text())
    assert train["resumed_from_step"] >= 4 and train["steps"] == 12
    assert not list((project / "models/checkpoints").glob("checkpoint-*"))  # finished: nothing left to resume


def test_no_output_is_both_cached_and_persisted():
    """`dvc exp run` checks out every cached output before it runs, a persisted one too: what a stage
    keeps for its next run (checkpoints, partial predictions) must be uncached or no output at all."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            if isinstance(out, dict):
                ((path, flags),) = out.items()
                assert not flags.get("persist") or flags.get("cache") is False, f"{name}: {path}"


def test_queued_experiments_run_all(project):
    """`dvc exp run --queue` then `--run-all`: each experiment runs in its own temporary copy of the repo."""
    set_params(project, method="lora")  # `dvc exp run -S` above left its value in the workspace
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "state before the queue", "--allow-empty"], project)
    run(["dvc", "exp", "run", "--queue", "-n", "q-none", "-S", "method=none"], project)
    run(["dvc", "exp", "run", "--queue", "-n", "q-ddl", "-S", "prompt.schema_format=ddl"], project)
    run(["dvc", "exp", "run", "--run-all", "--jobs", "1"], project)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    experiments = {e["name"]: e["revs"][0]["data"] for row in shown for e in (row.get("experiments") or []) if e.get("name")}
    assert {"q-none", "q-ddl"} <= set(experiments)
    for name, method, schema_format in [("q-none", "none", "natural"), ("q-ddl", "lora", "ddl")]:
        data = experiments[name]
        params = data["params"]["params.yaml"]["data"]
        assert params["method"] == method and params["prompt"]["schema_format"] == schema_format
        assert "all" in data["metrics"]["metrics/eval.json"]["data"]["ex"]
    workspace = yaml.safe_load((project / "params.yaml").read_text())  # queued runs leave it alone
    assert workspace["method"] == "lora" and workspace["prompt"]["schema_format"] == "natural"


def test_push_and_pull_through_a_remote(project, tmp_path):
    """A team shares data, adapters and predictions through a DVC remote (a local folder here; S3, GCS
    and SSH remotes work the same way): a fresh clone pulls them and has nothing left to recompute."""
    remote = tmp_path / "remote"
    run(["dvc", "repro"], project)
    run(["dvc", "remote", "add", "-f", "-d", "team", str(remote)], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "outputs and remote", "--allow-empty"], project)
    run(["dvc", "push"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    for path in ("data/prepared/train.jsonl", "models/finetuned/adapter_model.safetensors", "predictions/dev.sql"):
        assert (clone / path).read_bytes() == (project / path).read_bytes()
    status = run(["dvc", "status"], clone).stdout.strip()
    assert status == "Data and pipelines are up to date.", status
    assert "Running stage" not in run(["dvc", "repro"], clone).stdout
