"""Generate SQL for every dev question: predictions/dev.sql (one per line) and predictions/dev.jsonl.

Each finished batch is appended to predictions/partial/dev.jsonl (a persisted DVC output that DVC
keeps when the stage starts again), under a fingerprint of the model folders, the predict
parameters and the prompts: a run that was killed skips the questions already done, and the
outputs are written only when every question is, atomically. self_consistency runs each batch's
candidates on the question's database (data/prepared/meta.json's database_dir) and keeps the
answer most of them agree on.
"""

import hashlib
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from sqlora.config import load_params
from sqlora.datasets import database_path, load_records
from sqlora.errors import SqloraError, exit_on_error
from sqlora.generation import Generation, iter_generate, load_for_inference
from sqlora.io import folder_stamp, run_fingerprint, write_jsonl, write_text

OUT = Path("predictions")
PARTIAL = OUT / "partial"
BASE = Path("models/base")  # where adapters find their base model


def to_json(index: int, db_id: str, generation: Generation) -> dict:
    row = {"index": index, "db_id": db_id, **asdict(generation)}
    if not generation.candidates:
        del row["candidates"]
    return row


def voted_row(index: int, db_id: str, generation: Generation, vote, vote_seconds: float) -> dict:
    """The chosen candidate's answer, then every candidate with its result's hash (None: it did not run)."""
    chosen = generation.candidates[vote.chosen]
    row = to_json(index, db_id, replace(chosen, candidates=()))
    row.update(chosen=vote.chosen, votes=vote.votes, vote_seconds=vote_seconds)
    row["candidates"] = [
        {"sql": c.sql, "status": c.status, "result": key, "raw": c.raw, "new_tokens": c.new_tokens, "stop": c.stop}
        for c, key in zip(generation.candidates, vote.keys)
    ]
    return row


class Partial:
    """Results of finished batches, kept across a kill; thrown away when the fingerprint differs."""

    def __init__(self, folder: Path, fingerprint: str):
        self.path, stamp = folder / "dev.jsonl", folder / "fingerprint.txt"
        folder.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file() or stamp.read_text().strip() != fingerprint:
            self.path.unlink(missing_ok=True)
            write_text(stamp, fingerprint + "\n")
        self.done: dict[int, dict] = {}
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            for line in lines:
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


@exit_on_error
def main() -> None:
    params = load_params()
    predict = params.predict
    records = load_records("data/prepared/dev.jsonl")
    voting = predict.decoding == "self_consistency"
    if voting:
        meta = json.loads(Path("data/prepared/meta.json").read_text())
        db_files = [database_path(meta["database_dir"], r.db_id) for r in records]
        missing = sorted({str(p) for p in db_files if not p.is_file()})
        if missing and not params.eval.skip_missing_databases:
            raise SqloraError(
                f"predict.decoding self_consistency runs the candidates, but {missing[0]} does not exist "
                "(eval.skip_missing_databases: true keeps the first candidate of such questions, which evaluation leaves out)"
            )
        if missing:
            print(f"predict: {len(missing)} database(s) missing ({missing[0]}, ...): the first candidate of their questions is kept")
    model_dir = Path(predict.model)
    if not model_dir.is_dir():
        raise SqloraError(f"params.yaml: 'predict.model' is {predict.model!r}, which is not a folder")
    model, tokenizer = load_for_inference(model_dir, BASE)  # first: it checks the model folders
    prompts = [r.prompt for r in records]
    fingerprint = run_fingerprint(
        model=folder_stamp(model_dir), base=folder_stamp(BASE) if BASE.is_dir() else None,
        predict=asdict(predict), seed=params.seed, chat_template=params.prompt.chat_template,
        prompts=hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
    )
    partial = Partial(PARTIAL, fingerprint)
    if partial.done:
        print(f"predict: resuming, {len(partial.done)} of {len(records)} questions already done")
    start = time.perf_counter()
    for batch in iter_generate(
        model, tokenizer, prompts, predict, seed=params.seed, chat_template=params.prompt.chat_template, skip=partial.done
    ):
        indexes = sorted(batch)
        if voting:
            from sqlora.voting import vote

            began = time.perf_counter()
            candidates = [[c.sql for c in batch[i].candidates] for i in indexes]
            votes = vote(candidates, [db_files[i] for i in indexes], predict.timeout_s)
            vote_seconds = round(time.perf_counter() - began, 4)
            partial.append([voted_row(i, records[i].db_id, batch[i], v, vote_seconds) for i, v in zip(indexes, votes)])
        else:
            partial.append([to_json(i, records[i].db_id, batch[i]) for i in indexes])
    seconds = time.perf_counter() - start

    rows = [partial.done[i] for i in range(len(records))]
    write_jsonl(OUT / "dev.jsonl", rows)
    write_text(OUT / "dev.sql", "".join(r["sql"] + "\n" for r in rows))
    partial.finish()
    statuses = {s: sum(r["status"] == s for r in rows) for s in ("ok", "empty", "unparseable")}
    print(
        f"predict ({predict.decoding}): {len(records)} questions in {seconds:.1f} s "
        f"({seconds / max(len(records), 1):.2f} s/question); " + ", ".join(f"{k} {v}" for k, v in statuses.items())
    )


if __name__ == "__main__":
    main()
