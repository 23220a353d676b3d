"""Execution-guided self-consistency: run each sampled candidate, keep the answer most candidates agree on.

Candidates agree when their results match the way EX compares them (``sqlora.evaluation.results_match``
without gold ordering): the same bag of rows up to a permutation of the columns, and any two empty
results alike. Each result is reduced, in the worker that ran it, to a hash of a canonical form, so no
rows travel back and the grouping is a dictionary lookup. No torch here: the worker processes import
this module, and they start faster without it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sqlora.evaluation import _run_tasks
from sqlora.sandbox import run_query

_EMPTY = "empty"  # every empty result, whatever its columns: EX counts two empty results as equal


@dataclass(frozen=True)
class Vote:
    chosen: int  # index of the candidate whose SQL is the answer
    votes: int  # candidates in the chosen candidate's group (0: none executed, the first was taken)
    keys: list[str | None]  # per candidate: its result's canonical hash, None where it did not execute


def result_key(db_file: str | Path, sql: str, timeout_s: float) -> str | None:
    """A hash equal for two queries exactly when their results match as EX compares them (None: no result)."""
    if not Path(db_file).is_file():  # a missing database (eval.skip_missing_databases): nothing to run
        return None
    result = run_query(db_file, sql, timeout_s=timeout_s)
    if not result.ok:
        return None
    return canonical_key(result.rows)


def canonical_key(rows: list[tuple]) -> str:
    if not rows:
        return _EMPTY
    # Columns in an order fixed by their own values, so a permutation of the SELECT list gives the same
    # form; then rows in sorted order (a bag). repr() orders mixed types (None, int, str) without errors.
    columns = sorted(zip(*rows), key=lambda column: sorted(map(repr, column)))
    canonical = sorted(repr(row) for row in zip(*columns))
    return hashlib.sha256("\n".join(canonical).encode("utf-8", errors="surrogatepass")).hexdigest()


def choose(keys: list[str | None]) -> Vote:
    """The largest group of candidates with the same result; ties go to the group of the earliest candidate."""
    sizes: dict[str, int] = {}
    for key in keys:
        if key is not None:
            sizes[key] = sizes.get(key, 0) + 1
    if not sizes:
        return Vote(chosen=0, votes=0, keys=keys)
    # max() keeps the first of equal sizes, and dicts keep insertion order: the earliest candidate's group.
    best = max(sizes, key=lambda key: sizes[key])
    return Vote(chosen=keys.index(best), votes=sizes[best], keys=keys)


def vote(candidates: list[list[str]], db_files: list[Path], timeout_s: float, workers: int = 2) -> list[Vote]:
    """For each question, run its candidates on its database (read-only, time-limited, in worker
    processes that a crash cannot take down) and choose one."""
    tasks = [(db_file, sql, timeout_s) for sqls, db_file in zip(candidates, db_files) for sql in sqls]
    keys = iter(_run_tasks(result_key, tasks, workers=workers, crashed=None))
    return [choose([next(keys) for _ in sqls]) for sqls in candidates]
