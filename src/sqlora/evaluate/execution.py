"""Spider and BIRD evaluation: execution accuracy (EX), exact-set-match (EM) and BIRD's VES.

Spider scoring reproduces the official evaluator (taoyds/test-suite-sql-eval ``evaluation.py
--etype all``, no ``--plug_value``, no ``--keep_distinct``) example by example:

* the prediction's `` value `` placeholders become `` 1 `` (for both EX and EM);
* before execution both queries get ``> =``/``< =``/``! =`` joined, every DISTINCT keyword
  removed and ``YEAR(CURDATE())`` replaced by 2020;
* results match when they are the same bag of rows up to a permutation of the predicted
  columns; row order counts when the gold text contains "order by" anywhere (as the official);
* a database folder holding several ``*.sqlite`` files (a test suite) must match on every one;
  with ``suite_dir`` EX is scored on the dataset's databases and test-suite accuracy (TS) on the
  suite's, the official test-suite evaluator's rules for both;
* text that is not valid UTF-8 is decoded dropping the bad bytes, as the official does;
* EM (``sqlora.evaluate.exact_match``): the ten components all-or-nothing, values and DISTINCT ignored,
  foreign-key columns unified; a prediction that does not parse scores 0.

Where the official tool has a plain bug we differ, deliberately: its execution timeout never
fires (``asyncio.wait_for`` around a coroutine that never yields), so a runaway prediction hangs
it; here every query runs in the read-only sandbox (``sqlora.sql.sandbox``) with a working time and
memory limit, in worker processes that a crash cannot take down. The official crashes on a gold
query that fails and misreads an empty prediction line as the end of an interaction; here the
former is an error naming the line (or a listed skip) and the latter an empty prediction
scoring 0.

BIRD (``difficulties`` given) follows BIRD's own evaluator: the raw queries are run, results
match as *sets* of rows, and VES weighs each correct prediction by sqrt(gold time / predicted
time) measured over repeated runs.
"""

from __future__ import annotations

import filecmp
import hashlib
import pickle
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import sqlglot
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from sqlora.data.layouts import load_schemas
from sqlora.data.schema import DatabaseSchema, database_path
from sqlora.errors import SqloraError
from sqlora.evaluate.ves import ves_scores
from sqlora.io import atomic_path, cache_dir
from sqlora.sql.engines import Database, open_database, run_sql, with_names
from sqlora.sql.hardness import hardness_or_unparsed
from sqlora.sql.pool import run_tasks
from sqlora.sql.sandbox import QueryResult

HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")
BIRD_DIFFICULTIES = ("simple", "moderate", "challenging")
ETYPES = ("all", "exec", "match")
# Part of every gold-cache key. Bump it whenever what a cached gold result holds, or how it is
# computed, changes (the execution text rules, the sandbox, QueryResult): cache files written by
# an older build then miss, instead of being scored against as if this build had computed them.
GOLD_CACHE_VERSION = 1

_CRASHED = "worker process crashed while running this query"


@dataclass(frozen=True)
class Gold:
    sql: str
    db_id: str
    where: str  # where it came from, for error messages: "dev_gold.sql:12"


@dataclass
class ExampleResult:
    index: int
    db_id: str
    hardness: str  # Spider hardness, BIRD difficulty, or "unparsed" (gold the parser cannot read)
    pred: str
    gold: str
    exec: int | None  # 1 when the prediction's result matches the gold result; None: not executed
    error: str | None  # why it could not match: parse/execution error, timeout, refused, ...
    exact: int | None = None  # exact-set-match (EM), when scored
    exact_error: str | None = None  # why EM could not be computed (the prediction does not parse)
    ves: float | None = None  # BIRD: sqrt(gold time / predicted time) when correct, else 0
    ts: int | None = None  # test-suite accuracy: 1 when the prediction matches gold on every suite database
    ts_failed_on: str | None = None  # the first suite database (file name) where it did not


@dataclass
class EvalReport:
    summary: dict[str, dict]  # level -> {"count", "exec", "exact", "ves"}: the metrics scored
    examples: list[ExampleResult]
    skipped_missing_database: list[int] = field(default_factory=list)  # indexes left out
    skipped_bad_gold: list[dict] = field(default_factory=list)  # {"index", "where", "error"}

    def to_json(self) -> dict:
        return {
            "summary": self.summary,
            "examples": [asdict(example) for example in self.examples],
            "skipped_missing_database": list(self.skipped_missing_database),
            "skipped_bad_gold": list(self.skipped_bad_gold),
        }


# --- what the official evaluator does to the text ----------------------------------------------

_SPACED_OPERATORS = (("> =", ">="), ("< =", "<="), ("! =", "!="))
_CUR_YEAR = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", re.IGNORECASE)


def spider_prediction_text(pred: str) -> str:
    """The prediction as the official evaluator scores it: `` value `` placeholders become 1."""
    return pred.replace(" value ", " 1 ")


def spider_execution_text(sql: str) -> str:
    """The text the official evaluator executes (gold and prediction alike).

    Its DISTINCT removal rebuilds the text from the first statement only, so anything after the
    first ";" is never run.
    """
    for spaced, joined in _SPACED_OPERATORS:
        sql = sql.replace(spaced, joined)
    try:
        tokens = sqlglot.tokenize(sql, read="sqlite")
    except SqlglotError:  # e.g. an unterminated string: it will fail to run anyway
        tokens = []
    semicolon = next((t for t in tokens if t.token_type == TokenType.SEMICOLON), None)
    if semicolon is not None:
        sql = sql[: semicolon.end + 1]
    for token in reversed(tokens):
        if token.token_type == TokenType.DISTINCT and token.end < len(sql):
            sql = sql[: token.start] + sql[token.end + 1 :]
    return _CUR_YEAR.sub("2020", sql)


def execution_text(bird: bool) -> Callable[[str], str]:
    """What a query's text becomes before it runs: as written for BIRD, :func:`spider_execution_text` for Spider."""
    return (lambda sql: sql) if bird else spider_execution_text


def gold_orders_rows(gold_execution_text: str) -> bool:
    """The official rule: row order counts when the gold text says "order by" anywhere."""
    return "order by" in gold_execution_text.lower()


# --- comparing results -------------------------------------------------------------------------


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


def evaluate(
    golds: Sequence[Gold | tuple[str, str]],
    preds: Sequence[str],
    db_dir: str | Path,
    *,
    etype: str = "exec",
    tables_json: str | Path | None = None,
    difficulties: Sequence[str] | None = None,
    ves_iterations: int = 0,
    timeout_s: float = 30.0,
    workers: int = 2,
    skip_missing_databases: bool = False,
    skip_bad_gold: bool = False,
    gold_cache: str | Path | None = None,
    suite_dir: str | Path | None = None,
) -> EvalReport:
    """Score each prediction against its gold query on ``db_dir/<db_id>/<db_id>.sqlite``, or, where
    ``db_dir`` holds ``{db_id}`` (``postgresql://user@host/{db_id}``, ``duck/{db_id}.duckdb``), on the
    database it names: gold and prediction run on the same engine, the prediction transpiled from SQLite.

    ``etype``: "exec" (EX), "match" (EM, needs ``tables_json``; nothing is executed) or "all".
    ``difficulties`` (BIRD: one label per example) switches to BIRD's scoring, reported by those
    labels; ``ves_iterations`` > 0 adds BIRD's VES from that many timed runs per correct pair.
    A missing database file, or a gold query that fails to run, raises SqloraError naming the
    gold line, unless ``skip_missing_databases`` / ``skip_bad_gold`` list and leave them out.
    ``gold_cache``: a folder where gold results are kept across runs (None: no cache).
    ``suite_dir``: a test suite in the official layout (``<db_id>/*.sqlite``, the original database and
    its fuzzed instances, e.g. ``sqlora testsuite``'s): adds TS, right only where the prediction is
    right on the dataset's database (EX) and matches gold on every suite database too.
    """
    if etype not in ETYPES:
        raise ValueError(f"etype must be one of {ETYPES}, got {etype!r}")
    golds = [g if isinstance(g, Gold) else Gold(g[0], g[1], f"gold #{i + 1}") for i, g in enumerate(golds)]
    if len(golds) != len(preds):
        raise SqloraError(f"got {len(golds)} gold queries but {len(preds)} predictions; they must pair up")
    bird = difficulties is not None
    if bird and len(difficulties) != len(golds):
        raise SqloraError(f"got {len(golds)} gold queries but {len(difficulties)} difficulty labels")
    execute = etype in ("all", "exec")
    match = etype in ("all", "match") and not bird  # BIRD publishes no EM
    schemas = _load_schemas(tables_json, golds) if match else {}
    template = str(db_dir) if "{db_id}" in str(db_dir) else None
    if suite_dir is not None and (template is not None or not execute):
        raise SqloraError(
            f"{suite_dir}: a test suite is scored by executing queries on its SQLite files: "
            "evaluate on the dataset's SQLite files, with etype exec or all"
        )
    if template is not None and bird and ves_iterations > 0:
        raise SqloraError(f"{template}: VES times queries on the SQLite files only; evaluate with ves_iterations 0 there")
    db_dir = Path(db_dir)

    report = EvalReport(summary={}, examples=[])
    scored: list[int] = []
    targets: dict[str, list[Path | Database] | str] = {}  # db_id -> its databases, or why there is none
    for index, gold in enumerate(golds):
        if execute and gold.db_id not in targets:
            targets[gold.db_id] = _databases(db_dir, template, gold.db_id)
        if not execute or not isinstance(targets[gold.db_id], str):
            scored.append(index)
        elif skip_missing_databases:
            report.skipped_missing_database.append(index)
        else:
            raise SqloraError(
                f"{gold.where}: no database for db_id {gold.db_id!r}: {targets[gold.db_id]} "
                "(to score the other questions: --skip-missing-databases, or eval.skip_missing_databases: true)"
            )

    for index in scored:
        gold = golds[index]
        pred = preds[index] if bird else spider_prediction_text(preds[index])
        level = difficulties[index] if bird else hardness_or_unparsed(gold.sql)
        report.examples.append(
            ExampleResult(index=index, db_id=gold.db_id, hardness=level, pred=pred, gold=gold.sql, exec=None, error=None)
        )

    if execute:
        _score_execution(report, golds, targets, bird, timeout_s, workers, skip_bad_gold, gold_cache)
        if bird and ves_iterations > 0:
            correct = [e for e in report.examples if e.exec]
            scores = ves_scores(db_dir, [(e.db_id, e.pred, e.gold) for e in correct], ves_iterations, timeout_s, workers)
            for example in report.examples:
                example.ves = 0.0
            for example, score in zip(correct, scores):
                example.ves = score
        if suite_dir is not None:
            _score_test_suite(report, golds, db_dir, Path(suite_dir), bird, timeout_s, workers, gold_cache)
    if match:
        _score_exact_match(report, schemas)
    levels = BIRD_DIFFICULTIES if bird else HARDNESS_LEVELS
    metrics = (
        ["exec"] * execute + ["exact"] * match + ["ves"] * (execute and bird and ves_iterations > 0) + ["ts"] * (suite_dir is not None)
    )
    report.summary = _summarize(report.examples, levels, metrics)
    return report


def _load_schemas(tables_json: str | Path | None, golds: list[Gold]) -> dict[str, DatabaseSchema]:
    """The schemas EM needs, read and checked as prepare reads them: a malformed entry is an error
    naming the file, the entry and the key."""
    if tables_json is None:
        raise SqloraError("exact-set-match needs the tables.json schema file (--table)")
    schemas = load_schemas(tables_json)
    for gold in golds:
        if gold.db_id not in schemas:
            raise SqloraError(f"{gold.where}: unknown db_id {gold.db_id!r}: not in {tables_json}")
    return schemas


def _score_execution(
    report: EvalReport,
    golds: list[Gold],
    targets: dict[str, list[Path | Database]],
    bird: bool,
    timeout_s: float,
    workers: int,
    skip_bad_gold: bool,
    gold_cache: str | Path | None,
) -> None:
    """Run every gold query (once per distinct text and file, cached) and score every prediction."""
    text = execution_text(bird)
    examples = report.examples
    files = {e.db_id: targets[e.db_id] for e in examples}
    gold_keys = list(dict.fromkeys((path, text(golds[e.index].sql)) for e in examples for path in files[e.db_id]))
    gold_results = _run_gold_queries(gold_keys, timeout_s, workers, gold_cache)

    kept = []
    for example in examples:
        gold = golds[example.index]
        failure = next(
            (
                f"{path.name if isinstance(path, Path) else path}: {gold_results[(path, text(gold.sql))].error}"
                for path in files[example.db_id]
                if not gold_results[(path, text(gold.sql))].ok
            ),
            None,
        )
        if failure is None:
            kept.append(example)
        elif skip_bad_gold:
            report.skipped_bad_gold.append({"index": example.index, "where": gold.where, "error": f"gold query fails on {failure}"})
        else:
            raise SqloraError(
                f"{gold.where}: gold query fails on {failure} (to list and leave out such questions: "
                "--skip-bad-gold, or eval.skip_bad_gold: true in params.yaml)"
            )
    report.examples[:] = kept

    # Predictions run and are compared in the workers, so their rows (possibly huge, possibly
    # slow to compare) never pile up in this process.
    tasks = _prediction_tasks(kept, golds, files, gold_results, bird, timeout_s)
    for example, (matched, error, _) in zip(kept, run_tasks(_score_prediction, tasks, workers=workers, crashed=(False, _CRASHED, None))):
        example.exec, example.error = int(matched), error


def _score_test_suite(
    report: EvalReport,
    golds: list[Gold],
    db_dir: Path,
    suite_dir: Path,
    bird: bool,
    timeout_s: float,
    workers: int,
    gold_cache: str | Path | None,
) -> None:
    """TS of every scored example: a prediction wrong on the dataset's database (EX 0) is wrong on the suite,
    which holds that database; a right one runs on each other suite database. A gold query that fails on
    a suite database is an error naming the file (the suite is broken, as the official evaluator says)."""
    text = execution_text(bird)
    files: dict[str, list[Path]] = {}
    for example in report.examples:
        if example.db_id in files:
            continue
        suite = _databases(suite_dir, None, example.db_id)
        if isinstance(suite, str):
            raise SqloraError(f"{suite_dir}: the test suite has no database for db_id {example.db_id!r}: {suite}")
        original = database_path(db_dir, example.db_id)
        # The suite's copy of the dataset's database gives EX's answer again: not run twice.
        files[example.db_id] = [p for p in suite if not (p.name == original.name and filecmp.cmp(p, original, shallow=False))]
    right = [e for e in report.examples if e.exec]
    for example in report.examples:
        example.ts, example.ts_failed_on = 0, None if example.exec else database_path(db_dir, example.db_id).name
    keys = list(dict.fromkeys((path, text(golds[e.index].sql)) for e in right for path in files[e.db_id]))
    gold_results = _run_gold_queries(keys, timeout_s, workers, gold_cache)
    for path, sql in keys:
        if not gold_results[(path, sql)].ok:
            where = next(golds[e.index].where for e in right if path in files[e.db_id] and text(golds[e.index].sql) == sql)
            raise SqloraError(f"{where}: gold query fails on test-suite database {path}: {gold_results[(path, sql)].error}")
    tasks = _prediction_tasks(right, golds, files, gold_results, bird, timeout_s)
    for example, (matched, _, failed_on) in zip(
        right, run_tasks(_score_prediction, tasks, workers=workers, crashed=(False, _CRASHED, "(its worker process crashed)"))
    ):
        example.ts, example.ts_failed_on = int(matched), failed_on


def _prediction_tasks(
    examples: list[ExampleResult],
    golds: list[Gold],
    files: dict,
    gold_results: dict,
    bird: bool,
    timeout_s: float,
) -> list[tuple]:
    """One :func:`_score_prediction` task per example: its prediction and gold's result on each of its databases."""
    text = execution_text(bird)
    tasks = []
    for example in examples:
        gold_text = text(golds[example.index].sql)
        pairs = [(path, gold_results[(path, gold_text)]) for path in files[example.db_id]]
        tasks.append((pairs, text(example.pred), not bird and gold_orders_rows(gold_text), timeout_s, bird))
    return tasks


def _databases(db_dir: Path, template: str | None, db_id: str) -> list[Path | Database] | str:
    """The SQLite file of ``db_id`` and, in a test-suite layout, every other ``*.sqlite`` file beside
    it; or the one database ``template`` names (its schema's names read, to spell them as its catalog
    does). A string saying what is missing when there is none."""
    if template is not None:
        from sqlora.data.catalog import read_schema

        try:
            database = open_database(template.replace("{db_id}", db_id))
            return [with_names(database, read_schema(database).names())]
        except SqloraError as exc:
            return str(exc)
    main = database_path(db_dir, db_id)
    if not main.is_file():
        return f"expected {main}"
    return [main] + sorted(p for p in main.parent.glob("*.sqlite") if p != main)


def _run_gold_queries(
    keys: list[tuple[Path | Database, str]], timeout_s: float, workers: int, folder: str | Path | None
) -> dict[tuple[Path | Database, str], QueryResult]:
    """Gold results, read from the cache where it has them, the rest run (and cached)."""
    results: dict[tuple[Path, str], QueryResult] = {}
    # Only SQLite files are cached: a server's database can change without a file's size or mtime telling.
    paths = {key: _gold_cache_path(Path(folder), *key) for key in keys if isinstance(key[0], Path)} if folder is not None else {}
    for key, path in paths.items():
        try:
            results[key] = pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, TypeError):
            pass  # not cached yet, or an unreadable entry: run it again
    todo = [key for key in keys if key not in results]
    runs = run_tasks(
        run_sql, [(path, sql, timeout_s) for path, sql in todo], workers=workers, crashed=QueryResult(rows=None, error=_CRASHED)
    )
    for key, result in zip(todo, runs):
        results[key] = result
        # Timeouts, memory limits and crashes depend on the machine and its load: never cached.
        if key in paths and (result.ok or result.error.startswith(("parse/execution error", "refused"))):
            with atomic_path(paths[key]) as tmp:
                tmp.write_bytes(pickle.dumps(result))
    return results


def _gold_cache_path(folder: Path, db_file: Path, sql: str) -> Path:
    """One file per (database file, query); a changed database (size or mtime), or a build with another
    ``GOLD_CACHE_VERSION``, misses the cache."""
    stat = db_file.stat()
    key = f"{GOLD_CACHE_VERSION}\0{db_file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{sql}"
    digest = hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()
    return folder / digest[:2] / f"{digest}.pickle"


def default_gold_cache() -> Path:
    return cache_dir("gold-results")


def same_result(pred_rows: list[tuple], gold_rows: list[tuple], order_matters: bool, as_sets: bool) -> bool:
    """EX's verdict on two results: Spider's rules (:func:`results_match`), or BIRD's (``as_sets``: the same
    set of rows, columns in order; duplicates and order ignored)."""
    return set(pred_rows) == set(gold_rows) if as_sets else results_match(pred_rows, gold_rows, order_matters)


def _score_prediction(
    pairs: list[tuple[Path | Database, QueryResult]], pred_sql: str, order_matters: bool, timeout_s: float, as_sets: bool
) -> tuple[bool, str | None, str | None]:
    """Run the prediction on each database and compare with the gold result there: (matched, why not, the
    database where it did not match)."""
    for db_file, gold in pairs:
        name = db_file.name if isinstance(db_file, Path) else str(db_file)
        pred = run_sql(db_file, pred_sql, timeout_s=timeout_s)
        if not pred.ok:
            return False, pred.error, name
        try:
            same = same_result(pred.rows, gold.rows, order_matters, as_sets)
        except Exception as e:  # noqa: BLE001 - e.g. RecursionError for absurdly wide results
            return False, " ".join(f"comparison failed: {type(e).__name__}: {e}".split()), name
        if not same:
            return False, None, name
    return True, None, None


def _score_exact_match(report: EvalReport, schemas: dict[str, DatabaseSchema]) -> None:
    """Exact-set-match of every example; gold the official parser cannot read scores 0, with the reason."""
    from sqlora.evaluate.exact_match import exact_match

    for example in report.examples:
        try:
            matched, error = exact_match(example.gold, example.pred, schemas[example.db_id])
        except ValueError as exc:
            matched, error = False, f"gold not parsable for EM: {exc}"
        example.exact, example.exact_error = int(matched), error


def _summarize(examples: list[ExampleResult], levels: tuple[str, ...], metrics: list[str]) -> dict[str, dict]:
    """Per level (and "all"): the count and the mean of each metric scored."""
    summary = {}
    for level in (*levels, "all"):
        chosen = [e for e in examples if level == "all" or e.hardness == level]
        entry: dict = {"count": len(chosen)}
        for metric in metrics:
            entry[metric] = sum(getattr(e, metric) for e in chosen) / len(chosen) if chosen else 0.0
        if "ves" in entry:
            entry["ves"] *= 100  # BIRD reports VES on a 0-100 scale
        summary[level] = entry
    return summary


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
