"""Predictions for a whole dev set, resumable and shardable: what the predict stage runs.

Each finished batch is appended to a partial file under a fingerprint of everything the
predictions depend on (model folders, predict parameters, precision, prompts): a run that was
killed skips the questions already done; other inputs throw the partial files away. Under
``accelerate launch`` / torchrun every process predicts its share of the batches into its own
partial file, and the main process merges them in input order. self_consistency runs each batch's
candidates on the question's database and keeps the answer most of them agree on.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sqlora.data.records import Record
from sqlora.data.schema import database_path
from sqlora.errors import SqloraError
from sqlora.infer.base import Generation
from sqlora.infer.engine import EngineChoice, iter_generate
from sqlora.infer.plan import DecodingPlan
from sqlora.infer.sql_text import STATUSES
from sqlora.io import write_text


class PartialPredictions:
    """Rows of finished batches, one file per process, kept across a kill in ``folder``.

    The process that ``resets`` (the main one, before the others open theirs) throws every partial
    file away when the fingerprint differs; each process reads them all (so all skip the same
    questions, whatever the number of processes of the killed run) and appends to its own.
    """

    def __init__(self, folder: Path, fingerprint: str, rank: int = 0, reset: bool = True):
        self.folder, self.path = folder, folder / f"dev.{rank}.jsonl"
        stamp = folder / "fingerprint.txt"
        if reset:
            folder.mkdir(parents=True, exist_ok=True)
            if not stamp.is_file() or stamp.read_text().strip() != fingerprint:
                self._remove()
                write_text(stamp, fingerprint + "\n")
        self.done: dict[int, dict] = {}
        self.resumed = 0  # questions an earlier, killed run had done (set by joined)
        self.reload()

    @classmethod
    def joined(cls, folder: Path, fingerprint: str, state, count: int) -> PartialPredictions:
        """Every process's partial predictions under ``state`` (accelerate's PartialState): the main process
        resets another run's first, and says what it resumes; the others open theirs after."""
        partial = None
        if state.is_main_process:
            partial = cls(folder, fingerprint)
            partial.resumed = len(partial.done)
            if partial.done:
                print(f"predict: resuming, {len(partial.done)} of {count} questions already done")
        state.wait_for_everyone()  # the main process has thrown away another run's partial files
        return partial or cls(folder, fingerprint, rank=state.process_index, reset=False)

    def reload(self) -> None:
        """Read every process's rows (the main process does again once all are done)."""
        for path in sorted(self.folder.glob("dev.*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
                if not line.endswith("\n"):
                    break  # the kill came mid-write: that batch runs again
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                self.done[row["index"]] = row

    def append(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.done.update((r["index"], r) for r in rows)

    def rows(self, count: int) -> list[dict]:
        """All ``count`` rows in input order, from every process's file."""
        self.reload()
        missing = [i for i in range(count) if i not in self.done]
        if missing:
            raise SqloraError(f"{self.folder}: {len(missing)} of {count} questions have no prediction (#{missing[0]}, ...)")
        return [self.done[i] for i in range(count)]

    def finish(self) -> None:
        self._remove()  # the fingerprint stays: nothing left to resume

    def _remove(self) -> None:
        for path in self.folder.glob("dev*.jsonl"):  # dev.jsonl: the single file of earlier versions
            path.unlink(missing_ok=True)


def prediction_row(index: int, db_id: str, generation: Generation) -> dict:
    """One line of predictions/dev.jsonl."""
    row = {"index": index, "db_id": db_id, **asdict(generation)}
    del row["tokens"]  # `raw` says it; new_tokens counts them
    if not generation.candidates:
        del row["candidates"]
    return row


def voted_row(index: int, db_id: str, generation: Generation, vote, vote_seconds: float) -> dict:
    """The chosen candidate's answer, then every candidate with its result's hash (None: it did not run)."""
    chosen = generation.candidates[vote.chosen]
    row = prediction_row(index, db_id, replace(chosen, candidates=()))
    row.update(chosen=vote.chosen, votes=vote.votes, vote_seconds=vote_seconds)
    row["candidates"] = [
        {"sql": c.sql, "status": c.status, "result": key, "raw": c.raw, "new_tokens": c.new_tokens, "stop": c.stop}
        | ({"constraint": c.constraint} if c.constraint else {})
        for c, key in zip(generation.candidates, vote.keys)
    ]
    return row


def schema_constraints(records: list[Record], tables_json: str | Path) -> list:
    """Each record's SchemaNames for ``predict.constrained``, from the tables.json its prompt was made from."""
    from sqlora.data.layouts import load_schemas
    from sqlora.infer.constrained import SchemaNames

    schemas = load_schemas(tables_json)
    names: dict[str, SchemaNames] = {}
    for record in records:
        if record.db_id not in schemas:
            raise SqloraError(f"predict.constrained: database {record.db_id!r} is not in {tables_json}")
        if record.db_id not in names:
            names[record.db_id] = SchemaNames.of(schemas[record.db_id])
    return [names[r.db_id] for r in records]


@dataclass(frozen=True)
class PredictRun:
    seconds: float  # this process's generation (and voting) time
    engine: EngineChoice | None  # None: every question was already done
    resumed: int = 0  # questions an earlier, killed run had done


def predict_records(
    model,
    tokenizer,
    records: list[Record],
    plan: DecodingPlan,
    partial: PartialPredictions,
    *,
    seed: int,
    chat_template: bool,
    db_files: list[Path] | None = None,
    constraints: list | None = None,
    rank: int = 0,
    world: int = 1,
) -> PredictRun:
    """Predict this process's share (``rank`` of ``world``) of the records not in ``partial`` yet,
    appending each finished batch to it. ``db_files`` (one per record) are where self_consistency and
    execution_guided run the candidates; ``constraints`` (``predict.constrained``): each record's
    :class:`sqlora.infer.constrained.SchemaNames`."""
    voting = plan.runs_candidates
    if voting and db_files is None:
        raise ValueError(f"{plan.decoding} needs each record's database file")
    chosen: list[EngineChoice] = []
    start = time.perf_counter()
    for batch in iter_generate(
        model,
        tokenizer,
        [r.prompt for r in records],
        plan,
        seed=seed,
        chat_template=chat_template,
        skip=partial.done,
        rank=rank,
        world=world,
        on_engine=chosen.append,
        progress=rank == 0,
        constraints=constraints,
    ):
        indexes = sorted(batch)
        if voting:
            from sqlora.infer.voting import choose, first_running, run_candidates

            began = time.perf_counter()
            candidates = [[c.sql for c in batch[i].candidates] for i in indexes]
            keys = run_candidates(candidates, [db_files[i] for i in indexes], plan.timeout_s)
            if plan.choose == "vote":
                votes = [choose(k) for k in keys]
            else:
                released = [[n for n, c in enumerate(batch[i].candidates) if c.constraint == "released"] for i in indexes]
                votes = [first_running(k, plan.require_rows, r) for k, r in zip(keys, released)]
            vote_seconds = round(time.perf_counter() - began, 4)
            partial.append([voted_row(i, records[i].db_id, batch[i], v, vote_seconds) for i, v in zip(indexes, votes)])
        else:
            partial.append([prediction_row(i, records[i].db_id, batch[i]) for i in indexes])
    return PredictRun(seconds=time.perf_counter() - start, engine=chosen[0] if chosen else None, resumed=partial.resumed)


def candidate_databases(
    records: list[Record], database_dir: str | Path, plan: DecodingPlan, skip_missing: bool, announce: bool
) -> list[Path] | None:
    """Each record's database file, where the plan runs its candidates (None otherwise). A missing one is an
    error unless ``skip_missing`` (eval.skip_missing_databases): its questions keep their first candidate."""
    if not plan.runs_candidates:
        return None
    db_files = [database_path(database_dir, r.db_id) for r in records]
    missing = sorted({str(p) for p in db_files if not p.is_file()})
    if missing and not skip_missing:
        raise SqloraError(
            f"predict.decoding {plan.decoding} runs the candidates, but {missing[0]} does not exist "
            "(eval.skip_missing_databases: true keeps the first candidate of such questions, which evaluation leaves out)"
        )
    if missing and announce:
        print(f"predict: {len(missing)} database(s) missing ({missing[0]}, ...): the first candidate of their questions is kept")
    return db_files


def prediction_metrics(rows: list[dict], plan: DecodingPlan, run: PredictRun, dtype: str, processes: int) -> dict:
    """metrics/predict.json: time per question, statuses and (constrained) constraint releases."""
    done = len(rows) - run.resumed
    metrics = {
        "decoding": plan.decoding,
        "dtype": dtype,
        "engine": run.engine.name if run.engine else None,
        "processes": processes,
        "questions": len(rows),
        "resumed_questions": run.resumed,
        "seconds": round(run.seconds, 1),
        "seconds_per_question": round(run.seconds / max(done, 1), 3),
        "status": {s: sum(r["status"] == s for r in rows) for s in STATUSES},
    }
    if plan.constrained:
        # Answers (and, with candidates, all candidates) for which no token was admissible at some step.
        metrics["constraint_released"] = sum(r.get("constraint") == "released" for r in rows)
        metrics["candidates_released"] = sum(c.get("constraint") == "released" for r in rows for c in r.get("candidates", ()))
    return metrics


def describe_prediction(metrics: dict, plan: DecodingPlan, run: PredictRun) -> str:
    """The predict log's last line."""
    engine = f"{run.engine.name} engine ({run.engine.reason})" if run.engine else "nothing left to generate"
    processes = f", {metrics['processes']} processes" if metrics["processes"] > 1 else ""
    released = f"; constraint released for {metrics['constraint_released']}" if plan.constrained else ""
    return (
        f"predict ({plan.decoding}, {metrics['dtype']}, {engine}{processes}): "
        f"{metrics['questions']} questions in {run.seconds:.1f} s ({metrics['seconds_per_question']:.2f} s/question); "
        + ", ".join(f"{k} {v}" for k, v in metrics["status"].items())
        + released
    )
