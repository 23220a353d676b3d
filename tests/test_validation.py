"""Validation EX (sqlora.evaluate.validation): the validation split generated and scored by execution."""

import sqlite3

import pytest

import sqlora.evaluate.validation as validation
from sqlora.data.records import Record
from sqlora.evaluate.validation import Validator
from sqlora.infer.base import Generation


@pytest.fixture
def databases(tmp_path):
    for db_id, rows in [("zoo", 3), ("farm", 5)]:
        path = tmp_path / db_id / f"{db_id}.sqlite"
        path.parent.mkdir()
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE animal (id INTEGER, name TEXT)")
            conn.executemany("INSERT INTO animal VALUES (?, ?)", [(i, f"a{i}") for i in range(rows)])
    return tmp_path


RECORDS = [
    Record(db_id="zoo", instruction="zoo has animal(id, name).", input="How many animals?", output="SELECT count(*) FROM animal"),
    Record(db_id="farm", instruction="farm has animal(id, name).", input="Names of animals?", output="SELECT name FROM animal"),
    Record(db_id="farm", instruction="farm has animal(id, name).", input="Largest id?", output="SELECT max(id) FROM animal"),
    Record(db_id="gone", instruction="gone has t(a).", input="All?", output="SELECT * FROM t"),  # no database: not scored
]


def test_validation_ex_is_execution_accuracy_of_what_the_model_generates(databases, monkeypatch):
    answers = {
        RECORDS[0].prompt: "SELECT count(id) FROM animal",  # another query, the same result: right
        RECORDS[1].prompt: "SELECT id FROM animal",  # wrong rows
        RECORDS[2].prompt: "SELECT max(id) FROM animal",
        RECORDS[3].prompt: "SELECT 1",
    }
    asked = {}

    def fake_generate(model, tokenizer, prompts, batch_size, max_new_tokens, **kwargs):
        asked.update(batch_size=batch_size, max_new_tokens=max_new_tokens, **kwargs)
        return [Generation(sql=answers[p], raw=answers[p], new_tokens=5, hit_max_new_tokens=False) for p in prompts]

    monkeypatch.setattr(validation, "generate", fake_generate)
    result = Validator(RECORDS, databases, "validation.jsonl", batch_size=7, max_new_tokens=33)(None, None)
    assert result["questions"] == 3 and result["ex"] == pytest.approx(2 / 3, abs=1e-4)
    assert asked["batch_size"] == 7 and asked["max_new_tokens"] == 33 and asked["progress"] is False


def test_validator_runs_a_real_model(databases, tiny_model_dir):
    from sqlora.infer.loading import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir)
    result = Validator(RECORDS[:2], databases, "validation.jsonl", max_new_tokens=8)(model, tokenizer)
    assert result["questions"] == 2 and 0 <= result["ex"] <= 1 and result["seconds"] >= 0
