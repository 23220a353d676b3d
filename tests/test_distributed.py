"""The train stage under 2 CPU processes (DDP over gloo, launched by torchrun as accelerate does):
the same steps and loss curve as one process with the same global batch, one adapter, one log."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

TORCHRUN = Path(sys.executable).parent / "torchrun"


def make_project(root: Path, model_dir: Path, batch_size: int) -> Path:
    (root / "data" / "prepared").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "models" / "base").symlink_to(model_dir)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"] |= {"batch_size": batch_size, "logging_steps": 1, "learning_rate": 0.002, "warmup_ratio": 0.0}
    params["lora"] |= {"r": 4, "alpha": 8, "dropout": 0.0}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    records = [
        {
            "db_id": "d",
            "instruction": f"d contains tables such as t{i % 4}.",
            "input": f"How many rows in t{i % 4} above {i}?",
            "output": f"SELECT count(*) FROM t{i % 4} WHERE x > {i}",
        }
        for i in range(32)
    ]
    (root / "data/prepared/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def losses(project: Path) -> list[float]:
    rows = (project / "dvclive/plots/metrics/loss.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[1]) for row in rows]


@pytest.mark.slow
def test_two_processes_train_like_one(tiny_model_dir, tmp_path):
    single = make_project(tmp_path / "single", tiny_model_dir, batch_size=4)
    double = make_project(tmp_path / "double", tiny_model_dir, batch_size=2)  # 2 processes x 2 = the same 4
    one = subprocess.run([sys.executable, str(REPO / "stages/train.py")], cwd=single, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29517", str(REPO / "stages/train.py")],
        cwd=double,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]

    metrics = json.loads((double / "metrics/train.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 8 == json.loads((single / "metrics/train.json").read_text())["steps"]
    # Shared-prefix rows in both: whole steps per process, a row never more than a process's batch.
    assert metrics["shared_prefix"] == 2 and json.loads((single / "metrics/train.json").read_text())["shared_prefix"] == 4
    assert metrics["tokens"] == json.loads((single / "metrics/train.json").read_text())["tokens"]  # every example once
    # One adapter, written once; the metrics printed by one process only.
    assert sorted(p.name for p in (double / "models/finetuned").iterdir()) == sorted(
        p.name for p in (single / "models/finetuned").iterdir()
    )
    assert two.stdout.count('"method": "lora"') == 1
    # One log: every step once, not once per process.
    steps = [int(row.split("\t")[0]) for row in (double / "dvclive/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 9))
    # The same curve shape: it falls, as the single process's does, and stays close to it.
    a, b = losses(single), losses(double)
    assert a[-1] < a[0] and b[-1] < b[0]
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 0.2, (a, b)
    assert not (double / "models" / ".finetuned.saving").exists()
    shutil.rmtree(tmp_path / "single")


def test_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {
        "ddp": ("MULTI_GPU", None),
        "deepspeed_zero2": ("DEEPSPEED", 2),
        "deepspeed_zero3": ("DEEPSPEED", 3),
        "fsdp": ("FSDP", None),
    }
    for name, (kind, stage) in expected.items():
        config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
        assert config.distributed_type.value == kind, name
        if stage is not None:
            assert config.deepspeed_config["zero_stage"] == stage


def predict_project(root: Path, model_dir: Path, sample_dir: Path, records: list[dict], **predict) -> Path:
    (root / "data/prepared").mkdir(parents=True)
    (root / "data/prepared/dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = {"dataset": "sample", "database_dir": str(sample_dir / "database"), "tables_json": str(sample_dir / "tables.json")}
    (root / "data/prepared/meta.json").write_text(json.dumps(meta))
    (root / "models").mkdir()
    (root / "models/finetuned").symlink_to(model_dir)  # a plain checkpoint folder: standalone
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["predict"] |= {"batch_size": 4, "max_new_tokens": 8, **predict}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.mark.slow
def test_two_processes_predict_like_one(tiny_model_dir, sample_dir, tmp_path):
    """Under torchrun each process predicts its share of the batches; the main one merges them in input
    order: the same outputs as one process, greedy and sampled (each question's own random stream)."""
    from dataclasses import asdict

    from sqlora.config import DataParams, PromptParams
    from sqlora.data.prepare import prepare_split

    _, fitted, _ = prepare_split("dev", DataParams(dataset="sample", source=str(sample_dir)), PromptParams(), limit=14)
    records = [asdict(r) for r in fitted.records]
    for decoding in ("greedy", "sample"):
        one = predict_project(tmp_path / f"one-{decoding}", tiny_model_dir, sample_dir, records, decoding=decoding)
        two = predict_project(tmp_path / f"two-{decoding}", tiny_model_dir, sample_dir, records, decoding=decoding)
        single = subprocess.run([sys.executable, str(REPO / "stages/predict.py")], cwd=one, capture_output=True, text=True, timeout=600)
        assert single.returncode == 0, single.stderr[-3000:]
        double = subprocess.run(
            [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29519", str(REPO / "stages/predict.py")],
            cwd=two,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert double.returncode == 0, double.stderr[-3000:]
        assert "2 processes" in double.stdout and double.stdout.count("predict (") == 1  # one summary, from the main process
        assert (two / "predictions/dev.sql").read_text() == (one / "predictions/dev.sql").read_text()
        rows = [
            {k: v for k, v in json.loads(line).items() if "seconds" not in k}
            for line in (two / "predictions/dev.jsonl").read_text().splitlines()
        ]
        expected = [
            {k: v for k, v in json.loads(line).items() if "seconds" not in k}
            for line in (one / "predictions/dev.jsonl").read_text().splitlines()
        ]
        assert rows == expected and [r["index"] for r in rows] == list(range(len(records)))
        assert not list((two / "predictions/partial").glob("dev.*.jsonl"))  # merged, then removed
