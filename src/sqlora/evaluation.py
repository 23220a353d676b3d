"""Execution accuracy (EX) of predicted SQL against gold SQL on Spider-layout SQLite databases.

Matching follows ``eval_exec_match`` of the official test-suite evaluator
(taoyds/test-suite-sql-eval): two results match when they are the same bag of rows, allowing
the predicted columns to be any permutation of the gold columns; row order counts only when
the gold query ends in an ORDER BY. Every query runs in the read-only sandbox
(``sqlora.sandbox.run_query``), in worker processes so that a crash cannot end the run.

Known differences from the official script, which exact parity will have to settle:
the official one strips DISTINCT from both queries before running them (unless
``--keep_distinct``), rewrites ``> =`` to ``>=``, and treats *any* "order by" in the gold text
(even inside a subquery) as making row order matter. Here DISTINCT and the text are kept as
written and only a top-level ORDER BY makes order matter.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, TypeVar

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from sqlora.hardness import spider_hardness
from sqlora.sandbox import QueryResult, run_query

HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")
BIRD_DIFFICULTIES = ("simple", "moderate", "challenging")

_CRASHED = "worker process crashed while running this query"
T = TypeVar("T")


@dataclass
class ExampleResult:
    index: int
    db_id: str
    hardness: str
    pred: str
    gold: str
    exec: int  # 1 when the prediction's result matches the gold result, else 0
    error: str | None  # why the example could not match: prediction or gold failed to run
    exact: int | None = None  # exact-set-match (EM), when scored
    exact_error: str | None = None  # why EM could not be computed (the prediction does not parse)


@dataclass
class EvalReport:
    summary: dict[str, dict]  # easy/medium/hard/extra/all -> {"count": n, "exec": fraction}
    examples: list[ExampleResult]
    skipped: list[int]  # indexes not scored because their database file is missing

    def to_json(self) -> dict:
        return {
            "summary": self.summary,
            "examples": [asdict(example) for example in self.examples],
            "skipped": list(self.skipped),
        }


def results_match(pred_rows: list[tuple], gold_rows: list[tuple], order_matters: bool) -> bool:
    """True when the two results are equal up to a permutation of the predicted columns.

    Rows are compared as multisets (duplicates count) unless ``order_matters``, in which case
    they must also come in the same order.
    """
    # Like the official evaluator: two empty results match whatever their columns.
    if not pred_rows and not gold_rows:
        return True
    if len(pred_rows) != len(gold_rows) or len(pred_rows[0]) != len(gold_rows[0]):
        return False

    gold_columns = list(zip(*gold_rows))
    pred_columns = list(zip(*pred_rows))
    if order_matters:
        # Rows line up one to one, so every gold column must equal a distinct predicted column
        # value for value: the two bags of whole columns must be the same.
        return Counter(gold_columns) == Counter(pred_columns)
    return _find_column_permutation(gold_columns, pred_columns)


def _find_column_permutation(gold_columns: list[tuple], pred_columns: list[tuple]) -> bool:
    """Is there a column permutation making both results the same bag of rows?

    A predicted column can stand for a gold column only if it holds the same multiset of
    values, which usually leaves one candidate per column. The search assigns gold columns one
    at a time and prunes as soon as the rows projected on the columns assigned so far differ.
    """
    value_bags = [Counter(column) for column in pred_columns]
    candidates = []
    for gold_column in gold_columns:
        bag = Counter(gold_column)
        options = [j for j, pred_bag in enumerate(value_bags) if pred_bag == bag]
        if not options:
            return False
        candidates.append(options)

    order = sorted(range(len(gold_columns)), key=lambda i: len(candidates[i]))
    chosen: list[int] = []  # chosen[k] is the predicted column for gold column order[k]

    def projected_rows_match() -> bool:
        assigned = order[: len(chosen)]
        gold_part = Counter(zip(*(gold_columns[i] for i in assigned)))
        pred_part = Counter(zip(*(pred_columns[j] for j in chosen)))
        return gold_part == pred_part

    def search(depth: int) -> bool:
        if depth == len(order):
            return True
        tried: set[tuple] = set()
        for j in candidates[order[depth]]:
            # Identical predicted columns are interchangeable: trying one of them is enough.
            if j in chosen or pred_columns[j] in tried:
                continue
            tried.add(pred_columns[j])
            chosen.append(j)
            if projected_rows_match() and search(depth + 1):
                return True
            chosen.pop()
        return False

    return search(0)


def execution_match(
    db_path: str | Path, pred_sql: str, gold_sql: str, timeout_s: float = 30.0
) -> tuple[bool, str | None]:
    """Run both queries on ``db_path`` and compare them; returns (match, error or None)."""
    gold = run_query(db_path, gold_sql, timeout_s=timeout_s)
    return _run_and_compare(Path(db_path), pred_sql, gold, _order_matters(gold_sql), timeout_s)


def _run_and_compare(
    db_path: Path, pred_sql: str, gold: QueryResult, order_matters: bool, timeout_s: float, as_sets: bool = False
) -> tuple[bool, str | None]:
    """Score one prediction against an already computed gold result (BIRD: ``as_sets``)."""
    if not gold.ok:  # a data error; no point running the prediction
        return False, f"gold failed: {gold.error}"
    pred = run_query(db_path, pred_sql, timeout_s=timeout_s)
    if not pred.ok:
        return False, pred.error
    try:
        if as_sets:  # BIRD's EX: the same set of rows, columns in order, duplicates and row order ignored
            return set(pred.rows) == set(gold.rows), None
        return results_match(pred.rows, gold.rows, order_matters), None
    except Exception as e:  # noqa: BLE001 - e.g. RecursionError for absurdly wide results
        return False, " ".join(f"comparison failed: {type(e).__name__}: {e}".split())


def _order_matters(gold_sql: str) -> bool:
    """Whether the gold query orders its final result (an ORDER BY at the top level)."""
    try:
        root = sqlglot.parse_one(gold_sql, read="sqlite")
    except SqlglotError:
        # Unparseable gold cannot be classified; fall back to the official text test.
        return "order by" in " ".join(gold_sql.lower().split())
    while isinstance(root, (exp.Subquery, exp.Paren)):
        root = root.this
    return root.args.get("order") is not None


def evaluate_execution(
    golds: list[tuple[str, str]],
    preds: list[str],
    db_dir: str | Path,
    *,
    timeout_s: float = 30.0,
    workers: int = 2,
    skip_missing_databases: bool = False,
    difficulties: list[str] | None = None,
) -> EvalReport:
    """Score each prediction against its (gold_sql, db_id) by execution on ``db_dir``.

    Databases are found at ``db_dir/<db_id>/<db_id>.sqlite``. A missing one raises
    FileNotFoundError, or with ``skip_missing_databases`` its examples are left out of every
    count and listed in ``skipped``. ``workers`` > 1 runs queries in that many processes.

    With ``difficulties`` (BIRD: one label per example) results are compared as BIRD does —
    as sets of rows — and reported by those labels instead of Spider hardness.
    """
    if len(golds) != len(preds):
        raise ValueError(f"got {len(golds)} gold queries but {len(preds)} predictions; they must pair up")
    db_dir = Path(db_dir)

    scored: list[int] = []
    skipped: list[int] = []
    for index, (_, db_id) in enumerate(golds):
        path = _database_path(db_dir, db_id)
        if path.is_file():
            scored.append(index)
        elif skip_missing_databases:
            skipped.append(index)
        else:
            raise FileNotFoundError(f"database for db_id {db_id!r} not found: expected {path}")

    if difficulties is not None and len(difficulties) != len(golds):
        raise ValueError(f"got {len(golds)} gold queries but {len(difficulties)} difficulty labels")
    hardness: dict[int, str] = {}
    for index in scored:
        gold_sql, db_id = golds[index]
        if difficulties is not None:
            hardness[index] = difficulties[index]
            continue
        try:
            hardness[index] = spider_hardness(gold_sql)
        except ValueError:
            # Malformed gold SQL exists (25 CoSQL dev turns): such examples count in "all" only.
            hardness[index] = "unparsed"

    # Each distinct (db_id, gold_sql) runs once, however many predictions share it.
    gold_keys = list(dict.fromkeys((golds[i][1], golds[i][0]) for i in scored))
    gold_runs = _run_tasks(
        run_query,
        [(_database_path(db_dir, db_id), sql, timeout_s) for db_id, sql in gold_keys],
        workers=workers,
        crashed=QueryResult(rows=None, error=_CRASHED),
    )
    gold_results = dict(zip(gold_keys, gold_runs))
    # Predictions are run and compared in the workers, so their rows (possibly huge, possibly
    # slow to compare) never pile up in this process.
    outcomes = _run_tasks(
        _run_and_compare,
        [
            (
                _database_path(db_dir, golds[i][1]),
                preds[i],
                gold_results[(golds[i][1], golds[i][0])],
                _order_matters(golds[i][0]),
                timeout_s,
                difficulties is not None,
            )
            for i in scored
        ],
        workers=workers,
        crashed=(False, _CRASHED),
    )

    examples = []
    for index, (match, error) in zip(scored, outcomes):
        gold_sql, db_id = golds[index]
        examples.append(
            ExampleResult(
                index=index,
                db_id=db_id,
                hardness=hardness[index],
                pred=preds[index],
                gold=gold_sql,
                exec=int(match),
                error=error,
            )
        )
    levels = BIRD_DIFFICULTIES if difficulties is not None else HARDNESS_LEVELS
    return EvalReport(summary=_summarize(examples, levels), examples=examples, skipped=skipped)


def _database_path(db_dir: Path, db_id: str) -> Path:
    return db_dir / db_id / f"{db_id}.sqlite"


def _summarize(examples: list[ExampleResult], levels: tuple[str, ...]) -> dict[str, dict]:
    summary = {}
    for level in (*levels, "all"):
        chosen = [e for e in examples if level == "all" or e.hardness == level]
        hits = sum(e.exec for e in chosen)
        summary[level] = {"count": len(chosen), "exec": hits / len(chosen) if chosen else 0.0}
    return summary


def _run_tasks(function: Callable[..., T], tasks: list[tuple], *, workers: int, crashed: T) -> list[T]:
    """``[function(*task) for task in tasks]``, in ``workers`` processes when workers > 1.

    A task whose worker process dies gets ``crashed`` as its result; the others still run.
    """
    if workers <= 1:
        return [function(*task) for task in tasks]

    results: list[T | None] = [None] * len(tasks)
    todo = list(range(len(tasks)))
    while todo:
        broken = _run_in_pool(function, tasks, todo, results, workers=workers)
        if broken and _run_in_pool(run_query, [(Path(), "")], [0], [None], workers=1):
            # Even a query that never touches SQLite lost its worker: processes die on start-up.
            raise RuntimeError(
                "evaluation worker processes die on start-up; a script that calls this with "
                "workers > 1 needs an `if __name__ == '__main__':` guard (or use workers=1)"
            )
        # A worker died (a crash inside SQLite, or the OS killing it) and took the pool down
        # with every unfinished task. The pool hands out tasks in submission order, so the one
        # that killed it is among the first unfinished: run those alone, each in a fresh
        # process, and resubmit the rest. Every round settles at least one task.
        suspects, todo = broken[: workers + 1], broken[workers + 1 :]
        for index in suspects:
            if _run_in_pool(function, tasks, [index], results, workers=1):
                results[index] = crashed
    return results  # type: ignore[return-value]  # every slot is filled by now


def _run_in_pool(
    function: Callable[..., T],
    tasks: list[tuple],
    indexes: list[int],
    results: list[T | None],
    *,
    workers: int,
) -> list[int]:
    """Run ``function(*tasks[i])`` for each i in ``indexes`` in a new pool, into ``results[i]``.

    Returns the indexes (in order) whose task was lost because the pool broke.
    """
    # "spawn" gives workers a clean interpreter: forking a parent that holds threads (or big
    # ML libraries) can deadlock, and workers need nothing from the parent's memory.
    context = multiprocessing.get_context("spawn")
    broken: list[int] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(indexes)), mp_context=context) as pool:
        futures: list[tuple[int, Future | None]] = []
        for index in indexes:
            try:
                futures.append((index, pool.submit(function, *tasks[index])))
            except BrokenProcessPool:
                futures.append((index, None))
        for index, future in futures:
            try:
                if future is None:
                    raise BrokenProcessPool
                results[index] = future.result()
            except BrokenProcessPool:
                broken.append(index)
    return broken


def interaction_accuracy(examples: list[ExampleResult], interaction_ids: list[str | None]) -> dict:
    """CoSQL / SParC: question-level EX, and interaction-level EX (every turn of an interaction right).

    ``interaction_ids`` holds one id per input example (by ``ExampleResult.index``)."""
    by_interaction: dict[str, list[int]] = {}
    for example in examples:
        by_interaction.setdefault(str(interaction_ids[example.index]), []).append(example.exec)
    correct = sum(all(turns) for turns in by_interaction.values())
    return {
        "questions": len(examples),
        "question_ex": sum(e.exec for e in examples) / len(examples) if examples else 0.0,
        "interactions": len(by_interaction),
        "interaction_ex": correct / len(by_interaction) if by_interaction else 0.0,
    }


def read_gold_file(path: str | Path) -> list[tuple[str, str]]:
    """The official gold format: one ``SQL<TAB>db_id`` per line."""
    from sqlora.errors import SqloraError

    golds = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SqloraError(f"{path}: file not found") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        sql, tab, db_id = line.rpartition("\t")
        if not tab or not sql.strip() or not db_id.strip():
            raise SqloraError(f"{path}:{lineno}: expected 'SQL<TAB>db_id'")
        golds.append((sql.strip(), db_id.strip()))
    return golds


def read_pred_file(path: str | Path, expected: int) -> list[str]:
    """The official prediction format: one SQL per line, in gold order (an empty line is an empty prediction)."""
    from sqlora.errors import SqloraError

    try:
        lines = Path(path).read_text(encoding="utf-8").removesuffix("\n").split("\n")
    except FileNotFoundError:
        raise SqloraError(f"{path}: file not found") from None
    if len(lines) != expected:
        raise SqloraError(f"{path}: {len(lines)} predictions for {expected} gold queries")
    return [line.strip() for line in lines]


def format_summary(summary: dict[str, dict], metrics: list[tuple[str, str]]) -> str:
    """The familiar table of the official evaluator: a column per level, a row per metric."""
    levels = list(summary)
    rows = [f"{'':<20}" + "".join(f"{level:<20}" for level in levels)]
    rows.append(f"{'count':<20}" + "".join(f"{summary[level]['count']:<20}" for level in levels))
    for key, title in metrics:
        rows.append(f"{'=' * 20} {title} {'=' * 20}")
        rows.append(f"{key:<20}" + "".join(f"{summary[level][key]:<20.3f}" for level in levels))
    return "\n".join(rows)


def add_exact_match(report: EvalReport, tables_json: str | Path) -> None:
    """Score exact-set-match (EM) on every scored example and add ``exact`` to the summary.

    Gold SQL the official parser cannot read (a few CoSQL/SParC turns) scores 0, with the reason.
    """
    import json

    from sqlora.exact_match import exact_match

    schemas = {entry["db_id"]: entry for entry in json.loads(Path(tables_json).read_text(encoding="utf-8"))}
    for example in report.examples:
        try:
            match, error = exact_match(example.gold, example.pred, schemas[example.db_id])
        except ValueError as exc:
            match, error = False, f"gold not parsable for EM: {exc}"
        example.exact, example.exact_error = int(match), error
    for level, entry in report.summary.items():
        chosen = [e for e in report.examples if level == "all" or e.hardness == level]
        entry["exact"] = sum(e.exact for e in chosen) / len(chosen) if chosen else 0.0
