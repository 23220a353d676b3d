"""Generate SQL for every dev question: predictions/dev.sql (one per line) and predictions/dev.jsonl.

Finished batches are kept in predictions/partial/ (not a DVC output; see sqlora.infer.predict): a run
that was killed skips the questions already done, and the outputs are written only when every
question is, atomically. Runs as it is under `accelerate launch` / torchrun (predict.launch): each
process predicts its share, the main one merges them in input order. self_consistency and
execution_guided run the candidates on each question's database (data/prepared/meta.json's
database_dir); predict.constrained checks identifiers against meta.json's tables_json.
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from sqlora.config import load_params
from sqlora.data.records import load_records, read_meta
from sqlora.errors import SqloraError, exit_on_error
from sqlora.infer.loading import load_for_inference
from sqlora.infer.plan import plan_decoding
from sqlora.infer.predict import (
    PartialPredictions,
    candidate_databases,
    describe_prediction,
    predict_records,
    prediction_metrics,
    schema_constraints,
)
from sqlora.io import folder_stamp, run_fingerprint, write_json, write_jsonl, write_text
from sqlora.model.loader import device, dtype_name, resolve_dtype

OUT = Path("predictions")
METRICS = Path("metrics/predict.json")  # time per question, statuses, constraint releases
PARTIAL = OUT / "partial"
BASE = Path("models/base")  # where adapters find their base model


@exit_on_error
def main() -> None:
    from accelerate import PartialState

    params = load_params()
    plan = plan_decoding(params.predict)
    state = PartialState(cpu=device().type == "cpu")  # joins the process group under a launcher
    records = load_records("data/prepared/dev.jsonl")
    meta = read_meta("data/prepared/meta.json")
    db_files = candidate_databases(records, meta["database_dir"], plan, params.eval.skip_missing_databases, state.is_main_process)
    constraints = schema_constraints(records, meta["tables_json"]) if plan.constrained else None
    model_dir = Path(params.predict.model)
    if not model_dir.is_dir():
        raise SqloraError(f"params.yaml: 'predict.model' is {params.predict.model!r}, which is not a folder")
    model, tokenizer = load_for_inference(model_dir, BASE, dtype=params.model.dtype)  # first: it checks the model folders
    fingerprint = run_fingerprint(
        model=folder_stamp(model_dir),
        base=folder_stamp(BASE) if BASE.is_dir() else None,
        predict={k: v for k, v in asdict(params.predict).items() if k != "launch"},
        seed=params.seed,
        dtype=dtype_name(resolve_dtype(params.model.dtype)),
        chat_template=params.prompt.chat_template,
        prompts=hashlib.sha256(json.dumps([r.prompt for r in records]).encode()).hexdigest(),
    )
    partial = PartialPredictions.joined(PARTIAL, fingerprint, state, len(records))
    run = predict_records(
        model, tokenizer, records, plan, partial, seed=params.seed, chat_template=params.prompt.chat_template,
        db_files=db_files, constraints=constraints, rank=state.process_index, world=state.num_processes,
    )  # fmt: skip
    state.wait_for_everyone()  # every process's share is in its partial file
    if not state.is_main_process:
        return
    rows = partial.rows(len(records))
    write_jsonl(OUT / "dev.jsonl", rows)
    write_text(OUT / "dev.sql", "".join(r["sql"] + "\n" for r in rows))
    partial.finish()
    metrics = prediction_metrics(rows, plan, run, dtype_name(resolve_dtype(params.model.dtype)), state.num_processes)
    write_json(METRICS, metrics)
    print(describe_prediction(metrics, plan, run))


if __name__ == "__main__":
    main()
