"""data.dataset custom: a folder of SQLite databases and train/dev questions (.jsonl or .csv), no tables.json."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from sqlora.data.layouts import load_schemas, load_split
from sqlora.data.schema import read_sqlite_schema
from sqlora.errors import SqloraError
from sqlora.evaluate.exact_match import exact_match
from sqlora.sql.hardness import spider_hardness
from tests.helpers import SQLORA

SHOP = """
CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT, city TEXT);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customer(id), total REAL, day TEXT);
INSERT INTO customer VALUES (1, 'Ann', 'Oslo'), (2, 'Bo', 'Rome');
INSERT INTO orders VALUES (1, 1, 9.5, '2023-01-02'), (2, 1, 20, '2024-03-04'), (3, 2, 7, '2023-05-06');
"""
ZOO = "CREATE TABLE animal (name TEXT PRIMARY KEY, legs INTEGER); INSERT INTO animal VALUES ('cat', 4), ('bird', 2);"
SCHOOL = "CREATE TABLE pupil (id INTEGER PRIMARY KEY, age INTEGER); INSERT INTO pupil VALUES (1, 9), (2, 10);"


def make_db(path: Path, script: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.commit()
    conn.close()


def questions(n: int = 4) -> list[dict]:
    base = [
        {"question": "How many customers are there?", "sql": "SELECT count(*) FROM customer", "db_id": "shop"},
        {
            "question": "Total of each customer's orders?",
            "sql": "SELECT T1.name, sum(T2.total) FROM customer AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id GROUP BY T1.name",
            "db_id": "shop",
        },
        {"question": "Which animals have four legs?", "sql": "SELECT name FROM animal WHERE legs = 4", "db_id": "zoo"},
        {"question": "How old is the oldest pupil?", "sql": "SELECT max(age) FROM pupil", "db_id": "school"},
    ]
    return base[:n]


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Databases in both layouts; train.jsonl and dev.csv."""
    root = tmp_path / "mine"
    make_db(root / "shop.sqlite", SHOP)
    make_db(root / "database/zoo/zoo.sqlite", ZOO)
    make_db(root / "school.sqlite", SCHOOL)
    (root / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions()))
    with open(root / "dev.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "sql", "db_id"])
        writer.writeheader()
        writer.writerows(questions(3)[1:])
    return root


def test_schemas_come_from_the_databases_and_tables_json_is_written(folder, tmp_path):
    split = load_split("custom", folder, "train", work_dir=tmp_path / "work")
    assert [e.question for e in split.examples] == [q["question"] for q in questions()]
    assert split.examples[1].query.startswith("SELECT T1.name, sum(T2.total) FROM customer")
    assert set(split.schemas) == {"shop", "zoo", "school"}
    written = load_schemas(split.tables_json)  # a Spider tables.json that reads back as the same schemas
    assert written == split.schemas == {db: read_sqlite_schema(split.database_path(db), db) for db in split.schemas}
    shop = written["shop"]
    assert shop.tables == ["customer", "orders"] and shop.foreign_keys == [(5, 1)] and shop.primary_keys == [(1,), (4,)]
    assert split.database_path("zoo").resolve() == (folder / "database/zoo/zoo.sqlite").resolve()
    # EM and hardness work as on Spider, from the written tables.json
    gold = split.examples[1].query
    assert exact_match(gold, gold, shop)[0] and spider_hardness(gold) == "medium"


def test_dev_from_a_csv_file(folder, tmp_path):
    dev = load_split("custom", folder, "dev", work_dir=tmp_path / "work")
    assert [e.db_id for e in dev.examples] == ["shop", "zoo"]


def test_without_a_dev_file_whole_databases_are_held_out(folder, tmp_path, capsys):
    (folder / "dev.csv").unlink()
    train = load_split("custom", folder, "train", work_dir=tmp_path / "a")
    dev = load_split("custom", folder, "dev", work_dir=tmp_path / "b")
    assert "dev holds out the databases" in capsys.readouterr().err
    assert dev.examples and train.examples
    assert not {e.db_id for e in train.examples} & {e.db_id for e in dev.examples}  # whole databases
    assert sorted(e.question for e in train.examples + dev.examples) == sorted(q["question"] for q in questions())
    again = load_split("custom", folder, "dev", work_dir=tmp_path / "c")
    assert again.examples == dev.examples  # seeded: the same every time


def test_one_database_holds_out_a_fraction_of_the_questions(tmp_path, capsys):
    root = tmp_path / "one"
    make_db(root / "shop.sqlite", SHOP)
    qs = [dict(questions(1)[0], question=f"q{i}") for i in range(10)]
    (root / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    dev = load_split("custom", root, "dev", work_dir=tmp_path / "w")
    train = load_split("custom", root, "train", work_dir=tmp_path / "v")
    assert len(dev.examples) == 2 and len(train.examples) == 8
    assert "dev holds out 2 of the 10 questions" in capsys.readouterr().err


def test_a_failing_gold_query_names_file_and_line(folder, tmp_path):
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"question": "x", "sql": "SELECT wings FROM animal", "db_id": "zoo"})
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SqloraError, match=r"train\.jsonl:3: the gold query fails on zoo: .*no such column: wings"):
        load_split("custom", folder, "train", work_dir=tmp_path / "w")
    split = load_split("custom", folder, "train", work_dir=tmp_path / "w", skip_bad=True)
    assert len(split.examples) == 3 and len(split.problems) == 1 and "train.jsonl:3" in split.problems[0]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"question": "x", "sql": "SELECT 1", "db_id": "nowhere"}, "db_id 'nowhere' has no database"),
        ({"question": "", "sql": "SELECT 1", "db_id": "shop"}, "missing or empty 'question'"),
        ({"question": "x", "db_id": "shop"}, "missing or empty 'sql'"),
    ],
)
def test_bad_records_are_one_line(folder, tmp_path, record, message):
    (folder / "dev.csv").unlink()
    (folder / "dev.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(SqloraError, match=rf"dev\.jsonl:1: {message}"):
        load_split("custom", folder, "dev", work_dir=tmp_path / "w")


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SqloraError, match="no SQLite databases"):
        load_split("custom", tmp_path / "empty", "train", work_dir=tmp_path / "w")
    make_db(tmp_path / "noq/shop.sqlite", SHOP)
    with pytest.raises(SqloraError, match="no dev.jsonl or dev.csv, and no train.jsonl or train.csv"):
        load_split("custom", tmp_path / "noq", "dev", work_dir=tmp_path / "w")
    make_db(tmp_path / "csv/shop.sqlite", SHOP)
    (tmp_path / "csv/train.csv").write_text("q,sql,db_id\nx,SELECT 1,shop\n")
    with pytest.raises(SqloraError, match=r"train\.csv:1: the header lacks question"):
        load_split("custom", tmp_path / "csv", "train", work_dir=tmp_path / "w")


def test_sqlora_prepare_custom(folder, tmp_path):
    out = tmp_path / "dev.jsonl"
    result = subprocess.run(
        SQLORA + ["prepare", "--dataset", "custom", "--source", str(folder), "--split", "dev", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["db_id"] for r in records] == ["shop", "zoo"]
    assert "customer" in records[0]["instruction"] and records[0]["output"].startswith("SELECT T1.name")
