"""prepare on every dataset layout: fixtures built here, and the real copies in ../shared when present."""

from __future__ import annotations

import json
import re
import sqlite3
import zipfile
from pathlib import Path

import pytest

from sqlora.config import DataParams, PromptParams
from sqlora.data.layouts import load_split, resolve_source
from sqlora.data.prepare import held_out_databases, prepare_split
from sqlora.data.records import render_input, to_records
from sqlora.data.schema import describe_ddl
from sqlora.errors import SqloraError
from tests.helpers import SHARED_DATASETS as SHARED

SCHEMA = {
    "db_id": "shop",
    "table_names_original": ["customer", "orders"],
    "table_names": ["customer", "orders"],
    "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [0, "city"], [1, "order_id"], [1, "customer_id"], [1, "total"]],
    "column_names": [[-1, "*"], [0, "id"], [0, "name"], [0, "city"], [1, "order id"], [1, "customer id"], [1, "total"]],
    "column_types": ["text", "number", "text", "text", "number", "number", "number"],
    "primary_keys": [1, 4],
    "foreign_keys": [[5, 1]],
}


def make_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT, city TEXT);"
        "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customer(id), total REAL);"
        "INSERT INTO customer VALUES (1, 'Ann', 'Lyon'), (2, 'Bob', 'Oslo'), (3, 'Cy', 'Rome');"
        "INSERT INTO orders VALUES (10, 1, 5.5), (11, 2, 7.0);"
    )
    conn.commit()
    conn.close()


@pytest.fixture()
def bird(tmp_path) -> Path:
    """A BIRD-layout folder: dev.json with evidence/SQL/difficulty, dev_tables.json, dev_databases/."""
    root = tmp_path / "bird"
    make_db(root / "dev_databases" / "shop" / "shop.sqlite")
    (root / "dev_tables.json").write_text(json.dumps([SCHEMA]))
    questions = [
        {
            "question_id": 0,
            "db_id": "shop",
            "question": "How many customers live in Lyon?",
            "evidence": "Lyon refers to city = 'Lyon'",
            "SQL": "SELECT count(*) FROM customer WHERE city = 'Lyon'",
            "difficulty": "simple",
        },
        {
            "question_id": 1,
            "db_id": "shop",
            "question": "Total of Bob's orders?",
            "evidence": "",
            "SQL": "SELECT sum(T2.total) FROM customer AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id WHERE T1.name = 'Bob'",
            "difficulty": "moderate",
        },
    ]
    (root / "dev.json").write_text(json.dumps(questions))
    return root


@pytest.fixture()
def spider(tmp_path) -> Path:
    root = tmp_path / "spider"
    make_db(root / "database" / "shop" / "shop.sqlite")
    (root / "tables.json").write_text(json.dumps([SCHEMA]))
    (root / "dev.json").write_text(json.dumps([{"db_id": "shop", "question": "Names of customers?", "query": "SELECT name FROM customer"}]))
    (root / "train_spider.json").write_text(json.dumps([{"db_id": "shop", "question": "Cities?", "query": "SELECT city FROM customer"}]))
    (root / "train_others.json").write_text(json.dumps([{"db_id": "shop", "question": "Totals?", "query": "SELECT total FROM orders"}]))
    return root


def test_bird_keeps_evidence_and_difficulty(bird):
    split = load_split("bird", bird, "dev")
    assert split.database_path("shop") == bird / "dev_databases" / "shop" / "shop.sqlite"
    records = to_records(split)
    assert records[0].input == "How many customers live in Lyon?\nHint: Lyon refers to city = 'Lyon'"
    assert records[1].input == "Total of Bob's orders?"
    assert [r.difficulty for r in records] == ["simple", "moderate"]
    assert records[0].output == "SELECT count(*) FROM customer WHERE city = 'Lyon'"


def test_spider_train_includes_train_others(spider):
    assert [e.question for e in load_split("spider", spider, "train").examples] == ["Cities?", "Totals?"]


def test_zip_source_is_extracted_once(spider, tmp_path, monkeypatch):
    monkeypatch.setenv("SQLORA_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "spider.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in spider.rglob("*"):
            z.write(path, Path("spider") / path.relative_to(spider))
    split = load_split("spider", archive, "dev")
    assert [e.query for e in split.examples] == ["SELECT name FROM customer"]
    assert split.database_path("shop").is_file()
    assert len(list((tmp_path / "cache").iterdir())) == 1
    load_split("spider", archive, "dev")
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_zip_extracted_by_another_process_meanwhile_is_kept(spider, tmp_path, monkeypatch):
    """Two processes extract the same archive at once: the one that finishes first wins, and the
    other leaves its folder alone (it may be being read), discarding its own copy."""
    monkeypatch.setenv("SQLORA_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "spider.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in spider.rglob("*"):
            z.write(path, Path("spider") / path.relative_to(spider))
    extractall, other = zipfile.ZipFile.extractall, {}

    def extract_while_another_finishes(self, path, *args, **kwargs):
        extractall(self, path, *args, **kwargs)
        if not other:  # the other process starts and finishes while this one is still extracting
            other["started"] = True
            other["source"] = resolve_source(archive)
            other["inode"] = other["source"].stat().st_ino
            other["reader"] = open(other["source"] / "dev.json")  # noqa: SIM115 - read below, after the race

    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract_while_another_finishes)
    source = resolve_source(archive)
    assert source == other["source"] and source.stat().st_ino == other["inode"]  # the winner's folder, untouched
    with other["reader"] as reader:
        assert json.loads(reader.read())[0]["query"] == "SELECT name FROM customer"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [source.parent.name]  # no leftover copy


def test_source_errors_name_what_the_caller_passed(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(SqloraError, match=r"^params.yaml: 'data.source' '.*notes.txt' is neither a folder nor a .zip archive$"):
        load_split("spider", tmp_path / "notes.txt", "dev")
    with pytest.raises(SqloraError, match=r"^--source '.*notes.txt' is neither"):
        prepare_split("dev", DataParams(dataset="spider", source=str(tmp_path / "notes.txt")), PromptParams(), source_label="--source")
    with pytest.raises(SqloraError, match=r"^--schema-source '.*notes.txt' is neither"):
        load_split("sparc", tmp_path, "dev", schema_source=tmp_path / "notes.txt", schema_source_label="--schema-source")


def test_multiturn_one_record_per_turn(tmp_path, spider):
    root = tmp_path / "sparc"
    root.mkdir()
    interactions = [
        {
            "database_id": "shop",
            "interaction": [
                {"utterance": "Show all customers.", "query": "SELECT * FROM customer"},
                {"utterance": "Only those in Lyon.", "query": "SELECT * FROM customer WHERE city = 'Lyon'"},
                {"utterance": "How many?", "query": "SELECT count(*) FROM customer WHERE city = 'Lyon'"},
            ],
            "final": {},
        }
    ]
    (root / "dev.json").write_text(json.dumps(interactions))
    with pytest.raises(SqloraError, match="no tables.json; sparc runs on Spider's databases"):
        load_split("sparc", root, "dev")
    split = load_split("sparc", root, "dev", schema_source=spider)
    assert split.database_dir == spider / "database"
    records = to_records(split, history_sql=True)
    assert [(r.interaction_id, r.turn) for r in records] == [("0", 0), ("0", 1), ("0", 2)]
    assert records[0].input == "Show all customers."
    assert records[2].input == (
        "Previous questions:\n1. Show all customers.\n   SQL: SELECT * FROM customer\n"
        "2. Only those in Lyon.\n   SQL: SELECT * FROM customer WHERE city = 'Lyon'\nCurrent question: How many?"
    )
    assert "SQL:" not in to_records(split)[2].input


def test_ddl_and_ddl_rows(spider):
    split = load_split("spider", spider, "dev")
    schema = split.schemas["shop"]
    ddl = describe_ddl(schema)
    assert ddl.startswith("CREATE TABLE customer (\n  id number,\n  name text,\n  city text,\n  PRIMARY KEY (id)\n);")
    assert "FOREIGN KEY (customer_id) REFERENCES customer(id)" in ddl
    # The DDL is valid SQL: SQLite builds the same tables from it.
    conn = sqlite3.connect(":memory:")
    conn.executescript(ddl)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["customer", "orders"]
    with_rows = describe_ddl(schema, split.database_path("shop"), sample_rows=2)
    assert (
        "2 example rows:\nSELECT id, name, city FROM customer LIMIT 2;\nid | name | city\n1 | Ann | Lyon\n2 | Bob | Oslo\n*/" in with_rows
    )


def test_length_budget_shrinks_schema_never_drops_dev(spider, tiny_model_dir):
    from sqlora.model.loader import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    data = DataParams(dataset="spider", source=str(spider))
    full = prepare_split("dev", data, PromptParams(), tokenizer=tokenizer, max_length=10_000, reserve=0)[1]
    n = full.prompt_tokens[0]
    # Room for the prompt minus a few tokens: the table unrelated to the question ("Names of customers?") goes.
    split, fitted, stats = prepare_split("dev", data, PromptParams(), tokenizer=tokenizer, max_length=n - 5, reserve=0)
    [record] = fitted.records
    assert "Table customer" in record.instruction and "Table orders" not in record.instruction
    assert stats["schema_shrunk"] == 1 and stats["over_budget"] == 0 and fitted.prompt_tokens[0] <= n - 5
    # No room at all: dev keeps the record (smallest schema) and counts it; train leaves it out.
    _, fitted, stats = prepare_split("dev", data, PromptParams(), tokenizer=tokenizer, max_length=20, reserve=0)
    assert len(fitted.records) == 1 and stats["over_budget"] == 1
    _, fitted, stats = prepare_split("train", data, PromptParams(), tokenizer=tokenizer, max_length=20)
    assert fitted.records == [] and stats["left_out_too_long"] == 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda q, t: q[0].pop("question"), r"dev.json\[0\]: missing or empty 'question'"),
        (lambda q, t: q[1].pop("SQL"), r"dev.json\[1\]: missing or empty 'SQL'"),
        (lambda q, t: q[0].update(db_id="nowhere"), r"dev.json\[0\].db_id: 'nowhere' is not in tables.json"),
        (lambda q, t: t[0]["foreign_keys"].append([5, 42]), r"dev_tables.json\[0\].foreign_keys\[1\]: column index 42 out of range"),
    ],
)
def test_bad_records_fail_or_are_skipped(bird, mutate, message):
    questions = json.loads((bird / "dev.json").read_text())
    tables = json.loads((bird / "dev_tables.json").read_text())
    mutate(questions, tables)
    (bird / "dev.json").write_text(json.dumps(questions))
    (bird / "dev_tables.json").write_text(json.dumps(tables))
    with pytest.raises(SqloraError, match=message):
        load_split("bird", bird, "dev")
    split = load_split("bird", bird, "dev", skip_bad=True)
    assert split.problems and re.search(message, split.problems[0])
    assert len(split.examples) + len(split.problems) >= 1


def test_truncated_json_names_file_and_line(bird):
    (bird / "dev.json").write_text((bird / "dev.json").read_text()[:-30])
    with pytest.raises(SqloraError, match=r"dev.json: invalid JSON at line 1"):
        load_split("bird", bird, "dev", skip_bad=True)


# --- the real datasets -----------------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets is absent (real Spider, BIRD, CoSQL, SParC)")


def foreign_key_sentences(entry: dict) -> list[str]:
    """What the natural schema must say for each foreign key, straight from tables.json."""
    cols, tables = entry["column_names_original"], entry["table_names_original"]
    return [
        f"The {cols[a][1]} of {tables[cols[a][0]]} is the foreign key of {cols[b][1]} of {tables[cols[b][0]]}."
        for a, b in entry["foreign_keys"]
    ]


@needs_shared
@pytest.mark.needs_spider
def test_real_spider_dev_tells_every_foreign_key():
    split = load_split("spider", SHARED / "spider", "dev")
    records = to_records(split)
    assert len(records) == 1034
    tables = {t["db_id"]: t for t in json.loads((SHARED / "spider" / "tables.json").read_text())}
    for record in records:
        entry = tables[record.db_id]
        for sentence in foreign_key_sentences(entry):
            assert sentence in record.instruction
        for name in entry["table_names_original"]:
            assert f"Table {name} has columns such as " in record.instruction
        for key in entry["primary_keys"]:
            if isinstance(key, list):
                names = [entry["column_names_original"][c][1] for c in key]
                assert f"{', '.join(names[:-1])} and {names[-1]} together are the primary key." in record.instruction


@needs_shared
@pytest.mark.needs_spider
@pytest.mark.parametrize(
    "dataset, count, extra",
    [
        ("bird", 1534, {}),
        ("cosql", 1007, {"schema_source": str(SHARED / "spider")}),
        ("sparc", 1203, {"schema_source": str(SHARED / "spider")}),
    ],
)
def test_real_dev_sets(dataset, count, extra):
    data = DataParams(dataset=dataset, source=str(SHARED / dataset), **extra)
    split, fitted, stats = prepare_split("dev", data, PromptParams())
    assert len(fitted.records) == count and stats["bad_records_skipped"] == 0
    if dataset == "bird":
        assert stats["difficulty"] == {"challenging": 145, "moderate": 464, "simple": 925}
        assert all("Hint: " in r.input for r, e in zip(fitted.records, split.examples) if e.evidence)
    else:
        assert stats["interactions"] == {"cosql": 293, "sparc": 422}[dataset]
        assert all(render_input(e).startswith("Previous questions:") == (e.turn > 0) for e in split.examples)


def test_chat_template_wraps_the_prompt_identically_everywhere(tiny_model_dir):
    from sqlora.data.prompt import encode_prompt
    from sqlora.model.loader import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    plain = encode_prompt(tokenizer, "PROMPT")
    chat = tokenizer.decode(encode_prompt(tokenizer, "PROMPT", chat_template=True))
    assert chat.endswith("<|im_start|>user\nPROMPT<|im_end|>\n<|im_start|>assistant\n")
    assert len(encode_prompt(tokenizer, "PROMPT", chat_template=True)) > len(plain)
    tokenizer.chat_template = None
    with pytest.raises(SqloraError, match="prompt.chat_template is true but the model's tokenizer .* has no chat template"):
        encode_prompt(tokenizer, "PROMPT", chat_template=True)


def test_validation_holds_out_whole_databases_seeded():
    ids = [f"db{i}" for i in range(40) for _ in range(3)]
    held = held_out_databases(ids, 0.1, seed=7)
    assert len(held) == 4 and held <= set(ids)
    assert held == held_out_databases(list(reversed(ids)), 0.1, seed=7)  # the databases, not their order, decide
    assert held != held_out_databases(ids, 0.1, seed=8)
    assert held_out_databases(ids, 0.0, seed=7) == frozenset()
    assert len(held_out_databases(["a", "b", "c"], 0.01, seed=0)) == 1  # at least one
    assert len(held_out_databases(["a", "b", "c"], 0.99, seed=0)) == 2  # never all
    with pytest.raises(SqloraError, match="data.validation 0.1: the train split has 1 database"):
        held_out_databases(["a", "a"], 0.1, seed=0)


def test_train_and_validation_portions_split_the_train_questions_by_database(sample_dir):
    data = DataParams(dataset="sample", source=str(sample_dir), validation=0.25)
    everything = prepare_split("train", data, PromptParams(), seed=3)[1].records
    train = prepare_split("train", data, PromptParams(), seed=3, portion="train")[1].records
    validation, stats = prepare_split("train", data, PromptParams(), seed=3, portion="validation")[1:]
    assert len(train) + len(validation.records) == len(everything)
    assert not {r.db_id for r in train} & {r.db_id for r in validation.records}
    assert stats["databases"] == 2 and stats["records"] == len(validation.records) > 0
    # a training subset (max_train_examples) is drawn from the databases not held out
    subset = prepare_split("train", data, PromptParams(), seed=3, portion="train", limit=50, shuffle=True)[1].records
    assert len(subset) == 50 and {r.db_id for r in subset} <= {r.db_id for r in train}
    # without data.validation: the whole split trains, nothing validates
    plain = DataParams(dataset="sample", source=str(sample_dir))
    assert len(prepare_split("train", plain, PromptParams(), portion="train")[1].records) == len(everything)
    assert prepare_split("train", plain, PromptParams(), portion="validation")[1].records == []
