"""Decoding that runs candidates, against greedy: time per question and EX on the same Spider dev questions,
same model, one process, one run.

Target (issue 30): execution-guided selection and self-consistency at most 3x greedy's time per question,
their candidates drawn by our engine (the greedy answer then samples for execution_guided; samples for
self_consistency), sharing each question's prefill. Usage:
make bench-decoding [ARGS="--model models/published/<name> --questions 200"]

- prompts: Spider dev prepared by the project's own code with the model's recorded prompt settings and
  length budget (its sqlora_model.json), every --stride-th of the questions whose database exists;
- each decoding goes through the predict stage's own path (sqlora.infer.predict.predict_records: the
  plan, the engine, the candidates run read-only in the sandbox), timed after a warm-up;
- EX: the evaluator's (sqlora.evaluate.execution.evaluate) on those questions.
Prints one line per decoding: seconds per question, the ratio to greedy, EX, and the engine.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from sqlora.config import DataParams, PredictParams
from sqlora.data.prepare import prepare_split
from sqlora.data.schema import database_path
from sqlora.evaluate.execution import Gold, evaluate
from sqlora.infer.assistant import resolve_base, trained_prompt
from sqlora.infer.loading import load_for_inference
from sqlora.infer.plan import plan_decoding
from sqlora.infer.predict import PartialPredictions, predict_records
from sqlora.model.loader import machine

TARGET = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spider", default="../shared/datasets/spider")
    parser.add_argument("--model", default="models/finetuned", help="a train-stage folder (its base is found as ask finds it)")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--stride", type=int, default=9, help="every N-th dev question (all databases, all hardness levels)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-samples", type=int, default=PredictParams.num_samples)
    parser.add_argument("--decodings", default="greedy,execution_guided,self_consistency")
    args = parser.parse_args()

    info = json.loads((Path(args.model) / "sqlora_model.json").read_text())
    base = resolve_base(args.model)
    model, tokenizer = load_for_inference(args.model, base, dtype=args.dtype)
    _, fitted, _ = prepare_split(
        "dev", DataParams(dataset="spider", source=args.spider), trained_prompt(args.model), tokenizer=tokenizer,
        max_length=info.get("max_length", 512), reserve=PredictParams.max_new_tokens,
    )  # fmt: skip
    database_dir = Path(args.spider) / "database"
    records = [r for r in fitted.records if database_path(database_dir, r.db_id).is_file()][:: args.stride][: args.questions]
    db_files = [database_path(database_dir, r.db_id) for r in records]
    print(
        f"{len(records)} Spider dev questions on {len({r.db_id for r in records})} databases, model {args.model} "
        f"({info.get('model')}), {machine()}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}"
    )

    def run(decoding: str, records) -> tuple[float, list[str], str]:
        plan = plan_decoding(PredictParams(decoding=decoding, num_samples=args.num_samples))
        with tempfile.TemporaryDirectory() as folder:
            partial = PartialPredictions(Path(folder), decoding)
            start = time.perf_counter()
            result = predict_records(
                model, tokenizer, records, plan, partial, seed=42, chat_template=False,
                db_files=db_files[: len(records)] if plan.runs_candidates else None,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            rows = partial.rows(len(records))
        return seconds, [r["sql"] for r in rows], result.engine.name if result.engine else "-"

    greedy_seconds = None
    worst = 0.0
    for decoding in args.decodings.split(","):
        run(decoding, records[:2])  # warm-up
        seconds, sqls, engine = run(decoding, records)
        report = evaluate([Gold(r.output, r.db_id, f"dev #{i}") for i, r in enumerate(records)], sqls, database_dir, workers=2)
        per_question = seconds / len(records)
        greedy_seconds = greedy_seconds or per_question
        ratio = per_question / greedy_seconds
        if decoding != "greedy":
            worst = max(worst, ratio)
        print(
            f"{decoding:>17}: {per_question:.3f} s/question, {ratio:.2f}x greedy, "
            f"EX {100 * report.summary['all']['exec']:.1f} ({engine} engine)"
        )
    print(f"worst ratio {worst:.2f}x greedy (target <= {TARGET:g}x): {'met' if worst <= TARGET else 'not met'}")


if __name__ == "__main__":
    main()
