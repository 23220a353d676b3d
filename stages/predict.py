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
from sqlora.data.schema import database_path
from sqlora.errors import SqloraError, exit_on_error
from sqlora.infer.loading import load_for_inference
from sqlora.infer.predict import RUNS_CANDIDATES, PartialPredictions, predict_records, schema_constraints
from sqlora.infer.sql_text import STATUSES
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
    predict = params.predict
    state = PartialState(cpu=device().type == "cpu")  # joins the process group under a launcher
    main_process = state.is_main_process
    records = load_records("data/prepared/dev.jsonl")
    meta = read_meta("data/prepared/meta.json")
    voting = predict.decoding in RUNS_CANDIDATES
    if voting:
        db_files = [database_path(meta["database_dir"], r.db_id) for r in records]
        missing = sorted({str(p) for p in db_files if not p.is_file()})
        if missing and not params.eval.skip_missing_databases:
            raise SqloraError(
                f"predict.decoding {predict.decoding} runs the candidates, but {missing[0]} does not exist "
                "(eval.skip_missing_databases: true keeps the first candidate of such questions, which evaluation leaves out)"
            )
        if missing and main_process:
            print(f"predict: {len(missing)} database(s) missing ({missing[0]}, ...): the first candidate of their questions is kept")
    constraints = schema_constraints(records, meta["tables_json"]) if predict.constrained else None
    model_dir = Path(predict.model)
    if not model_dir.is_dir():
        raise SqloraError(f"params.yaml: 'predict.model' is {predict.model!r}, which is not a folder")
    model, tokenizer = load_for_inference(model_dir, BASE, dtype=params.model.dtype)  # first: it checks the model folders
    fingerprint = run_fingerprint(
        model=folder_stamp(model_dir),
        base=folder_stamp(BASE) if BASE.is_dir() else None,
        predict={k: v for k, v in asdict(predict).items() if k != "launch"},
        seed=params.seed,
        dtype=dtype_name(resolve_dtype(params.model.dtype)),
        chat_template=params.prompt.chat_template,
        prompts=hashlib.sha256(json.dumps([r.prompt for r in records]).encode()).hexdigest(),
    )
    if main_process:
        partial = PartialPredictions(PARTIAL, fingerprint)
        resumed = len(partial.done)
        if partial.done:
            print(f"predict: resuming, {len(partial.done)} of {len(records)} questions already done")
    state.wait_for_everyone()  # the main process has thrown away another run's partial files
    if not main_process:
        partial = PartialPredictions(PARTIAL, fingerprint, rank=state.process_index, reset=False)
    run = predict_records(
        model,
        tokenizer,
        records,
        predict,
        partial,
        seed=params.seed,
        chat_template=params.prompt.chat_template,
        db_files=db_files if voting else None,
        constraints=constraints,
        rank=state.process_index,
        world=state.num_processes,
    )
    state.wait_for_everyone()  # every process's share is in its partial file
    if not main_process:
        return
    rows = partial.rows(len(records))
    write_jsonl(OUT / "dev.jsonl", rows)
    write_text(OUT / "dev.sql", "".join(r["sql"] + "\n" for r in rows))
    partial.finish()
    statuses = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    engine = f"{run.engine.name} engine ({run.engine.reason})" if run.engine else "nothing left to generate"
    processes = f", {state.num_processes} processes" if state.num_processes > 1 else ""
    metrics = {
        "decoding": predict.decoding, "dtype": dtype_name(resolve_dtype(params.model.dtype)),
        "engine": run.engine.name if run.engine else None, "processes": state.num_processes,
        "questions": len(records), "resumed_questions": resumed, "seconds": round(run.seconds, 1),
        "seconds_per_question": round(run.seconds / max(len(records) - resumed, 1), 3), "status": statuses,
    }  # fmt: skip
    if predict.constrained:
        # Answers (and, with candidates, all candidates) for which no token was admissible at some step.
        metrics["constraint_released"] = sum(r.get("constraint") == "released" for r in rows)
        metrics["candidates_released"] = sum(c.get("constraint") == "released" for r in rows for c in r.get("candidates", ()))
    write_json(METRICS, metrics)
    released = f"; constraint released for {metrics['constraint_released']}" if predict.constrained else ""
    print(
        f"predict ({predict.decoding}, {metrics['dtype']}, {engine}{processes}): "
        f"{len(records)} questions in {run.seconds:.1f} s ({metrics['seconds_per_question']:.2f} s/question); "
        + ", ".join(f"{k} {v}" for k, v in statuses.items())
        + released
    )


if __name__ == "__main__":
    main()
