"""BIRD's valid efficiency score (VES): each correct prediction weighed by sqrt(gold time / predicted time),
the times measured over repeated runs in the sandbox."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlora.data.schema import database_path
from sqlora.sql.pool import run_tasks
from sqlora.sql.sandbox import run_query

if TYPE_CHECKING:  # execution imports this module: the report type only, for the annotation
    from sqlora.evaluate.execution import EvalReport


def score_ves(report: EvalReport, db_dir: Path, iterations: int, timeout_s: float, workers: int) -> None:
    """BIRD's VES: each correct prediction earns sqrt(mean gold/pred time ratio), wrong ones 0."""
    correct = [e for e in report.examples if e.exec]
    tasks = [(database_path(db_dir, e.db_id), e.pred, e.gold, iterations, timeout_s) for e in correct]
    ratios = run_tasks(_time_ratio, tasks, workers=workers, crashed=0.0)
    for example in report.examples:
        example.ves = 0.0
    for example, ratio in zip(correct, ratios):
        example.ves = math.sqrt(ratio)


def _time_ratio(db_file: Path, pred_sql: str, gold_sql: str, iterations: int, timeout_s: float) -> float:
    """Mean of gold time / predicted time over ``iterations`` runs, outliers beyond 3 sigma dropped (as BIRD)."""
    ratios = []
    for _ in range(iterations):
        pred_time = _timed(db_file, pred_sql, timeout_s)
        gold_time = _timed(db_file, gold_sql, timeout_s)
        if pred_time is None or gold_time is None:
            return 0.0
        ratios.append(gold_time / pred_time)
    mean = statistics.fmean(ratios)
    spread = statistics.pstdev(ratios)
    kept = [r for r in ratios if mean - 3 * spread < r < mean + 3 * spread] or ratios
    return statistics.fmean(kept)


def _timed(db_file: Path, sql: str, timeout_s: float) -> float | None:
    start = time.perf_counter()
    result = run_query(db_file, sql, timeout_s=timeout_s)
    elapsed = time.perf_counter() - start
    return max(elapsed, 1e-9) if result.ok else None
