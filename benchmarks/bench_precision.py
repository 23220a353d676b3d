"""Train stage tokens/s in its precision (model.dtype) against the same stage in fp32 and against a bare
PyTorch loop in the same precision: same model, LoRA, batches and sequence lengths, one run. Separate
rows on every side (train.shared_prefix 1: the bare loop batches as transformers does; the shared-prefix
side of training is make bench-train's).

Targets: the stage reaches at least 2.2x the fp32 stage's tokens/s (issue 18: bf16 autocast where the
hardware has native bf16) and at least 90% of the bare loop's (issue 5: the Trainer costs little).
Usage: make bench-precision [ARGS="--examples 64 --runs bare,stage,fp32,stage,bare --memory"]

Both sides count and time the same thing:
- tokens: the real (unpadded) prompt + SQL tokens of the batches, as train() counts them for tokens_per_s;
- time: the stage's own number, the wall time of trainer.train() (Trainer, dataloader and optimizer set-up,
  every step, the slower first one included, the dvclive step logging; model loading, tokenisation and
  saving excluded). The bare loop times the same span after its own fresh model load: optimizer creation
  and every step, the first one included. Neither side gets a warm-up step; the default run order
  bare, stage, bare puts one bare run before and one after the stage, so neither side alone runs cold.
- batches: the stage's length-grouped order (transformers' sampler, reproduced with the same seed and
  checked against the order the stage drew), collated by the stage's ResponseCollator: the same padded
  shapes and the same logits_to_keep.
- precision: "stage" and "bare" run in params.yaml's model.dtype (auto: bf16 autocast on a CPU with
  native bf16, the base weights as training_weights_dtype loads them); "fp32" is the stage with
  model.dtype float32, what it ran before issue 18.
The bare loop: collate, forward under autocast, response_loss, backward, AdamW step (fused, the
Trainer's default), zero_grad; no scheduler, gradient clipping or logging. train() runs with its defaults: no checkpoint_dir,
so no checkpoints (the stage saves one every train.save_steps steps; 8 steps save none anyway).
--memory also runs each side alone in a child process and reports its peak RSS (VmHWM).
"""

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import transformers.trainer_pt_utils as pt_utils
from transformers import set_seed

from sqlora.config import load_params
from sqlora.data.records import load_records
from sqlora.model.loader import device, dtype_name, load_base_model, load_tokenizer, resolve_dtype
from sqlora.train import trainer as training
from sqlora.train.batches import ResponseCollator, response_loss, tokenize_records
from sqlora.train.trainer import add_lora, peak_rss_mb, training_weights_dtype

TARGET = 0.90  # stage / bare loop
TARGET_FP32 = 2.2  # stage / the fp32 stage

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--examples", type=int, default=64, help="first N training records (N / batch_size steps)")
parser.add_argument("--data", default="data/prepared/train.jsonl")
parser.add_argument("--model", default="models/base")
parser.add_argument("--runs", default="bare,stage,fp32,stage,bare", help="comma-separated order of the timed runs: bare, stage, fp32")
parser.add_argument("--memory", action="store_true", help="also the peak RSS of each side, each in its own process")
parser.add_argument("--rss-only", action="store_true", help=argparse.SUPPRESS)  # the child of --memory
args = parser.parse_args()

params = load_params()
train_params, method = replace(params.train, shared_prefix=1), params.method
assert method == "lora", f"this benchmark is for method lora, params.yaml has {method!r}"
records = load_records(args.data)[: args.examples]
tokenizer = load_tokenizer(args.model)
features = tokenize_records(records, tokenizer, train_params.max_length, params.prompt.chat_template).features
tokens = sum(len(f["input_ids"]) for f in features) * train_params.epochs
batch_size = train_params.batch_size
compute = resolve_dtype(params.model.dtype)


# The order the stage's LengthGroupedSampler draws: transformers' grouping on the global torch RNG, which the
# Trainer seeds when it is created and the DataLoader iterator draws once from (its workers' base seed) before
# the sampler runs. Recorded during the stage to check it.
set_seed(params.seed)
torch.empty((), dtype=torch.int64).random_()
order = pt_utils.get_length_grouped_indices([len(f["input_ids"]) for f in features], batch_size)
stage_orders = []
grouped_indices = pt_utils.get_length_grouped_indices


def recording_grouped_indices(*a, **kw):
    stage_orders.append(grouped_indices(*a, **kw))
    return stage_orders[-1]


pt_utils.get_length_grouped_indices = recording_grouped_indices


def batches(order: list[int]) -> list[list[dict]]:
    return [[features[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]


def run_stage(dtype: str = params.model.dtype) -> dict:
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # its metrics, read below
        training.train(
            method=method, base_dir=args.model, records=records, out_dir=f"{tmp}/model", lora=params.lora,
            params=train_params, seed=params.seed, metrics_path=f"{tmp}/train.json", live_dir=f"{tmp}/dvclive",
            chat_template=params.prompt.chat_template, dtype=dtype,
        )  # fmt: skip
        metrics = json.loads(Path(f"{tmp}/train.json").read_text())
    assert metrics["tokens"] == tokens, (metrics["tokens"], tokens)
    return {"tokens_per_s": metrics["tokens_per_s"], "wall_s": metrics["wall_time_s"], "steps": metrics["steps"],
            "dtype": metrics["dtype"], "final_loss": metrics["final_loss"]}  # fmt: skip


def run_bare(order: list[int]) -> dict:
    set_seed(params.seed)  # as train(): the same LoRA initialisation
    model = add_lora(load_base_model(args.model, method, training_weights_dtype(method, compute)), params.lora, method)
    model.train()
    collate = ResponseCollator(tokenizer)
    step_s = []
    start = time.perf_counter()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=train_params.learning_rate, weight_decay=train_params.weight_decay, fused=True)
    for chunk in batches(order):
        step_start = time.perf_counter()
        batch = collate(chunk)
        labels = batch.pop("labels")
        with torch.autocast(device().type, dtype=compute, enabled=compute != torch.float32):
            outputs = model(**batch)
        loss = response_loss(outputs, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - step_start)
    wall = time.perf_counter() - start
    return {"tokens_per_s": round(tokens / wall, 1), "wall_s": round(wall, 1), "steps": len(step_s),
            "first_step_s": round(step_s[0], 2), "median_step_s": round(sorted(step_s)[len(step_s) // 2], 2)}  # fmt: skip


if args.rss_only:  # child of --memory: one side only, then the process's peak RSS
    start_rss = peak_rss_mb()
    {"stage": run_stage, "fp32": lambda: run_stage("float32")}.get(args.runs, lambda: run_bare(order))()
    print(json.dumps({"before_mb": round(start_rss), "peak_mb": round(peak_rss_mb())}))
    sys.exit()

padded = [len(chunk) * max(len(f["input_ids"]) for f in chunk) for chunk in batches(order)]
kept = [len(ResponseCollator(tokenizer)(chunk)["logits_to_keep"]) for chunk in batches(order)]
print(f"{len(features)} examples, batch {batch_size}, {len(padded)} steps, {tokens:.0f} real tokens, "
      f"padding {1 - tokens / sum(padded):.1%} of {sum(padded)} batch tokens, "
      f"logits kept for {sum(kept)} of {sum(p // batch_size for p in padded)} positions, torch threads {torch.get_num_threads()}")  # fmt: skip

results = {"bare": [], "stage": [], "fp32": []}
for side in args.runs.split(","):
    if side == "bare":
        result = run_bare(stage_orders[-1] if stage_orders else order)
    else:
        result = run_stage("float32" if side == "fp32" else params.model.dtype)
        print(f"  (stage batches = reproduced order: {stage_orders[-1] == order})")
    results[side].append(result["tokens_per_s"])
    print(f"{side}: {result}")


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


if results["stage"] and results["fp32"]:
    ratio = mean(results["stage"]) / mean(results["fp32"])
    print(f"stage ({dtype_name(compute)}) {mean(results['stage']):.1f} tokens/s, fp32 stage {mean(results['fp32']):.1f} tokens/s "
          f"(means over runs): ratio {ratio:.2f}; target >= {TARGET_FP32}: {'met' if ratio >= TARGET_FP32 else 'NOT met'}")  # fmt: skip
if results["bare"] and results["stage"]:
    stage, bare = mean(results["stage"]), mean(results["bare"])
    ratio = stage / max(results["bare"])  # against the fastest bare run: the strict reading of the target
    print(f"stage {stage:.1f} tokens/s, bare loop {bare:.1f} tokens/s (means over runs); ratio {stage / bare:.3f}, "
          f"{ratio:.3f} against the fastest bare run; target >= {TARGET:.2f}: {'met' if ratio >= TARGET else 'NOT met'}")  # fmt: skip
print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes' load skews both sides)")

if args.memory:
    for side in ("bare", "stage", "fp32"):
        child = [sys.executable, __file__, "--rss-only", "--runs", side, "--examples", str(args.examples),
                 "--data", args.data, "--model", args.model]  # fmt: skip
        out = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(f"peak RSS, {side} alone in its own process: {json.loads(out)}")
