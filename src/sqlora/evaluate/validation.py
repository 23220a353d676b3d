"""Validation EX while training: the model as it stands generates greedy SQL for the validation split
(whole train databases held out by ``data.validation``), scored by execution as the evaluate stage scores
dev. The train stage calls a :class:`Validator` at the end of every epoch, so epochs, learning rates or
checkpoints are chosen on validation and Spider dev stays a test set, scored once per configuration."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlora.data.records import Record
from sqlora.evaluate.execution import Gold, default_gold_cache, evaluate
from sqlora.infer.engine import generate


@dataclass(frozen=True)
class Validator:
    records: list[Record]
    database_dir: Path  # the train split's databases (<db_id>/<db_id>.sqlite)
    where: str  # the records' file, for error messages
    bird: bool = False  # BIRD's execution rules and difficulty labels
    batch_size: int = 64
    max_new_tokens: int = 128
    chat_template: bool = False
    timeout_s: float = 30.0
    workers: int = 2

    def __call__(self, model, tokenizer) -> dict:
        """{"ex", "questions" (scored), "seconds"} for ``model`` in its current state (greedy, no dropout)."""
        start = time.perf_counter()
        generations = generate(
            model,
            tokenizer,
            [r.prompt for r in self.records],
            self.batch_size,
            self.max_new_tokens,
            progress=False,
            chat_template=self.chat_template,
        )
        report = evaluate(
            [Gold(r.output, r.db_id, f"{self.where}:{line}") for line, r in enumerate(self.records, 1)],
            [g.sql for g in generations],
            self.database_dir,
            etype="exec",
            difficulties=[r.difficulty or "" for r in self.records] if self.bird else None,
            timeout_s=self.timeout_s,
            workers=self.workers,
            skip_missing_databases=True,  # scored on the questions that can be: the count says how many
            skip_bad_gold=True,
            gold_cache=default_gold_cache(),
        )
        summary = report.summary["all"]
        return {"ex": round(summary["exec"], 4), "questions": summary["count"], "seconds": round(time.perf_counter() - start, 1)}
