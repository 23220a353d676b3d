import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

import sqlora.evaluation as evaluation
from sqlora.evaluation import (
    HARDNESS_LEVELS,
    EvalReport,
    ExampleResult,
    evaluate_execution,
    execution_match,
    results_match,
)

SPIDER = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "spider"


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
    report = evaluate_execution([(gold, "shop")], [pred], db_dir, workers=1, **kwargs)
    assert report.summary["all"]["count"] == 1
    return report.examples[0]


def test_gold_as_prediction_scores_one(db_dir: Path) -> None:
    golds = [
        ("SELECT name FROM item WHERE price > 2.5", "shop"),
        ("SELECT name, price FROM item ORDER BY price DESC", "shop"),
        ("SELECT count(*) FROM item", "shop"),
    ]
    report = evaluate_execution(golds, [g for g, _ in golds], db_dir, workers=1)
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


def test_order_by_inside_a_subquery_does_not_fix_the_row_order(db_dir: Path) -> None:
    gold = "SELECT name FROM item WHERE price < (SELECT price FROM item ORDER BY price DESC LIMIT 1)"
    pred = "SELECT name FROM item WHERE price < 9 ORDER BY name DESC"
    assert evaluate_one(db_dir, gold, pred).exec == 1


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
    report = evaluate_execution(golds, preds, db_dir, workers=1, timeout_s=1)
    assert [e.exec for e in report.examples] == [0, 0]
    assert report.examples[0].error.startswith("refused:")
    assert report.examples[1].error == "timeout after 1.0s"


def test_failing_gold_is_recorded_as_a_data_error(db_dir: Path) -> None:
    result = evaluate_one(db_dir, "SELECT name FROM no_such_table", "SELECT name FROM item")
    assert result.exec == 0
    assert result.error.startswith("gold failed: parse/execution error:")


def test_unparseable_gold_is_unparsed_and_scores_zero(db_dir: Path) -> None:
    report = evaluate_execution([("SELECT name FROM WHERE", "shop")], ["SELECT name FROM item"], db_dir, workers=1)
    [result] = report.examples
    assert result.hardness == "unparsed" and result.exec == 0 and result.error.startswith("gold failed:")
    assert report.summary["all"]["count"] == 1 and report.summary["easy"]["count"] == 0


def test_length_mismatch_raises(db_dir: Path) -> None:
    with pytest.raises(ValueError, match="1 gold queries but 2 predictions"):
        evaluate_execution([("SELECT 1", "shop")], ["SELECT 1", "SELECT 2"], db_dir, workers=1)


def test_missing_database_raises(db_dir: Path) -> None:
    golds = [("SELECT name FROM item", "shop"), ("SELECT 1", "ghost")]
    with pytest.raises(FileNotFoundError) as info:
        evaluate_execution(golds, ["SELECT name FROM item", "SELECT 1"], db_dir, workers=1)
    message = str(info.value)
    assert "'ghost'" in message and str(db_dir / "ghost" / "ghost.sqlite") in message
    assert "\n" not in message


def test_missing_database_is_skipped_when_allowed(db_dir: Path) -> None:
    golds = [("SELECT name FROM item", "shop"), ("SELECT 1", "ghost"), ("SELECT id FROM item", "shop")]
    preds = ["SELECT name FROM item", "SELECT 1", "SELECT name FROM item"]
    report = evaluate_execution(golds, preds, db_dir, workers=1, skip_missing_databases=True)
    assert report.skipped == [1]
    assert [(e.index, e.exec) for e in report.examples] == [(0, 1), (2, 0)]
    assert report.summary["all"] == {"count": 2, "exec": 0.5}


def test_summary_and_json(db_dir: Path) -> None:
    golds = [
        ("SELECT name FROM item", "shop"),  # easy
        ("SELECT name, price FROM item WHERE price > 2", "shop"),  # medium
    ]
    report = evaluate_execution(golds, ["SELECT name FROM item", "SELECT 1"], db_dir, workers=1)
    assert set(report.summary) == {*HARDNESS_LEVELS, "all"}
    assert report.summary["easy"] == {"count": 1, "exec": 1.0}
    assert report.summary["medium"] == {"count": 1, "exec": 0.0}
    assert report.summary["hard"] == {"count": 0, "exec": 0.0}
    assert report.summary["all"] == {"count": 2, "exec": 0.5}
    data = json.loads(json.dumps(report.to_json()))
    assert data["skipped"] == []
    assert data["examples"][1] == {
        "index": 1,
        "db_id": "shop",
        "hardness": "medium",
        "pred": "SELECT 1",
        "gold": "SELECT name, price FROM item WHERE price > 2",
        "exec": 0,
        "error": None,
        "exact": None,  # EM is added by add_exact_match
        "exact_error": None,
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
    sequential = evaluate_execution(golds, preds, db_dir, workers=1)
    parallel = evaluate_execution(golds, preds, db_dir, workers=2)
    assert parallel.to_json() == sequential.to_json()
    assert [e.exec for e in sequential.examples] == [1, 1, 0, 0, 1, 0]


def test_execution_match(db_dir: Path) -> None:
    db = db_dir / "shop" / "shop.sqlite"
    assert execution_match(db, "SELECT name, id FROM item", "SELECT id, name FROM item") == (True, None)
    assert execution_match(db, "SELECT id FROM item", "SELECT name FROM item") == (False, None)
    matched, error = execution_match(db, "SELECT 1", "SELECT x FROM nowhere")
    assert not matched and error.startswith("gold failed:")


_real_run_and_compare = evaluation._run_and_compare


def crash_on_marker(db_path, pred_sql, gold, order_matters, timeout_s, as_sets=False):
    """Stands in for the per-prediction task inside worker processes: dies on a marked query."""
    if "CRASH_WORKER" in pred_sql:
        os._exit(1)
    return _real_run_and_compare(db_path, pred_sql, gold, order_matters, timeout_s, as_sets)


def test_a_crashing_worker_only_fails_its_own_example(db_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    golds, preds = mixed_examples()
    expected = evaluate_execution(golds, preds, db_dir, workers=1).to_json()["examples"]
    preds = preds[:2] + ["SELECT 'CRASH_WORKER'"] + preds[3:]
    # Workers are spawned, so the stand-in must be importable there: it lives in this module.
    monkeypatch.setattr(evaluation, "_run_and_compare", crash_on_marker)
    report = evaluate_execution(golds, preds, db_dir, workers=2)
    got = report.to_json()["examples"]
    assert got[2]["exec"] == 0
    assert got[2]["error"] == "worker process crashed while running this query"
    assert got[:2] + got[3:] == expected[:2] + expected[3:]


# --- Spider dev ---------------------------------------------------------------------------


def test_spider_dev_gold_as_prediction_all_match() -> None:
    if not (SPIDER / "dev.json").is_file():
        pytest.skip(f"Spider data not found at {SPIDER}")
    examples = json.loads((SPIDER / "dev.json").read_text(encoding="utf-8"))
    golds = [(e["query"], e["db_id"]) for e in examples]
    report = evaluate_execution(
        golds, [e["query"] for e in examples], SPIDER / "database",
        timeout_s=30.0, workers=2, skip_missing_databases=True,
    )
    assert isinstance(report, EvalReport)
    assert len(report.examples) == 972
    assert {examples[i]["db_id"] for i in report.skipped} == {"wta_1"}
    failures = [(e.index, e.error) for e in report.examples if e.exec != 1]
    assert failures == []
    assert report.summary["all"] == {"count": 972, "exec": 1.0}


def test_bird_compares_sets_and_reports_by_difficulty(db_dir):
    golds = [("SELECT name FROM item WHERE price > 3", "shop"), ("SELECT name FROM item ORDER BY price", "shop")]
    preds = [
        "SELECT name FROM item WHERE price > 3 UNION ALL SELECT name FROM item WHERE price > 3",  # duplicates: same set
        "SELECT name FROM item ORDER BY price DESC",  # order ignored by BIRD
    ]
    report = evaluate_execution(golds, preds, db_dir, workers=1, difficulties=["simple", "challenging"])
    assert [e.exec for e in report.examples] == [1, 1]
    assert [e.hardness for e in report.examples] == ["simple", "challenging"]
    assert set(report.summary) == {"simple", "moderate", "challenging", "all"}
    assert report.summary["moderate"]["count"] == 0 and report.summary["all"]["exec"] == 1.0
    # Spider semantics on the same pair: ORDER BY in the gold makes order count, duplicates count.
    spider = evaluate_execution(golds, preds, db_dir, workers=1)
    assert [e.exec for e in spider.examples] == [0, 0]


def test_interaction_accuracy_needs_every_turn(db_dir):
    from sqlora.evaluation import interaction_accuracy

    golds = [("SELECT name FROM item", "shop")] * 4
    preds = ["SELECT name FROM item", "SELECT name FROM item", "SELECT name FROM item", "SELECT id FROM item"]
    report = evaluate_execution(golds, preds, db_dir, workers=1)
    accuracy = interaction_accuracy(report.examples, ["a", "a", "b", "b"])
    assert accuracy == {"questions": 4, "question_ex": 0.75, "interactions": 2, "interaction_ex": 0.5}
