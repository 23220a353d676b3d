"""The train stage with shared-prefix rows (train.shared_prefix K) against the same stage with separate rows
(K=1): same Spider questions, model, method, precision and machine, one run.

Target (issue 29): at least 3.5x the questions/s of separate rows on Spider, with SmolLM2-135M and with
Gemma 3 270M at the default K. Usage:
make bench-train [SPIDER=path/to/spider] [ARGS="--model gemma3-270m --questions 128 --runs 1,k"]
make bench-train ARGS="--records data/prepared/train.jsonl --questions 0"   # make repro's own train stage

- questions: the first --questions of Spider train in file order (the questions of its first few
  databases), prepared by the project's own code with params.yaml's prompt settings and train.max_length
  (or --max-length: schemas over the budget are shrunk per question, and shrunk variants of a schema
  share less);
- model: --model, a checkpoint folder (default models/base, the model stage's) or an offline alias / hub
  id, materialised once into .bench/models/<name>; method, LoRA, precision (model.dtype) and the other
  train settings from params.yaml, checkpoints off;
- each side is the stage's own train() in this process, timed by its own metrics/train.json: wall time of
  trainer.train() (every step, the first included; model loading and saving excluded), questions/s, the
  tokens the questions hold as separate rows, and the tokens the forward passes computed (padding
  included). The sides run in --runs order; with repeats the means are compared.
The last line is the speedup: questions/s with K over questions/s with K=1.
"""

import argparse
import contextlib
import io
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from sqlora.config import DataParams, load_params
from sqlora.data.prepare import prepare_split
from sqlora.data.records import load_records
from sqlora.model.loader import load_tokenizer, machine, materialize
from sqlora.train import trainer as training

TARGET = 3.5

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--spider", default="../shared/datasets/spider")
parser.add_argument(
    "--records",
    default="",
    help="a prepared records file instead (e.g. data/prepared/train.jsonl: the "
    "train stage's own questions), its first --questions (0: all)",
)
parser.add_argument("--model", default="models/base", help="checkpoint folder, offline alias or hub id")
parser.add_argument("--questions", type=int, default=128, help="the first N questions of Spider train")
parser.add_argument("--k", type=int, default=0, help="questions per shared-prefix row (default: params.yaml's train.shared_prefix)")
parser.add_argument("--runs", default="1,k", help="comma-separated order of the timed runs: 1 (separate rows), k (shared prefixes)")
parser.add_argument(
    "--max-length",
    type=int,
    default=0,
    help="the length budget (default: params.yaml's train.max_length); "
    "Spider schemas over it are shrunk per question, which leaves questions fewer tokens to share",
)
args = parser.parse_args()

params = load_params()
k = args.k or params.train.shared_prefix
max_length = args.max_length or params.train.max_length
model = Path(args.model)
if not model.is_dir():  # an alias or hub id: materialised once
    model = Path(".bench/models") / args.model.replace("/", "--")
    if not (model / "config.json").is_file():
        materialize(args.model, model)
tokenizer = load_tokenizer(model)
if args.records:
    records = load_records(args.records)[: args.questions or None]
    source = args.records
else:
    _, fitted, _ = prepare_split(
        "train", DataParams(dataset="spider", source=args.spider), params.prompt, tokenizer=tokenizer,
        max_length=max_length, limit=args.questions,
    )  # fmt: skip
    records = fitted.records
    source = f"Spider train, max_length {max_length} ({fitted.shrunk} schemas shrunk to fit)"
databases = list(dict.fromkeys(r.db_id for r in records))
print(f"{len(records)} questions of {source} on {len(databases)} databases ({', '.join(databases[:6])}{', ...' if len(databases) > 6 else ''}); "
      f"{model}, method {params.method}, model.dtype {params.model.dtype}, batch {params.train.batch_size}, K={k}")  # fmt: skip
print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} before")


def run(per_row: int) -> dict:
    settings = replace(params.train, shared_prefix=per_row, save_steps=0, epochs=1, max_length=max_length)
    with tempfile.TemporaryDirectory() as tmp:
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            metrics = training.train(
                method=params.method, base_dir=model, records=records, out_dir=f"{tmp}/model", lora=params.lora,
                params=settings, seed=params.seed, metrics_path=f"{tmp}/train.json", live_dir=f"{tmp}/dvclive",
                chat_template=params.prompt.chat_template, dtype=params.model.dtype,
            )  # fmt: skip
    batching = next((line for line in log.getvalue().splitlines() if line.startswith("train: ") and "rows" in line), "")
    print(f"  {batching}")
    return metrics


results: dict[str, list[dict]] = {"1": [], "k": []}
for side in args.runs.split(","):
    metrics = run(1 if side == "1" else k)
    results[side].append(metrics)
    print(f"K={metrics['shared_prefix']}: {metrics['questions_per_s']:.3f} questions/s, {metrics['wall_time_s']} s, "
          f"{metrics['steps']} steps, tokens {metrics['tokens']} as separate rows, {metrics['tokens_computed']} computed "
          f"(padding {metrics['padding_fraction']:.1%}), {metrics['tokens_per_s']} tokens/s, final loss {metrics['final_loss']}, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


print(f"load average {os.getloadavg()[0]:.2f} after (other processes' load skews both sides)")
if results["1"] and results["k"]:
    separate, shared = (mean([m["questions_per_s"] for m in results[side]]) for side in ("1", "k"))
    computed = [mean([m["tokens_computed"] for m in results[side]]) for side in ("1", "k")]
    print(json.dumps({"separate_questions_per_s": separate, "shared_questions_per_s": shared,
                      "tokens_computed_separate": computed[0], "tokens_computed_shared": computed[1]}))  # fmt: skip
    print(f"tokens computed: {computed[0] / computed[1]:.2f}x fewer with K={results['k'][0]['shared_prefix']}")
    print(f"shared-prefix speedup: {shared / separate:.2f}x (target {TARGET}x)")
