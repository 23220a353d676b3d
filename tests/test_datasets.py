import json
from pathlib import Path

import pytest

from sqlora.data.layouts import Split, load_examples, load_schemas
from sqlora.data.prompt import PROMPT_TEMPLATE, render_prompt
from sqlora.data.records import load_records, subsample, to_records
from sqlora.data.schema import describe_natural
from sqlora.errors import SqloraError
from sqlora.io import write_jsonl

SCHEMA = {
    "db_id": "concerts",
    "table_names_original": ["singer", "concert", "singer_in_concert"],
    "table_names": ["singer", "concert", "singer in concert"],
    "column_names_original": [
        [-1, "*"],
        [0, "Singer_ID"],
        [0, "Name"],
        [1, "concert_ID"],
        [1, "Year"],
        [2, "concert_ID"],
        [2, "Singer_ID"],
    ],
    "column_names": [[-1, "*"], [0, "singer id"], [0, "name"], [1, "concert id"], [1, "year"], [2, "concert id"], [2, "singer id"]],
    "column_types": ["text", "number", "text", "number", "text", "number", "number"],
    "primary_keys": [1, 3, [5, 6]],
    "foreign_keys": [[6, 1], [5, 3]],
}


def write_source(tmp_path: Path, schema=SCHEMA, examples=None) -> Path:
    (tmp_path / "tables.json").write_text(json.dumps([schema]))
    examples = (
        examples
        if examples is not None
        else [{"db_id": "concerts", "question": "How many singers?", "query": "SELECT count(*) FROM singer"}]
    )
    (tmp_path / "dev.json").write_text(json.dumps(examples))
    return tmp_path


def test_natural_schema_tells_keys_and_directions(tmp_path):
    schema = load_schemas(write_source(tmp_path) / "tables.json")["concerts"]
    assert describe_natural(schema) == (
        "concerts contains tables such as singer, concert, singer_in_concert.\n"
        "Table singer has columns such as Singer_ID, Name. Singer_ID is the primary key.\n"
        "Table concert has columns such as concert_ID, Year. concert_ID is the primary key.\n"
        "Table singer_in_concert has columns such as concert_ID, Singer_ID. concert_ID and Singer_ID together are the primary key.\n"
        "The Singer_ID of singer_in_concert is the foreign key of Singer_ID of singer.\n"
        "The concert_ID of singer_in_concert is the foreign key of concert_ID of concert."
    )


def test_records_use_the_one_prompt(tmp_path):
    source = write_source(tmp_path)
    schemas = load_schemas(source / "tables.json")
    [record] = to_records(
        Split("spider", schemas, load_examples(source / "dev.json", schemas), source / "database", source / "tables.json")
    )
    assert record.output == "SELECT count(*) FROM singer"
    assert record.prompt == render_prompt(record.instruction, "How many singers?")
    assert record.prompt.startswith("I want you to act as a SQL terminal in front of an example database. Below is an instruction")
    assert record.prompt.endswith("\n\n###Input:\nHow many singers?\n\n###Response: ")
    assert PROMPT_TEMPLATE.count("{instruction}") == PROMPT_TEMPLATE.count("{input}") == 1
    write_jsonl(tmp_path / "dev.jsonl", [record.__dict__])
    assert load_records(tmp_path / "dev.jsonl") == [record]


def test_sample_goes_through_the_spider_path(sample_dir):
    schemas = load_schemas(sample_dir / "tables.json")
    train = load_examples(sample_dir / "train.json", schemas)
    dev = load_examples(sample_dir / "dev.json", schemas)
    assert 600 <= len(train) <= 1500 and 150 <= len(dev) <= 300
    records = to_records(Split("sample", schemas, dev, sample_dir / "database", sample_dir / "tables.json"))
    assert all(r.instruction.startswith(f"{r.db_id} contains tables such as") for r in records)


def test_subsample_is_seeded_and_keeps_order():
    items = list(range(100))
    a = subsample(items, 10, seed=1, shuffle=True)
    assert a == subsample(items, 10, seed=1, shuffle=True) and a == sorted(a) and a != items[:10]
    assert subsample(items, 10, seed=1, shuffle=False) == items[:10]
    assert subsample(items, 0, seed=1, shuffle=True) == items


def bad_schema(**changes):
    return {**SCHEMA, **changes}


@pytest.mark.parametrize(
    "schema, message",
    [
        (bad_schema(foreign_keys=[[6, 99]]), "tables.json[0].foreign_keys[0]: column index 99 out of range 1..6"),
        (bad_schema(primary_keys=[0]), "tables.json[0].primary_keys[0]: column index 0 out of range"),
        ({k: v for k, v in SCHEMA.items() if k != "column_types"}, "tables.json[0]: missing key 'column_types'"),
        (bad_schema(column_types=["text"]), "tables.json[0].column_types: expected 7 types"),
        (
            bad_schema(column_names_original=[[-1, "*"], [5, "x"]], column_types=["text", "text"]),
            "column_names_original[1]: table index 5 out of range",
        ),
        (bad_schema(primary_keys=1), "tables.json[0].primary_keys: expected a list of column indices"),
        (bad_schema(primary_keys="Singer_ID"), "tables.json[0].primary_keys: expected a list of column indices"),
        (bad_schema(foreign_keys={"6": 1}), "tables.json[0].foreign_keys: expected a list of [column, referenced_column] pairs"),
    ],
)
def test_malformed_tables_json(tmp_path, schema, message):
    source = write_source(tmp_path, schema=schema)
    with pytest.raises(SqloraError, match=None) as err:
        load_schemas(source / "tables.json")
    assert message in str(err.value) and str(source / "tables.json") in str(err.value)


def test_truncated_tables_json(tmp_path):
    (tmp_path / "tables.json").write_text(json.dumps([SCHEMA])[:100])
    with pytest.raises(SqloraError, match=r"tables.json: invalid JSON at line 1"):
        load_schemas(tmp_path / "tables.json")


@pytest.mark.parametrize(
    "example, message",
    [
        ({"db_id": "nowhere", "question": "q?", "query": "SELECT 1"}, "dev.json[0].db_id: 'nowhere' is not in tables.json"),
        ({"db_id": "concerts", "query": "SELECT 1"}, "dev.json[0]: missing or empty 'question'"),
        ({"db_id": "concerts", "question": "q?", "query": " "}, "dev.json[0]: missing or empty 'query'"),
    ],
)
def test_bad_examples(tmp_path, example, message):
    source = write_source(tmp_path, examples=[example])
    schemas = load_schemas(source / "tables.json")
    with pytest.raises(SqloraError) as err:
        load_examples(source / "dev.json", schemas)
    assert message in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(SqloraError, match="dev.json: file not found"):
        load_examples(tmp_path / "dev.json", {})
    with pytest.raises(SqloraError, match="dev.jsonl: file not found"):
        load_records(tmp_path / "dev.jsonl")


def test_bad_jsonl_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"db_id": "a", "instruction": "i", "input": "q", "output": "s"}\n{oops\n')
    with pytest.raises(SqloraError, match=r"x.jsonl:2: invalid JSON"):
        load_records(tmp_path / "x.jsonl")


RECORD = '{"db_id": "a", "instruction": "i", "input": "q", "output": "s"}\n'


@pytest.mark.parametrize(
    "line, message",
    [
        ("[1, 2]", "expected a JSON object, got [1, 2]"),
        ('"x"', 'expected a JSON object, got "x"'),
        ("5", "expected a JSON object, got 5"),
        ("null", "expected a JSON object, got null"),
        ('{"db_id": "a"}', "expected keys db_id, instruction, input, output; got ['db_id']"),
    ],
)
def test_a_record_line_that_is_not_a_record_is_named(tmp_path, line, message):
    """The line number counts blank lines: it is the line an editor shows."""
    (tmp_path / "x.jsonl").write_text(RECORD + "\n" + line + "\n")
    with pytest.raises(SqloraError) as err:
        load_records(tmp_path / "x.jsonl")
    assert str(err.value) == f"{tmp_path / 'x.jsonl'}:3: {message}"
