import json
import os
import pickle
import sqlite3
import time
from pathlib import Path

import pytest

import sqlora.evaluate.execution as evaluation
from sqlora.errors import SqloraError
from sqlora.evaluate.execution import HARDNESS_LEVELS, EvalReport, ExampleResult, Gold, evaluate, results_match, spider_execution_text

# --- results_match -------------------------------------------------------------------------


def test_identical_results_match() -> None:
    rows = [(1, "a"), (2, "b")]
    assert results_match(rows, list(rows), order_matters=True)
    assert results_match(rows, list(rows), order_matters=False)


def test_column_permutation_matches() -> None:
    gold = [(1, "a", 10.0), (2, "b", 20.0)]
    pred = [("a", 10.0, 1), ("b", 20.0, 2)]
    assert results_match(pred, gold, order_matters=False)
    assert results_match(pred, gold, order_matters=True)


def test_permutation_must_be_consistent_across_rows() -> None:
    # Each column holds the same values, but no single column mapping gives the gold rows.
    gold = [(1, 2), (2, 1)]
    pred = [(1, 1), (2, 2)]
    assert not results_match(pred, gold, order_matters=False)


def test_row_order_matters_only_when_asked() -> None:
    gold = [(1, "a"), (2, "b")]
    pred = [(2, "b"), (1, "a")]
    assert results_match(pred, gold, order_matters=False)
    assert not results_match(pred, gold, order_matters=True)


def test_duplicates_count_as_a_multiset() -> None:
    assert not results_match([(1,), (1,), (2,)], [(1,), (2,), (2,)], order_matters=False)
    assert results_match([(1,), (2,), (1,)], [(1,), (1,), (2,)], order_matters=False)


def test_different_row_or_column_counts_do_not_match() -> None:
    assert not results_match([(1,), (2,)], [(1,)], order_matters=False)
    assert not results_match([(1, 1)], [(1,)], order_matters=False)
    assert not results_match([], [(1,)], order_matters=False)


def test_empty_results_match() -> None:
    assert results_match([], [], order_matters=True)


def test_numbers_compare_by_value() -> None:
    assert results_match([(2,)], [(2.0,)], order_matters=True)


def test_many_identical_columns_are_fast() -> None:
    # Twelve interchangeable columns would be 12! permutations without pruning.
    rows = [(None,) * 12] * 50
    start = time.monotonic()
    assert results_match(rows, list(rows), order_matters=False)
    assert time.monotonic() - start < 1.0


# --- evaluate_execution on a small database ------------------------------------------------


@pytest.fixture()
def db_dir(tmp_path: Path) -> Path:
    path = tmp_path / "shop" / "shop.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    conn.executemany(
        "INSERT INTO item VALUES (?, ?, ?)",
        [(1, "apple", 3.0), (2, "bread", 2.0), (3, "cheese", 9.0), (4, "dates", 5.0)],
    )
    conn.commit()
    conn.close()
    return tmp_path


def evaluate_one(db_dir: Path, gold: str, pred: str, **kwargs) -> ExampleResult:
    report = evaluate([(gold, "shop")], [pred], db_dir, workers=1, **kwargs)
    assert report.summary["all"]["count"] == 1
    return report.examples[0]


def test_gold_as_prediction_scores_one(db_dir: Path) -> None:
    golds = [
        ("SELECT name FROM item WHERE price > 2.5", "shop"),
        ("SELECT name, price FROM item ORDER BY price DESC", "shop"),
        ("SELECT count(*) FROM item", "shop"),
    ]
    report = evaluate(golds, [g for g, _ in golds], db_dir, workers=1)
    assert report.summary["all"] == {"count": 3, "exec": 1.0}
    assert [e.exec for e in report.examples] == [1, 1, 1]
    assert all(e.error is None for e in report.examples)


def test_wrong_column_scores_zero(db_dir: Path) -> None:
    result = evaluate_one(db_dir, "SELECT name FROM item", "SELECT id FROM item")
    assert (result.exec, result.error) == (0, None)


def test_missing_order_by_scores_zero_when_order_differs(db_dir: Path) -> None:
    result = evaluate_one(db_dir, "SELECT name FROM item ORDER BY price DESC", "SELECT name FROM item")
    assert result.exec == 0


def test_order_is_free_when_gold_has_no_order_by(db_dir: Path) -> None:
    result = evaluate_one(db_dir, "SELECT name FROM item", "SELECT name FROM item ORDER BY price DESC")
    assert result.exec == 1


def test_order_by_anywhere_in_the_gold_makes_row_order_count(db_dir: Path) -> None:
    # The official rule is textual: "order by" inside a subquery counts too.
    gold = "SELECT name FROM item WHERE price < (SELECT price FROM item ORDER BY price DESC LIMIT 1)"
    assert evaluate_one(db_dir, gold, "SELECT name FROM item WHERE price < 9 ORDER BY name DESC").exec == 0
    assert evaluate_one(db_dir, gold, "SELECT name FROM item WHERE price < 9").exec == 1


def test_distinct_is_ignored_in_execution_as_officially(db_dir: Path) -> None:
    # The official evaluator strips every DISTINCT (without --keep_distinct), in the gold too.
    assert evaluate_one(db_dir, "SELECT DISTINCT price > 2 FROM item", "SELECT price > 2 FROM item").exec == 1
    assert evaluate_one(db_dir, "SELECT count(DISTINCT price > 2) FROM item", "SELECT count(*) FROM item").exec == 1
    assert spider_execution_text("SELECT count(DISTINCT a), 'distinct' FROM t") == "SELECT count( a), 'distinct' FROM t"


def test_official_text_normalisation() -> None:
    assert spider_execution_text("SELECT a FROM t WHERE b > = 2 AND c ! = 1") == "SELECT a FROM t WHERE b >= 2 AND c != 1"
    assert spider_execution_text("SELECT YEAR(CURDATE()) - 1") == "SELECT 2020- 1"


def test_value_placeholder_in_prediction_becomes_one(db_dir: Path) -> None:
    result = evaluate_one(db_dir, "SELECT name FROM item WHERE id = 1", "SELECT name FROM item WHERE id = value ")
    assert result.exec == 1 and result.pred == "SELECT name FROM item WHERE id = 1 "


def test_literal_values_count_in_execution(db_dir: Path) -> None:
    assert evaluate_one(db_dir, "SELECT name FROM item WHERE price > 2.5", "SELECT name FROM item WHERE price > 4").exec == 0


def test_join_written_the_other_way_round_scores_one(tmp_path: Path) -> None:
    path = tmp_path / "lib" / "lib.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE author (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE book (id INTEGER PRIMARY KEY, title TEXT, author_id INTEGER REFERENCES author(id));"
        "INSERT INTO author VALUES (1, 'Ann'), (2, 'Bob');"
        "INSERT INTO book VALUES (1, 'X', 1), (2, 'Y', 1), (3, 'Z', 2);"
    )
    conn.commit()
    conn.close()
    gold = "SELECT T1.title, T2.name FROM book AS T1 JOIN author AS T2 ON T1.author_id = T2.id"
    pred = "SELECT book.title, author.name FROM author JOIN book ON author.id = book.author_id"
    report = evaluate([(gold, "lib")], [pred], tmp_path, workers=1)
    assert report.examples[0].exec == 1


def test_reordered_select_columns_score_one(db_dir: Path) -> None:
    result = evaluate_one(db_dir, "SELECT id, name, price FROM item", "SELECT price, id, name FROM item")
    assert result.exec == 1


def test_unparseable_prediction_records_an_error(db_dir: Path) -> None:
    result = evaluate_one(db_dir, "SELECT name FROM item", "SELECT name FROM WHERE")
    assert result.exec == 0
    assert result.error.startswith("parse/execution error:")


def test_refused_and_timed_out_predictions_score_zero(db_dir: Path) -> None:
    golds = [("SELECT name FROM item", "shop")] * 2
    preds = [
        "DELETE FROM item",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    ]
    report = evaluate(golds, preds, db_dir, workers=1, timeout_s=1)
    assert [e.exec for e in report.examples] == [0, 0]
    assert report.examples[0].error.startswith("refused:")
    assert report.examples[1].error == "timeout after 1.0s"


def test_failing_gold_is_an_error_naming_its_line(db_dir: Path) -> None:
    golds = [Gold("SELECT name FROM item", "shop", "gold.sql:1"), Gold("SELECT name FROM no_such_table", "shop", "gold.sql:2")]
    with pytest.raises(SqloraError) as info:
        evaluate(golds, ["SELECT name FROM item"] * 2, db_dir, workers=1)
    message = str(info.value)
    assert message.startswith("gold.sql:2: gold query fails on shop.sqlite: parse/execution error: no such table")
    assert "--skip-bad-gold" in message and "\n" not in message


def test_failing_gold_is_listed_and_left_out_when_allowed(db_dir: Path) -> None:
    golds = [Gold("SELECT name FROM item", "shop", "gold.sql:1"), Gold("SELECT name FROM no_such_table", "shop", "gold.sql:2")]
    report = evaluate(golds, ["SELECT name FROM item"] * 2, db_dir, workers=1, skip_bad_gold=True)
    assert [e.index for e in report.examples] == [0]
    assert report.summary["all"] == {"count": 1, "exec": 1.0}
    [skip] = report.skipped_bad_gold
    assert skip["index"] == 1 and skip["where"] == "gold.sql:2" and "no such table" in skip["error"]


def test_gold_the_hardness_parser_cannot_read_counts_in_all_only(db_dir: Path) -> None:
    # Runs in SQLite, but the parser gives up on it (a few CoSQL turns are like this).
    gold = 'SELECT name FROM item WHERE name LIKE "a%" ESCAPE "x"'
    report = evaluate([(gold, "shop")], ["SELECT name FROM item"], db_dir, workers=1)
    [result] = report.examples
    assert result.hardness == "unparsed" and result.exec == 0 and result.error is None
    assert report.summary["all"]["count"] == 1 and report.summary["easy"]["count"] == 0


def test_length_mismatch_raises(db_dir: Path) -> None:
    with pytest.raises(SqloraError, match="1 gold queries but 2 predictions"):
        evaluate([("SELECT 1", "shop")], ["SELECT 1", "SELECT 2"], db_dir, workers=1)


def test_missing_database_raises(db_dir: Path) -> None:
    golds = [("SELECT name FROM item", "shop"), ("SELECT 1", "ghost")]
    with pytest.raises(SqloraError) as info:
        evaluate(golds, ["SELECT name FROM item", "SELECT 1"], db_dir, workers=1)
    message = str(info.value)
    assert message.startswith("gold #2: no database for db_id 'ghost'")
    assert str(db_dir / "ghost" / "ghost.sqlite") in message and "\n" not in message


def test_missing_database_is_skipped_when_allowed(db_dir: Path) -> None:
    golds = [("SELECT name FROM item", "shop"), ("SELECT 1", "ghost"), ("SELECT id FROM item", "shop")]
    preds = ["SELECT name FROM item", "SELECT 1", "SELECT name FROM item"]
    report = evaluate(golds, preds, db_dir, workers=1, skip_missing_databases=True)
    assert report.skipped_missing_database == [1]
    assert [(e.index, e.exec) for e in report.examples] == [(0, 1), (2, 0)]
    assert report.summary["all"] == {"count": 2, "exec": 0.5}


def test_summary_and_json(db_dir: Path) -> None:
    golds = [
        ("SELECT name FROM item", "shop"),  # easy
        ("SELECT name, price FROM item WHERE price > 2", "shop"),  # medium
    ]
    report = evaluate(golds, ["SELECT name FROM item", "SELECT 1"], db_dir, workers=1)
    assert set(report.summary) == {*HARDNESS_LEVELS, "all"}
    assert report.summary["easy"] == {"count": 1, "exec": 1.0}
    assert report.summary["medium"] == {"count": 1, "exec": 0.0}
    assert report.summary["hard"] == {"count": 0, "exec": 0.0}
    assert report.summary["all"] == {"count": 2, "exec": 0.5}
    data = json.loads(json.dumps(report.to_json()))
    assert data["skipped_missing_database"] == [] and data["skipped_bad_gold"] == []
    assert data["examples"][1] == {
        "index": 1,
        "db_id": "shop",
        "hardness": "medium",
        "pred": "SELECT 1",
        "gold": "SELECT name, price FROM item WHERE price > 2",
        "exec": 0,
        "error": None,
        "exact": None,  # etype "exec": EM not scored
        "exact_error": None,
        "ves": None,
        "ts": None,  # no test suite: TS not scored
        "ts_failed_on": None,
    }


def mixed_examples() -> tuple[list[tuple[str, str]], list[str]]:
    golds = [
        ("SELECT name FROM item", "shop"),
        ("SELECT name, price FROM item ORDER BY price", "shop"),
        ("SELECT count(*) FROM item WHERE price > 2", "shop"),
        ("SELECT name FROM item", "shop"),  # same gold again: run once, used twice
        ("SELECT max(price) FROM item", "shop"),
        ("SELECT id FROM item WHERE name LIKE '%e%'", "shop"),
    ]
    preds = [
        "SELECT name FROM item ORDER BY id DESC",
        "SELECT price, name FROM item ORDER BY price",
        "SELECT count(*) FROM item",
        "SELECT nme FROM item",
        "SELECT price FROM item ORDER BY price DESC LIMIT 1",
        "DROP TABLE item",
    ]
    return golds, preds


def test_workers_give_identical_results(db_dir: Path) -> None:
    golds, preds = mixed_examples()
    sequential = evaluate(golds, preds, db_dir, workers=1)
    parallel = evaluate(golds, preds, db_dir, workers=2)
    assert parallel.to_json() == sequential.to_json()
    assert [e.exec for e in sequential.examples] == [1, 1, 0, 0, 1, 0]


_real_score_prediction = evaluation._score_prediction


def crash_on_marker(pairs, pred_sql, order_matters, timeout_s, as_sets):
    """Stands in for the per-prediction task inside worker processes: dies on a marked query."""
    if "CRASH_WORKER" in pred_sql:
        os._exit(1)
    return _real_score_prediction(pairs, pred_sql, order_matters, timeout_s, as_sets)


def test_a_crashing_worker_only_fails_its_own_example(db_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    golds, preds = mixed_examples()
    expected = evaluate(golds, preds, db_dir, workers=1).to_json()["examples"]
    preds = preds[:2] + ["SELECT 'CRASH_WORKER'"] + preds[3:]
    # Workers are spawned, so the stand-in must be importable there: it lives in this module.
    monkeypatch.setattr(evaluation, "_score_prediction", crash_on_marker)
    report = evaluate(golds, preds, db_dir, workers=2)
    got = report.to_json()["examples"]
    assert got[2]["exec"] == 0
    assert got[2]["error"] == "worker process crashed while running this query"
    assert got[:2] + got[3:] == expected[:2] + expected[3:]


# --- Spider dev ---------------------------------------------------------------------------


def test_spider_dev_gold_as_prediction_all_match(spider_dir: Path) -> None:
    examples = json.loads((spider_dir / "dev.json").read_text(encoding="utf-8"))
    golds = [(e["query"], e["db_id"]) for e in examples]
    report = evaluate(
        golds,
        [e["query"] for e in examples],
        spider_dir / "database",
        timeout_s=30.0,
        workers=2,
        skip_missing_databases=True,
    )
    assert isinstance(report, EvalReport)
    assert len(report.examples) == 972
    assert {examples[i]["db_id"] for i in report.skipped_missing_database} == {"wta_1"}
    failures = [(e.index, e.error) for e in report.examples if e.exec != 1]
    assert failures == []
    assert report.summary["all"] == {"count": 972, "exec": 1.0}


def test_bird_compares_sets_and_reports_by_difficulty(db_dir):
    golds = [("SELECT name FROM item WHERE price > 3", "shop"), ("SELECT name FROM item ORDER BY price", "shop")]
    preds = [
        "SELECT name FROM item WHERE price > 3 UNION ALL SELECT name FROM item WHERE price > 3",  # duplicates: same set
        "SELECT name FROM item ORDER BY price DESC",  # order ignored by BIRD
    ]
    report = evaluate(golds, preds, db_dir, workers=1, difficulties=["simple", "challenging"])
    assert [e.exec for e in report.examples] == [1, 1]
    assert [e.hardness for e in report.examples] == ["simple", "challenging"]
    assert set(report.summary) == {"simple", "moderate", "challenging", "all"}
    assert report.summary["moderate"]["count"] == 0 and report.summary["all"]["exec"] == 1.0
    # Spider semantics on the same pair: ORDER BY in the gold makes order count, duplicates count.
    spider = evaluate(golds, preds, db_dir, workers=1)
    assert [e.exec for e in spider.examples] == [0, 0]


def test_interaction_accuracy_needs_every_turn(db_dir):
    from sqlora.evaluate.execution import interaction_accuracy

    golds = [("SELECT name FROM item", "shop")] * 4
    preds = ["SELECT name FROM item", "SELECT name FROM item", "SELECT name FROM item", "SELECT id FROM item"]
    report = evaluate(golds, preds, db_dir, workers=1)
    accuracy = interaction_accuracy(report.examples, ["a", "a", "b", "b"])
    assert accuracy == {"questions": 4, "question_ex": 0.75, "interactions": 2, "interaction_ex": 0.5}


# --- options: EM only, test suites, the gold cache, VES ----------------------------------------

SHOP_TABLES = [
    {
        "db_id": "shop",
        "table_names_original": ["item"],
        "table_names": ["item"],
        "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [0, "price"]],
        "column_names": [[-1, "*"], [0, "id"], [0, "name"], [0, "price"]],
        "column_types": ["text", "number", "text", "number"],
        "primary_keys": [1],
        "foreign_keys": [],
    }
]


def test_match_only_executes_nothing(tmp_path: Path) -> None:
    tables = tmp_path / "tables.json"
    tables.write_text(json.dumps(SHOP_TABLES))
    golds = [("SELECT name FROM item WHERE price > 2", "shop"), ("SELECT name FROM item", "shop")]
    preds = ["SELECT name FROM item WHERE price > 5", "SELECT id FROM item"]  # values ignored by EM
    report = evaluate(golds, preds, tmp_path / "no-databases-here", etype="match", tables_json=tables)
    assert [(e.exact, e.exec) for e in report.examples] == [(1, None), (0, None)]
    assert report.summary["all"] == {"count": 2, "exact": 0.5}


def test_unknown_db_id_in_tables_json_names_the_line(tmp_path: Path) -> None:
    tables = tmp_path / "tables.json"
    tables.write_text(json.dumps(SHOP_TABLES))
    with pytest.raises(SqloraError, match=r"^gold.sql:3: unknown db_id 'ghost': not in "):
        evaluate([Gold("SELECT 1", "ghost", "gold.sql:3")], ["SELECT 1"], tmp_path, etype="match", tables_json=tables)


@pytest.mark.parametrize("key", ["table_names_original", "column_names_original", "foreign_keys"])
def test_malformed_tables_json_is_one_error_naming_the_file_and_key(tmp_path: Path, key: str) -> None:
    tables = tmp_path / "tables.json"
    tables.write_text(json.dumps([{k: v for k, v in SHOP_TABLES[0].items() if k != key}]))
    with pytest.raises(SqloraError) as err:
        evaluate([("SELECT name FROM item", "shop")], ["SELECT name FROM item"], tmp_path, etype="match", tables_json=tables)
    assert str(err.value) == f"{tables}[0]: missing key '{key}' (db_id 'shop')"


def test_a_test_suite_folder_must_match_on_every_database(db_dir: Path) -> None:
    # A second database beside shop.sqlite, where the two queries below differ.
    conn = sqlite3.connect(db_dir / "shop" / "shop_variant.sqlite")
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    conn.executemany("INSERT INTO item VALUES (?, ?, ?)", [(1, "apple", 3.0), (2, "bread", 8.0)])
    conn.commit()
    conn.close()
    gold = "SELECT name FROM item WHERE price > 2.5"
    assert evaluate_one(db_dir, gold, "SELECT name FROM item WHERE price > 2.5 AND price < 7").exec == 0
    assert evaluate_one(db_dir, gold, "SELECT name FROM item WHERE NOT price <= 2.5").exec == 1


def test_gold_results_are_cached_across_runs(db_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_run_query = evaluation.run_sql

    def counting_run_query(db_path, sql, timeout_s=30.0):
        calls.append(sql)
        return real_run_query(db_path, sql, timeout_s=timeout_s)

    monkeypatch.setattr(evaluation, "run_sql", counting_run_query)  # in-process with workers=1
    golds, preds = mixed_examples()
    gold_sqls = {sql for sql, _ in golds}
    cache = tmp_path / "gold-cache"
    first = evaluate(golds, preds, db_dir, workers=1, gold_cache=cache)
    assert len([sql for sql in calls if sql in gold_sqls]) == 5  # each distinct gold query once
    calls.clear()
    second = evaluate(golds, preds, db_dir, workers=1, gold_cache=cache)
    assert [sql for sql in calls if sql in gold_sqls] == [] and len(calls) == len(preds)
    assert second.to_json() == first.to_json()
    # A changed database file is a different key: its gold queries run again.
    calls.clear()
    db = db_dir / "shop" / "shop.sqlite"
    os.utime(db, ns=(db.stat().st_atime_ns, db.stat().st_mtime_ns + 10**9))
    evaluate(golds, preds, db_dir, workers=1, gold_cache=cache)
    assert len([sql for sql in calls if sql in gold_sqls]) == 5


def test_gold_results_cached_by_another_build_are_not_reused(db_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gold, pred = "SELECT name FROM item ORDER BY id", "SELECT name FROM item ORDER BY id"
    cache = tmp_path / "gold-cache"
    assert evaluate([(gold, "shop")], [pred], db_dir, workers=1, gold_cache=cache).examples[0].exec == 1
    # What an older build computed and cached differently: results this build would never produce.
    [entry] = cache.rglob("*.pickle")
    entry.write_bytes(pickle.dumps(evaluation.QueryResult(rows=[("stale",)], error=None)))
    assert evaluate([(gold, "shop")], [pred], db_dir, workers=1, gold_cache=cache).examples[0].exec == 0  # read back
    monkeypatch.setattr(evaluation, "GOLD_CACHE_VERSION", evaluation.GOLD_CACHE_VERSION + 1)
    assert evaluate([(gold, "shop")], [pred], db_dir, workers=1, gold_cache=cache).examples[0].exec == 1
    assert len(list(cache.rglob("*.pickle"))) == 2


def test_invalid_utf8_results_compare(tmp_path: Path) -> None:
    path = tmp_path / "notes" / "notes.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE note (id INTEGER, body TEXT)")
    conn.execute("INSERT INTO note VALUES (1, CAST(X'4F4BFF21' AS TEXT)), (2, 'fine')")
    conn.commit()
    conn.close()
    golds = [("SELECT body FROM note WHERE id = 1", "notes")] * 2
    report = evaluate(golds, ["SELECT body FROM note WHERE id < 2", "SELECT body FROM note"], tmp_path, workers=1)
    assert [e.exec for e in report.examples] == [1, 0]


def test_ves_rewards_correct_and_fast_predictions(db_dir: Path) -> None:
    gold = "SELECT name FROM item WHERE id = 2"
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) "
        "SELECT name FROM item WHERE id = 2 AND (SELECT count(*) FROM c) > 0"
    )
    preds = [gold, slow, "SELECT name FROM item WHERE id = 3"]
    report = evaluate([(gold, "shop")] * 3, preds, db_dir, workers=1, difficulties=["simple"] * 3, ves_iterations=5)
    same, slower, wrong = (e.ves for e in report.examples)
    assert wrong == 0.0 and [e.exec for e in report.examples] == [1, 1, 0]
    assert 0 < slower < 0.5 < same  # a prediction 100x slower earns about sqrt(1/100)
    assert report.summary["all"]["ves"] == pytest.approx(100 * (same + slower) / 3)


# --- untrusted predictions ----------------------------------------------------------------------

ADVERSARIAL = [
    "DROP TABLE item",
    "DELETE FROM item",
    "UPDATE item SET price = 0",
    "INSERT INTO item VALUES (99, 'x', 1.0)",
    "ATTACH DATABASE 'evil.sqlite' AS evil",
    "PRAGMA writable_schema = ON",
    "VACUUM INTO 'copy.sqlite'",
    "SELECT load_extension('libevil')",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    # 10^12 rows: six copies of a 100-row table.
    "WITH h(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM h WHERE x < 100) SELECT count(*) FROM h a, h b, h c, h d, h e, h f",
    "",
    "SELECT " + " + ".join(["price"] * 200_000) + " FROM item",  # 1.6 MB of SQL
    "\x00\x01\x02\xfe\xff garbage \x7f",
]


def test_adversarial_predictions_score_zero_and_leave_the_database_alone(db_dir: Path) -> None:
    db = db_dir / "shop" / "shop.sqlite"
    before = db.read_bytes()
    files_before = sorted(p.name for p in db.parent.iterdir())
    golds = [("SELECT count(*) FROM item", "shop")] * len(ADVERSARIAL)
    report = evaluate(golds, ADVERSARIAL, db_dir, workers=2, timeout_s=1)
    assert [e.exec for e in report.examples] == [0] * len(ADVERSARIAL)
    errors = [e.error for e in report.examples]
    assert all(error for error in errors), errors
    assert errors[8] == errors[9] == "timeout after 1.0s"
    assert all(error.startswith("refused:") for error in errors[:8]), errors[:8]
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == files_before


def test_only_the_first_statement_runs_as_officially(db_dir: Path) -> None:
    db = db_dir / "shop" / "shop.sqlite"
    before = db.read_bytes()
    assert evaluate_one(db_dir, "SELECT name FROM item", "SELECT name FROM item; DROP TABLE item").exec == 1
    assert evaluate_one(db_dir, "SELECT name FROM item", "SELECT id FROM item; SELECT name FROM item").exec == 0
    assert db.read_bytes() == before


def test_error_breakdown_names_why_answers_are_wrong(tmp_path):
    """The sandbox's own error texts, sorted into the breakdown metrics/eval.json reports."""
    import sqlite3

    from sqlora.evaluate.error_kinds import error_breakdown, error_kind
    from sqlora.evaluate.execution import ExampleResult
    from sqlora.sql.sandbox import run_query

    db = tmp_path / "d.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript("CREATE TABLE t (a INT, b INT); CREATE TABLE u (a INT); INSERT INTO t VALUES (1, 2);")
    cases = {
        "SELECT nope FROM t": "no_such_column",
        "SELECT t.nope FROM t": "no_such_column",
        "SELECT a FROM ghost": "no_such_table",
        "SELEC a FROM t": "does_not_parse",
        "SELECT a FROM t WHERE": "does_not_parse",
        "SELECT 'a FROM t": "does_not_parse",
        "": "does_not_parse",
        "SELECT a FROM t JOIN u": "other_error",  # ambiguous column name
        "DELETE FROM t": "other_error",  # refused
    }
    examples = []
    for sql, kind in cases.items():
        result = run_query(db, sql)
        assert not result.ok, sql
        example = ExampleResult(index=0, db_id="d", hardness="easy", pred=sql, gold="", exec=0, error=result.error)
        assert error_kind(example) == kind, (sql, result.error)
        examples.append(example)
    examples += [
        ExampleResult(index=0, db_id="d", hardness="easy", pred="SELECT b FROM t", gold="", exec=0, error=None),
        ExampleResult(index=0, db_id="d", hardness="easy", pred="SELECT a FROM t", gold="", exec=1, error=None),
    ]
    assert error_kind(examples[-1]) is None
    assert error_breakdown(examples) == {
        "no_such_column": 2,
        "no_such_table": 1,
        "does_not_parse": 4,
        "other_error": 2,
        "wrong_rows": 1,
    }
