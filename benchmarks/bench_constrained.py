"""Schema-constrained decoding's cost: per-question time constrained against unconstrained, same model,
same Spider dev questions, same engine, one run.

Target (issue 19): constrained at most 1.3x the unconstrained time per question. Usage:
make bench-constrained [ARGS="--questions 128 --engine transformers"]

- prompts: Spider dev prepared by the project's own code (natural schema, 512-token budget with 128
  reserved for generation), the first --questions records; each question's schema from tables.json;
- model: the fine-tuned folder as the predict stage loads it, in model.dtype;
- greedy (and --beam: beam search with --num-beams, which runs on transformers' engine) through the
  predict stage's generate(), once free and once with predict.constrained; each timed after a warm-up.
Reported with the times: answers that changed, and how many of each side's SQL names only tables and
columns the schema has (sqlora.infer.constrained.sql_resolves).
"""

import argparse
import os
import time

import torch

from sqlora.config import DataParams, PredictParams, PromptParams, load_params
from sqlora.data.prepare import prepare_split
from sqlora.infer.constrained import sql_resolves
from sqlora.infer.engine import generate
from sqlora.infer.loading import load_for_inference
from sqlora.infer.predict import schema_constraints

TARGET = 1.3

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--spider", default="../shared/datasets/spider")
parser.add_argument("--questions", type=int, default=128, help="the first N Spider dev questions")
parser.add_argument("--model", default="models/finetuned", help="a train-stage folder, an export or any checkpoint folder")
parser.add_argument("--base", default="models/base")
parser.add_argument("--dtype", default=load_params().model.dtype, help="precision (default: params.yaml model.dtype)")
parser.add_argument("--engine", choices=["auto", "sqlora", "transformers"], default="auto")
parser.add_argument("--batch-size", type=int, default=PredictParams.batch_size)
parser.add_argument("--beam", action="store_true", help="also time beam search (transformers' engine)")
parser.add_argument("--num-beams", type=int, default=PredictParams.num_beams)
parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
args = parser.parse_args()

if args.threads:
    torch.set_num_threads(args.threads)
model, tokenizer = load_for_inference(args.model, args.base, dtype=args.dtype)
split, fitted, _ = prepare_split(
    "dev", DataParams(dataset="spider", source=args.spider), PromptParams(), tokenizer=tokenizer,
    max_length=512, reserve=128, limit=args.questions,
)  # fmt: skip
records = fitted.records
prompts = [r.prompt for r in records]
constraints = schema_constraints(records, split.tables_json)
print(
    f"{len(prompts)} Spider dev questions on {len({r.db_id for r in records})} databases, model {args.model} ({args.dtype}), "
    f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
)

modes = [("greedy", {"decoding": "greedy"}, args.batch_size)]
if args.beam:  # beams are batched as questions x beams
    modes.append((f"beam {args.num_beams}", {"decoding": "beam", "num_beams": args.num_beams}, max(1, args.batch_size // args.num_beams)))
worst = 0.0
for name, decoding, batch_size in modes:
    sqls, seconds = {}, {}
    for constrained in (False, True):

        def run(batch: list[str], cons: list | None, batch_size=batch_size, constrained=constrained, decoding=decoding) -> list[str]:
            return [g.sql for g in generate(
                model, tokenizer, batch, batch_size, 128, progress=False, engine=args.engine,
                constraints=cons, constrained=constrained, **decoding,
            )]  # fmt: skip

        run(prompts[:2], constraints[:2] if constrained else None)  # warm-up
        start = time.perf_counter()
        sqls[constrained] = run(prompts, constraints if constrained else None)
        seconds[constrained] = (time.perf_counter() - start) / len(prompts)
        label = "constrained" if constrained else "free"
        resolving = sum(sql_resolves(names, sql) for sql, names in zip(sqls[constrained], constraints))
        print(
            f"{name}, {label}: {seconds[constrained]:.3f} s/question; SQL naming only the schema's names: {resolving}/{len(prompts)}",
            flush=True,
        )
    ratio = seconds[True] / seconds[False]
    worst = max(worst, ratio)
    changed = sum(a != b for a, b in zip(sqls[False], sqls[True]))
    print(
        f"{name}: constrained / free = {ratio:.2f}x (target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'}); {changed} answers changed"
    )
print(f"load average {os.getloadavg()[0]:.2f} (other processes' load skews every ratio)")
