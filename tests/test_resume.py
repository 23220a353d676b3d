"""A training run killed mid-way resumes from its last checkpoint and ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sqlora.io import folder_stamp
from tests.helpers import SLOW_BATCHES

pytestmark = pytest.mark.slow  # trains models, runs the pipeline or stages in processes

# Trains LoRA on tiny examples of four schemas (argv: examples, epochs, questions per shared-prefix row),
# two per step, a checkpoint every 5 steps.
SCRIPT = """
import sys
from pathlib import Path
from sqlora.config import LoraParams, TrainParams
from sqlora.data.records import Record
import sqlora.train.trainer as training

model_dir, out, examples, epochs, shared_prefix = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:])
schemas = [" ".join(f"t{d}_{k} has columns id, name, x{k}." for k in range(8)) for d in range(4)]
records = [
    Record(db_id=f"d{i % 4}", instruction=f"d{i % 4} contains tables such as {schemas[i % 4]}", input=f"How many rows in t{i % 4}_1 above {i}?",
           output=f"SELECT count(*) FROM t{i % 4}_1 WHERE x > {i}")
    for i in range(examples)
]
training.train(
    method="lora", base_dir=model_dir, records=records, out_dir=out / "finetuned", lora=LoraParams(r=4, alpha=8),
    params=TrainParams(batch_size=2, logging_steps=1, save_steps=5, max_length=256, epochs=epochs, shared_prefix=shared_prefix),
    seed=0, metrics_path=out / "train.json", live_dir=out / "live", checkpoint_dir=out / "checkpoints",
)
"""
# (examples, epochs, questions per shared-prefix row): 20 steps; killed after checkpoint 10 or 15.
RUNS = {"separate rows": (40, 1, 1), "shared prefixes": (40, 1, 8), "shared prefixes, killed in epoch 2": (20, 2, 8)}


def start(model_dir: Path, out: Path, speed: str, run: tuple[int, int, int] = RUNS["shared prefixes"]) -> subprocess.Popen:
    code = SLOW_BATCHES + SCRIPT if speed == "slow" else SCRIPT
    return subprocess.Popen(
        [sys.executable, "-c", code, str(model_dir), str(out), *map(str, run)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("case", list(RUNS))
def test_killed_run_resumes_to_the_same_adapter(tiny_model_dir, tmp_path, case):
    """Also with shared-prefix rows, and killed in a later epoch: the resumed run replays that epoch's
    order of steps and skips what was trained, so it ends where the uninterrupted run ends."""
    whole, broken, settings = tmp_path / "whole", tmp_path / "broken", RUNS[case]
    killed_at = 15 if settings[1] == 2 else 10
    assert start(tiny_model_dir, whole, "fast", settings).wait(timeout=300) == 0

    run = start(tiny_model_dir, broken, "slow", settings)
    deadline = time.monotonic() + 240
    # A checkpoint is complete once its trainer_state.json is written (the last file saved).
    while not (broken / "checkpoints" / f"checkpoint-{killed_at}" / "trainer_state.json").is_file():
        assert run.poll() is None and time.monotonic() < deadline, run.stdout.read() if run.poll() is not None else "no checkpoint"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (broken / "finetuned").exists()  # killed before the end

    resumed = start(tiny_model_dir, broken, "fast", settings)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert "train: resuming from" in output and f"checkpoint-{killed_at}" in output

    metrics = json.loads((broken / "train.json").read_text())
    assert metrics["steps"] == 20 and metrics["resumed_from_step"] == killed_at
    assert metrics["shared_prefix"] == min(settings[2], 2)  # a row holds at most a step's questions
    # The training time counts the killed run up to its checkpoint (10 or 15 batches of at least 0.3 s).
    assert metrics["total_wall_time_s"] >= metrics["wall_time_s"] + 2.5
    whole_metrics = json.loads((whole / "train.json").read_text())
    assert whole_metrics["total_wall_time_s"] == whole_metrics["wall_time_s"]
    expected = load_file(whole / "finetuned" / "adapter_model.safetensors")
    got = load_file(broken / "finetuned" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] - got[name]).abs().max().item() <= 1e-6, name
    # One curve, every step once: the killed run's steps after the checkpoint were dropped.
    steps = [int(line.split("\t")[0]) for line in (broken / "live/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 21))
    assert not list((broken / "checkpoints").glob("checkpoint-*"))  # finished: nothing left to resume


def test_checkpoints_of_other_inputs_are_not_resumed(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    stale = out / "checkpoints" / "checkpoint-5"
    stale.mkdir(parents=True)
    (out / "checkpoints" / "fingerprint.txt").write_text("another run\n")
    result = start(tiny_model_dir, out, "fast")
    output = result.communicate(timeout=300)[0]
    assert result.returncode == 0, output
    assert "resuming" not in output and not stale.exists()
    assert json.loads((out / "train.json").read_text())["resumed_from_step"] == 0


def test_base_model_stamp_follows_contents_not_modification_times(tmp_path):
    # `dvc checkout` and copies rewrite mtimes; a long run must still resume after them.
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    before = folder_stamp(tmp_path)
    os.utime(tmp_path / "model.safetensors", (0, 0))
    assert folder_stamp(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"weighTs")  # same size, other contents
    assert folder_stamp(tmp_path) != before
