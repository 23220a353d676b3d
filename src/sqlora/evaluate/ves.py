"""BIRD's valid efficiency score (VES): each correct prediction weighed by sqrt(gold time / predicted time),
the times measured over repeated runs in the sandbox."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from sqlora.data.schema import database_path
from sqlora.sql.pool import run_tasks
from sqlora.sql.sandbox import run_query


def ves_scores(db_dir: Path, correct: list[tuple[str, str, str]], iterations: int, timeout_s: float, workers: int) -> list[float]:
    """BIRD's VES of each correct prediction, given as (db_id, predicted SQL, gold SQL): sqrt of the mean
    gold/predicted time ratio (a wrong prediction scores 0, which is the caller's to give)."""
    tasks = [(database_path(db_dir, db_id), pred, gold, iterations, timeout_s) for db_id, pred, gold in correct]
    return [math.sqrt(ratio) for ratio in run_tasks(_time_ratio, tasks, workers=workers, crashed=0.0)]


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
