"""Distilled test suites (Zhong, Yu & Klein, EMNLP 2020): for every database with questions, the original
plus the few fuzzed instances that tell each gold query apart from its near misses.

For one database:
1. every gold query's *neighbours* (:mod:`sqlora.testsuite.neighbours`: one small edit each) that the
   scoring rules can see (under Spider's rules DISTINCT is removed before execution, so a DISTINCT
   edit is no edit) are run on the original database; those whose result already differs, or that
   fail, are told apart by the original, which is always part of the suite;
2. seeded fuzzed instances (:mod:`sqlora.testsuite.fuzz`) are made one at a time; one is kept when
   every gold query of the database runs on it and it tells gold from at least one neighbour not yet
   told apart (greedy distillation), until none is left or ``candidates`` instances were tried;
3. what stays undistinguished is reported: neighbours that mean the same as gold (e.g. ``LIMIT 2``
   for ``LIMIT 1`` on a query that returns one row whatever the data) and near misses the fuzzer did
   not reach.

Queries run in the read-only sandbox, one database per task in the worker pool; the suite folder is laid
out as the official suites are (``database/<db_id>/<db_id>.sqlite`` and ``<db_id>_<n>.sqlite``) and
written whole or not at all.
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import sqlglot
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from sqlora.data.schema import database_path
from sqlora.evaluate.execution import execution_text, gold_orders_rows, same_result
from sqlora.io import atomic_path, write_json
from sqlora.sql.pool import run_tasks
from sqlora.sql.sandbox import run_query
from sqlora.testsuite.fuzz import fuzz_database, read_layout
from sqlora.testsuite.neighbours import neighbour_queries

NEIGHBOUR_TIMEOUT_S = 5.0  # a near miss that runs longer than this on the original is told apart by it anyway
SHOWN_UNDISTINGUISHED = 20  # per database, in suite.json


@dataclass(frozen=True)
class SuiteSettings:
    seed: int = 42
    candidates: int = 100  # fuzzed instances tried per database
    max_rows: int = 30  # rows per table of a fuzzed instance, at most
    neighbours: int = 0  # near misses per gold query (0: all of them)
    bird: bool = False  # BIRD's rules: queries run as written, results compared as sets
    timeout_s: float = 30.0  # per gold query


@dataclass
class DatabaseSuite:
    """One database's suite and how well it separates gold from its neighbours."""

    db_id: str
    queries: int = 0  # distinct gold queries
    bad_gold: int = 0  # gold queries that fail on the original (their neighbours are not counted)
    neighbours: int = 0
    by_original: int = 0  # neighbours the original database tells apart
    by_fuzzed: int = 0  # ... and the kept fuzzed instances
    undistinguished: int = 0
    undistinguished_kinds: dict[str, int] = field(default_factory=dict)
    undistinguished_examples: list[dict] = field(default_factory=list)  # {"gold", "kind", "neighbour"}
    tried: int = 0  # fuzzed instances made
    rejected: int = 0  # ... on which some gold query failed
    kept: int = 0
    seconds: float = 0.0
    error: str | None = None  # the worker crashed: the suite holds the original only


@dataclass
class SuiteReport:
    settings: SuiteSettings
    databases: list[DatabaseSuite]
    missing: list[str]  # db_ids without a database file: no suite

    def totals(self) -> dict:
        keys = ("queries", "neighbours", "by_original", "by_fuzzed", "undistinguished", "tried", "kept")
        totals = {key: sum(getattr(d, key) for d in self.databases) for key in keys}
        told = totals["by_original"] + totals["by_fuzzed"]
        return {
            "databases": len(self.databases),
            "suite_databases": len(self.databases) + totals["kept"],
            **totals,
            "distinguished": round(told / totals["neighbours"], 4) if totals["neighbours"] else 1.0,
            "seconds": round(sum(d.seconds for d in self.databases), 1),
        }

    def to_json(self) -> dict:
        return {
            "settings": asdict(self.settings),
            "totals": self.totals(),
            "missing": self.missing,
            "databases": [asdict(d) for d in self.databases],
        }


def gold_literals(sql: str) -> list[object]:
    """The constants of a query (numbers, strings), which the fuzzer mixes into its values (with their
    neighbours: numbers +-1, LIKE patterns filled in) so that conditions sometimes hold."""
    try:
        tokens = sqlglot.tokenize(sql, read="sqlite")
    except SqlglotError:
        return []
    values: list[object] = []
    for token in tokens:
        raw = sql[token.start : token.end + 1]
        if token.token_type == TokenType.NUMBER:
            values.append(float(token.text) if any(c in token.text for c in ".eE") else int(token.text))
        elif token.token_type == TokenType.STRING or (token.token_type == TokenType.IDENTIFIER and raw.startswith('"')):
            values.append(token.text)  # Spider writes strings in double quotes, which SQLite reads as strings
    return values


def build_suite(
    golds: Sequence[tuple[str, str]], db_dir: str | Path, out_dir: str | Path, settings: SuiteSettings, workers: int = 2
) -> SuiteReport:
    """The test suite of every database that ``golds`` ((sql, db_id) pairs) use, under ``db_dir`` in
    Spider's layout, written to ``out_dir`` (``database/<db_id>/*.sqlite`` and ``suite.json``)."""
    queries: dict[str, list[str]] = {}
    for sql, db_id in golds:
        if sql not in queries.setdefault(db_id, []):
            queries[db_id].append(sql)
    missing = sorted(db_id for db_id in queries if not database_path(db_dir, db_id).is_file())
    with atomic_path(out_dir) as tmp:
        tasks = [
            (database_path(db_dir, db_id), tmp / "database" / db_id, db_id, queries[db_id], settings)
            for db_id in sorted(queries)
            if db_id not in missing
        ]
        crashed = DatabaseSuite(db_id="", error="its worker process crashed")
        results = run_tasks(distill_database, tasks, workers=workers, crashed=crashed)
        databases = []
        for (source, folder, db_id, *_), result in zip(tasks, results):
            if result is crashed:  # whatever it wrote is unfinished: the original alone
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                shutil.copyfile(source, folder / source.name)
                result = DatabaseSuite(db_id=db_id, error=crashed.error)
            databases.append(result)
        report = SuiteReport(settings, databases, missing)
        write_json(tmp / "suite.json", report.to_json())
    return report


def distill_database(source: Path, folder: Path, db_id: str, golds: list[str], settings: SuiteSettings) -> DatabaseSuite:
    """One database's suite into ``folder``: the original, then the fuzzed instances worth keeping."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / source.name)
    suite = DatabaseSuite(db_id=db_id, queries=len(golds))
    text = execution_text(settings.bird)
    layout = read_layout(source)
    columns = {table.name.lower(): [c.name for c in table.columns] for table in layout.tables}

    # Gold on the original; near misses the scoring rules can see, and whether the original tells them apart.
    targets = []  # (gold text, order matters, its neighbours not yet told apart: [(kind, text)])
    for gold in golds:
        gold_text = text(gold)
        order = not settings.bird and gold_orders_rows(gold_text)
        result = run_query(source, gold_text, timeout_s=settings.timeout_s)
        if not result.ok:
            suite.bad_gold += 1
            continue
        # Neighbours come back in sqlglot's spelling: compared with gold in the same spelling, as the rules
        # execute them (whitespace aside), to drop edits the rules undo (Spider's: DISTINCT).
        same_text = _spelled(text(_regenerated(gold)))
        near_misses = neighbour_queries(gold, columns, limit=settings.neighbours, seed=settings.seed)
        pending = []
        for kind, near in dict.fromkeys((n.kind, text(n.sql)) for n in near_misses):
            if _spelled(near) == same_text:
                continue
            suite.neighbours += 1
            other = run_query(source, near, timeout_s=NEIGHBOUR_TIMEOUT_S)
            if other.ok and _same(other.rows, result.rows, order, settings.bird):
                pending.append((kind, near))
            else:
                suite.by_original += 1
        targets.append((gold_text, order, pending))

    literals = [value for gold in golds for value in gold_literals(gold)]
    runnable = [(gold_text, order) for gold_text, order, _ in targets]
    while any(pending for *_, pending in targets) and suite.tried < settings.candidates:
        suite.tried += 1
        path = folder / f"{db_id}_{suite.kept + 1}.sqlite"
        fuzz_database(layout, path, random.Random(f"{settings.seed}/{db_id}/{suite.tried}"), literals, settings.max_rows)
        gold_rows = [run_query(path, gold_text, timeout_s=settings.timeout_s) for gold_text, _ in runnable]
        if not all(result.ok for result in gold_rows):  # every question's gold must run on every suite database
            suite.rejected += 1
            path.unlink()
            continue
        told = 0
        for (_gold_text, order, pending), gold in zip(targets, gold_rows):
            still = []
            for kind, near in pending:
                other = run_query(path, near, timeout_s=settings.timeout_s)
                if other.ok and _same(other.rows, gold.rows, order, settings.bird):
                    still.append((kind, near))
            told += len(pending) - len(still)
            pending[:] = still
        if told:
            suite.kept += 1
            suite.by_fuzzed += told
        else:
            path.unlink()

    left = [(gold_text, kind, near) for gold_text, _, pending in targets for kind, near in pending]
    suite.undistinguished = len(left)
    suite.undistinguished_kinds = dict(sorted(Counter(kind for _, kind, _ in left).items()))
    suite.undistinguished_examples = [{"gold": g, "kind": k, "neighbour": n} for g, k, n in left[:SHOWN_UNDISTINGUISHED]]
    suite.seconds = round(time.perf_counter() - start, 2)
    return suite


def _regenerated(sql: str) -> str:
    try:
        return sqlglot.parse_one(sql, read="sqlite").sql(dialect="sqlite")
    except (SqlglotError, ValueError, RecursionError):
        return sql


def _spelled(sql: str) -> str:
    return " ".join(sql.split())


def _same(rows: list[tuple], gold_rows: list[tuple], order: bool, bird: bool) -> bool:
    try:
        return same_result(rows, gold_rows, order, bird)
    except Exception:  # noqa: BLE001 - a comparison that fails (absurdly wide results) tells them apart
        return False
