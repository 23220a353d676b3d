"""The embedded sample dataset: Spider layout, determinism, executable gold SQL, atomic writes."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import sqlora.data.sample.database
from sqlora.data.sample import generate_sample
from sqlora.data.sample.templates import TEMPLATES

KEYWORDS = ("JOIN", "GROUP BY", "HAVING", "ORDER BY", "LIMIT", "INTERSECT", "EXCEPT", "UNION", "(SELECT")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sample") / "data"
    return out, generate_sample(out, seed=0)


def load(folder: Path, name: str):
    return json.loads((folder / name).read_text(encoding="utf-8"))


def connect(folder: Path, db_id: str) -> sqlite3.Connection:
    return sqlite3.connect(folder / "database" / db_id / f"{db_id}.sqlite")


def examples(folder: Path) -> list[tuple[str, dict]]:
    return [(split, e) for split in ("train", "dev") for e in load(folder, f"{split}.json")]


def dump(folder: Path) -> dict[str, list]:
    """Every row of every table of every database, in rowid order."""
    out = {}
    for path in sorted((folder / "database").glob("*/*.sqlite")):
        conn = sqlite3.connect(path)
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for table in tables:
            out[f"{path.stem}.{table}"] = conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall()
        conn.close()
    return out


def test_counts_splits_and_layout(sample):
    folder, counts = sample
    train, dev = load(folder, "train.json"), load(folder, "dev.json")
    assert counts["train"] == len(train) and 600 <= len(train) <= 1500
    assert counts["dev"] == len(dev) and 150 <= len(dev) <= 300
    train_dbs, dev_dbs = {e["db_id"] for e in train}, {e["db_id"] for e in dev}
    assert not train_dbs & dev_dbs
    assert len(train_dbs | dev_dbs) == counts["databases"] >= 10
    assert {s["db_id"] for s in load(folder, "tables.json")} == train_dbs | dev_dbs
    for db_id in train_dbs | dev_dbs:
        assert (folder / "database" / db_id / f"{db_id}.sqlite").is_file()
        assert "CREATE TABLE" in (folder / "database" / db_id / "schema.sql").read_text()
    for split, records in (("train", train), ("dev", dev)):
        assert all(list(e) == ["db_id", "query", "question"] for e in records)
        gold = (folder / f"{split}_gold.sql").read_text(encoding="utf-8").splitlines()
        assert gold == [f"{e['query']}\t{e['db_id']}" for e in records]
        pairs = [(e["db_id"], e["question"]) for e in records]
        assert len(pairs) == len(set(pairs))


def test_same_seed_same_bytes(sample, tmp_path):
    folder, _ = sample
    again = tmp_path / "again"
    generate_sample(again, seed=0)
    for name in ("train.json", "dev.json", "tables.json", "train_gold.sql", "dev_gold.sql"):
        assert (folder / name).read_bytes() == (again / name).read_bytes(), name
    assert dump(folder) == dump(again)


def test_tables_json_matches_databases(sample):
    folder, _ = sample
    for schema in load(folder, "tables.json"):
        tables = schema["table_names_original"]
        columns = schema["column_names_original"]
        assert columns[0] == [-1, "*"] and schema["column_names"][0] == [-1, "*"]
        assert len(schema["column_names"]) == len(columns) == len(schema["column_types"])
        assert len(schema["table_names"]) == len(tables)
        assert set(schema["column_types"]) <= {"text", "number", "time", "boolean", "others"}
        conn = connect(folder, schema["db_id"])
        in_db = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid")]
        assert in_db == tables
        declared_keys = set()
        for key in schema["primary_keys"]:
            declared_keys |= set(key) if isinstance(key, list) else {key}
        for t, table in enumerate(tables):
            info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
            assert [r[1] for r in info] == [name for ti, name in columns if ti == t]
            pk_in_db = {(table, r[1]) for r in info if r[5]}
            pk_declared = {(tables[columns[i][0]], columns[i][1]) for i in declared_keys if columns[i][0] == t}
            assert pk_in_db == pk_declared, table
            fks_in_db = {(table, r[3], r[2], r[4]) for r in conn.execute(f'PRAGMA foreign_key_list("{table}")')}
            fks_declared = {
                (table, columns[a][1], tables[columns[b][0]], columns[b][1]) for a, b in schema["foreign_keys"] if columns[a][0] == t
            }
            assert fks_in_db == fks_declared, table
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        for table in tables:
            assert 15 <= conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] <= 150
        conn.close()


def test_composite_primary_key_is_nested(sample):
    folder, _ = sample
    nested = [k for s in load(folder, "tables.json") for k in s["primary_keys"] if isinstance(k, list)]
    assert nested and all(len(k) >= 2 and all(isinstance(i, int) for i in k) for k in nested)


def test_gold_queries_run_and_return_rows(sample):
    folder, _ = sample
    conns: dict[str, sqlite3.Connection] = {}
    for _, e in examples(folder):
        conn = conns.setdefault(e["db_id"], connect(folder, e["db_id"]))
        assert conn.execute(e["query"]).fetchall(), e["query"]
        assert not e["query"].endswith(";")


ORDER_LIMIT = re.compile(r"^SELECT (?:DISTINCT )?.+? FROM (.+) ORDER BY (.+?)(?: (ASC|DESC))? LIMIT (\d+)$")


def test_order_by_limit_has_no_tie_at_the_boundary(sample):
    folder, _ = sample
    checked = 0
    for _, e in examples(folder):
        m = ORDER_LIMIT.match(e["query"])
        if not m:
            continue
        rest, key, direction, k = m[1], m[2], m[3] or "ASC", int(m[4])
        conn = connect(folder, e["db_id"])
        keys = [r[0] for r in conn.execute(f"SELECT {key} FROM {rest} ORDER BY {key} {direction} LIMIT {k + 1}")]
        conn.close()
        assert len(keys) < k + 1 or keys[k - 1] != keys[k], e["query"]
        checked += 1
    assert checked > 50


def test_literals_come_from_the_question(sample):
    folder, _ = sample
    for _, e in examples(folder):
        query = re.sub(r" LIMIT \d+$", "", e["query"])
        for literal in re.findall(r'"([^"]*)"', query):
            assert literal.strip("%") in e["question"], e
        for number in re.findall(r"(?:[<>=]|BETWEEN|AND) (-?\d+(?:\.\d+)?)\b", re.sub(r'"[^"]*"', '""', query)):
            assert number in e["question"], e


def test_every_keyword_in_both_splits(sample):
    folder, _ = sample
    for split in ("train", "dev"):
        queries = [e["query"] for e in load(folder, f"{split}.json")]
        for keyword in KEYWORDS:
            assert any(keyword in q for q in queries), (split, keyword)


def test_several_phrasings_per_question_type(sample):
    folder, _ = sample
    assert all(len(t.phrasings) >= 3 for t in TEMPLATES)
    # In the data: "SELECT count(*) FROM t" is asked in at least three different ways.
    openings = {
        " ".join(e["question"].split()[:2]) for _, e in examples(folder) if re.fullmatch(r"SELECT count\(\*\) FROM \w+", e["query"])
    }
    assert len(openings) >= 3, openings


def test_hardness_levels_are_all_well_represented(sample):
    pytest.importorskip("sqlglot")
    from sqlora.sql.hardness import spider_hardness

    folder, _ = sample
    for split in ("train", "dev"):
        levels = Counter(spider_hardness(e["query"]) for e in load(folder, f"{split}.json"))
        total = sum(levels.values())
        share = {level: levels[level] / total for level in ("easy", "medium", "hard", "extra")}
        assert 0.20 <= share["easy"] <= 0.40, share
        assert 0.25 <= share["medium"] <= 0.45, share
        assert 0.10 <= share["hard"] <= 0.25, share
        assert 0.08 <= share["extra"] <= 0.25, share


def test_no_template_dominates(sample):
    folder, _ = sample
    per_db: dict[str, Counter] = defaultdict(Counter)
    for _, e in examples(folder):
        # The query with its literals blanked is a fair proxy for "the same question type".
        per_db[e["db_id"]][re.sub(r'"[^"]*"|\b\d+(\.\d+)?\b', "?", e["query"])] += 1
    for db_id, shapes in per_db.items():
        assert shapes.most_common(1)[0][1] <= 0.1 * sum(shapes.values()), (db_id, shapes.most_common(3))


def _fail_on_third_database(monkeypatch):
    real = sqlora.data.sample.database.write_database
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(sqlora.data.sample.database, "write_database", flaky)


def test_failed_generation_leaves_no_output(tmp_path, monkeypatch):
    _fail_on_third_database(monkeypatch)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_sample(tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_failed_generation_keeps_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "data"
    out.mkdir()
    (out / "marker.txt").write_text("previous")
    _fail_on_third_database(monkeypatch)
    with pytest.raises(RuntimeError):
        generate_sample(out)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert [p.name for p in out.iterdir()] == ["marker.txt"]


def test_success_replaces_previous_output(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "marker.txt").write_text("previous")
    generate_sample(out, seed=1)
    assert not (out / "marker.txt").exists() and (out / "train.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
