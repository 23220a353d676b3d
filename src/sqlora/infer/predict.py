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

from sqlora.config import PredictParams
from sqlora.data.prompt import Record
from sqlora.errors import SqloraError
from sqlora.infer.base import Generation
from sqlora.infer.engine import EngineChoice, iter_generate
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
        self.reload()

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


RUNS_CANDIDATES = ("self_consistency", "execution_guided")  # decodings that run their candidates to choose


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


def predict_records(
    model,
    tokenizer,
    records: list[Record],
    params: PredictParams,
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
    voting = params.decoding in RUNS_CANDIDATES
    if voting and db_files is None:
        raise ValueError(f"{params.decoding} needs each record's database file")
    chosen: list[EngineChoice] = []
    start = time.perf_counter()
    for batch in iter_generate(
        model, tokenizer, [r.prompt for r in records], params, seed=seed, chat_template=chat_template,
        skip=partial.done, rank=rank, world=world, on_engine=chosen.append, progress=rank == 0,
        constraints=constraints,
    ):  # fmt: skip
        indexes = sorted(batch)
        if voting:
            from sqlora.infer.voting import choose, first_running, run_candidates

            began = time.perf_counter()
            candidates = [[c.sql for c in batch[i].candidates] for i in indexes]
            keys = run_candidates(candidates, [db_files[i] for i in indexes], params.timeout_s)
            if params.decoding == "self_consistency":
                votes = [choose(k) for k in keys]
            else:
                released = [[n for n, c in enumerate(batch[i].candidates) if c.constraint == "released"] for i in indexes]
                votes = [first_running(k, params.require_rows, r) for k, r in zip(keys, released)]
            vote_seconds = round(time.perf_counter() - began, 4)
            partial.append([voted_row(i, records[i].db_id, batch[i], v, vote_seconds) for i, v in zip(indexes, votes)])
        else:
            partial.append([prediction_row(i, records[i].db_id, batch[i]) for i in indexes])
    return PredictRun(seconds=time.perf_counter() - start, engine=chosen[0] if chosen else None)
