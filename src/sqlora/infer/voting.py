"""Choosing among candidates by running them: self-consistency (the answer most sampled candidates agree
on) and execution-guided decoding (the first beam that runs, optionally returning rows).

Candidates agree when their results match the way EX compares them (``sqlora.evaluate.execution.results_match``
without gold ordering): the same bag of rows up to a permutation of the columns, and any two empty
results alike. Each result is reduced, in the worker that ran it, to a hash of a canonical form, so no
rows travel back and the grouping is a dictionary lookup. No torch here: the worker processes import
this module, and they start faster without it.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

from sqlora.sql.pool import run_tasks
from sqlora.sql.sandbox import run_query

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


MAX_ORDERINGS = 40_320  # column orderings tried for one key (8! : eight columns with the same values)


def _value(value):
    """A value as EX compares it (Python's ==): True is 1, 1.0 is 1; other types stay apart."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def canonical_key(rows: list[tuple]) -> str:
    """A hash equal for two results exactly when EX calls them equal (results_match without ordering):
    the same bag of rows up to a permutation of the columns, values compared as Python compares them.

    Columns are ordered by their bag of values, which a permutation cannot change; columns with the
    same bag can stand for each other, so among their orderings the one giving the smallest sorted
    list of rows is taken (past MAX_ORDERINGS orderings, the first: equal results may then differ).
    """
    if not rows:
        return _EMPTY
    columns = [tuple(_value(v) for v in column) for column in zip(*rows)]
    bag_key = {id(c): repr(sorted(map(repr, c))) for c in columns}
    groups: dict[str, list[tuple]] = {}
    for column in sorted(columns, key=lambda c: bag_key[id(c)]):
        groups.setdefault(bag_key[id(column)], []).append(column)
    orderings = [list(itertools.permutations(group)) for group in groups.values()]
    count = 1
    for options in orderings:
        count *= len(options)
    if count > MAX_ORDERINGS:
        orderings = [options[:1] for options in orderings]
    best = None
    for choice in itertools.product(*orderings):
        ordered = [column for group in choice for column in group]
        canonical = sorted(repr(row) for row in zip(*ordered))
        if best is None or canonical < best:
            best = canonical
    return hashlib.sha256("\n".join(best).encode("utf-8", errors="surrogatepass")).hexdigest()


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


def first_running(keys: list[str | None], require_rows: bool = False, released: Collection[int] = ()) -> Vote:
    """execution_guided: the first candidate that runs (with ``require_rows``: and returns rows; if none
    does, the first that runs); when none runs, the first. Candidates in ``released`` (constrained
    decoding found no admissible token for them) come after all others. ``votes``: 1 if one ran, else 0."""
    order = [k for k in range(len(keys)) if k not in released] + [k for k in range(len(keys)) if k in released]
    ran = [k for k in order if keys[k] is not None]
    with_rows = [k for k in ran if keys[k] != _EMPTY]
    chosen = (with_rows if require_rows and with_rows else ran)[:1]
    return Vote(chosen=chosen[0] if chosen else order[0] if order else 0, votes=1 if chosen else 0, keys=keys)


def run_candidates(candidates: list[list[str]], db_files: list[Path], timeout_s: float, workers: int = 2) -> list[list[str | None]]:
    """Each question's candidates run on its database (read-only, time-limited, in worker processes that a
    crash cannot take down): their result keys."""
    tasks = [(db_file, sql, timeout_s) for sqls, db_file in zip(candidates, db_files) for sql in sqls]
    keys = iter(run_tasks(result_key, tasks, workers=workers, crashed=None))
    return [[next(keys) for _ in sqls] for sqls in candidates]
