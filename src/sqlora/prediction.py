"""Predictions for a whole dev set, resumable: what the predict stage runs.

Each finished batch is appended to a partial file under a fingerprint of everything the
predictions depend on (model folders, predict parameters, prompts): a run that was killed skips
the questions already done; other inputs throw the partial file away. self_consistency runs each
batch's candidates on the question's database and keeps the answer most of them agree on.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from sqlora.config import PredictParams
from sqlora.generation import Generation, iter_generate
from sqlora.io import write_text
from sqlora.prompt import Record


class PartialPredictions:
    """Rows of finished batches, kept across a kill in ``folder``; thrown away when the fingerprint differs."""

    def __init__(self, folder: Path, fingerprint: str):
        self.path, stamp = folder / "dev.jsonl", folder / "fingerprint.txt"
        folder.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file() or stamp.read_text().strip() != fingerprint:
            self.path.unlink(missing_ok=True)
            write_text(stamp, fingerprint + "\n")
        self.done: dict[int, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
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

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)  # the fingerprint stays: nothing left to resume


def prediction_row(index: int, db_id: str, generation: Generation) -> dict:
    """One line of predictions/dev.jsonl."""
    row = {"index": index, "db_id": db_id, **asdict(generation)}
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
        for c, key in zip(generation.candidates, vote.keys)
    ]
    return row


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
) -> tuple[list[dict], float]:
    """A row per record (in order) and the seconds spent generating; ``partial``'s rows are reused.
    ``db_files`` (one per record) are where self_consistency runs the candidates."""
    voting = params.decoding == "self_consistency"
    if voting and db_files is None:
        raise ValueError("self_consistency needs each record's database file")
    start = time.perf_counter()
    for batch in iter_generate(
        model, tokenizer, [r.prompt for r in records], params, seed=seed, chat_template=chat_template, skip=partial.done
    ):
        indexes = sorted(batch)
        if voting:
            from sqlora.voting import vote

            began = time.perf_counter()
            candidates = [[c.sql for c in batch[i].candidates] for i in indexes]
            votes = vote(candidates, [db_files[i] for i in indexes], params.timeout_s)
            vote_seconds = round(time.perf_counter() - began, 4)
            partial.append([voted_row(i, records[i].db_id, batch[i], v, vote_seconds) for i, v in zip(indexes, votes)])
        else:
            partial.append([prediction_row(i, records[i].db_id, batch[i]) for i in indexes])
    return [partial.done[i] for i in range(len(records))], time.perf_counter() - start
