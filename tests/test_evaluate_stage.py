"""The evaluate stage on prepared records of each kind of dataset (no model needed)."""

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.fixture()
def workdir(tmp_path) -> Path:
    db = tmp_path / "dbs" / "shop" / "shop.sqlite"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO item VALUES (1, 'a'), (2, 'b'), (3, 'b');")
    conn.commit()
    conn.close()
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "tables.json").write_text(
        json.dumps(
            [
                {
                    "db_id": "shop",
                    "table_names_original": ["item"],
                    "table_names": ["item"],
                    "column_names_original": [[-1, "*"], [0, "id"], [0, "name"]],
                    "column_names": [[-1, "*"], [0, "id"], [0, "name"]],
                    "column_types": ["text", "number", "text"],
                    "primary_keys": [1],
                    "foreign_keys": [],
                }
            ]
        )
    )
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "predictions").mkdir()
    return tmp_path


def run_stage(workdir: Path, dataset: str, records: list[dict], preds: list[str]) -> dict:
    (workdir / "data/prepared/dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (workdir / "data/prepared/meta.json").write_text(
        json.dumps({"dataset": dataset, "database_dir": str(workdir / "dbs"), "tables_json": str(workdir / "tables.json")})
    )
    (workdir / "predictions/dev.sql").write_text("".join(p + "\n" for p in preds))
    result = subprocess.run([sys.executable, str(REPO / "stages/evaluate.py")], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads((workdir / "metrics/eval.json").read_text())


def record(output: str, **extra) -> dict:
    return {"db_id": "shop", "instruction": "schema", "input": "q", "output": output, **extra}


@pytest.mark.slow
def test_bird_by_difficulty(workdir):
    metrics = run_stage(
        workdir,
        "bird",
        [record("SELECT DISTINCT name FROM item", difficulty="simple"), record("SELECT id FROM item", difficulty="moderate")],
        ["SELECT name FROM item", "SELECT name FROM item"],
    )
    assert metrics["ex"] == {"simple": 1.0, "moderate": 0.0, "challenging": 0.0, "all": 0.5}
    assert metrics["count"]["challenging"] == 0 and "em" not in metrics
    assert metrics["errors"] == {"no_such_column": 0, "no_such_table": 0, "does_not_parse": 0, "other_error": 0, "wrong_rows": 1}


@pytest.mark.slow
def test_error_breakdown_in_the_metrics(workdir):
    records = [record("SELECT name FROM item")] * 5
    preds = ["SELECT name FROM item", "SELECT nme FROM item", "SELECT name FROM items", "SELECT name FROM", "SELECT id FROM item"]
    metrics = run_stage(workdir, "spider", records, preds)
    assert metrics["errors"] == {"no_such_column": 1, "no_such_table": 1, "does_not_parse": 1, "other_error": 0, "wrong_rows": 1}


@pytest.mark.slow
def test_multiturn_interaction_accuracy(workdir):
    records = [
        record("SELECT name FROM item", interaction_id="0", turn=0),
        record("SELECT id FROM item", interaction_id="0", turn=1),
        record("SELECT id FROM item", interaction_id="1", turn=0),
    ]
    metrics = run_stage(workdir, "sparc", records, ["SELECT name FROM item", "SELECT name FROM item", "SELECT id FROM item"])
    assert metrics["ex"]["all"] == pytest.approx(2 / 3, abs=1e-4)
    assert metrics["interactions"] == 2 and metrics["interaction_ex"] == 0.5
    assert metrics["em"]["all"] == pytest.approx(2 / 3, abs=1e-4)  # the same two predictions match exactly


def test_prediction_count_mismatch_is_one_line(workdir):
    (workdir / "data/prepared/dev.jsonl").write_text(json.dumps(record("SELECT 1")) + "\n")
    (workdir / "data/prepared/meta.json").write_text(
        json.dumps({"dataset": "spider", "database_dir": str(workdir / "dbs"), "tables_json": str(workdir / "tables.json")})
    )
    (workdir / "predictions/dev.sql").write_text("SELECT 1\nSELECT 2\n")
    result = subprocess.run([sys.executable, str(REPO / "stages/evaluate.py")], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: predictions/dev.sql: 2 predictions for 1 gold queries"
    assert not (workdir / "metrics/eval.json").exists()


BAD_META = [  # data/prepared/meta.json as a stage may find it, and the one line it stops with
    ('{"dataset": ', "data/prepared/meta.json: invalid JSON at line 1 column 13 (Expecting value)"),
    ("[]", "data/prepared/meta.json: expected a JSON object, got list; rerun the prepare stage"),
    ('{"dataset": "spider", "database_dir": "dbs"}', "data/prepared/meta.json: missing key 'tables_json'; rerun the prepare stage"),
    (
        '{"dataset": "spider", "database_dir": 7, "tables_json": "t.json"}',
        "data/prepared/meta.json: 'database_dir' must be a string, got 7",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("text, message", BAD_META)
def test_a_bad_meta_json_is_one_line(workdir, text, message):
    (workdir / "data/prepared/dev.jsonl").write_text(json.dumps(record("SELECT 1")) + "\n")
    (workdir / "data/prepared/meta.json").write_text(text)
    (workdir / "predictions/dev.sql").write_text("SELECT 1\n")
    result = subprocess.run([sys.executable, str(REPO / "stages/evaluate.py")], cwd=workdir, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n")
    assert not (workdir / "metrics").exists()
