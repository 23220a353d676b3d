"""sqlora ask: the schema read from a SQLite file, the training prompt, the answer run in the sandbox."""

import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from sqlora import cli
from sqlora.data.schema import cell, describe, read_sqlite_schema
from sqlora.errors import SqloraError
from sqlora.infer.assistant import Answer, ask, format_table, prepare
from sqlora.infer.base import Generation
from sqlora.model.loader import MODEL_INFO
from tests.helpers import SQLORA


@pytest.fixture()
def library_db(tmp_path) -> Path:
    """Composite keys (declared in another order than the columns), FKs with and without target columns."""
    path = tmp_path / "library" / "library.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE Author (id INTEGER PRIMARY KEY AUTOINCREMENT, Full_Name TEXT, born DATE);
        CREATE TABLE book (isbn VARCHAR(13), edition INT, title TEXT, author_id INT REFERENCES author,
                           price REAL, cover BLOB, in_print BOOLEAN, PRIMARY KEY (edition, isbn));
        CREATE TABLE review (id INTEGER PRIMARY KEY, book_isbn TEXT, book_edition INT, stars INT,
                             FOREIGN KEY (book_isbn, book_edition) REFERENCES book (isbn, edition),
                             FOREIGN KEY (id) REFERENCES ghost (id));
        CREATE TABLE copy (copy_edition INT, copy_isbn TEXT, FOREIGN KEY (copy_edition, copy_isbn) REFERENCES BOOK);
        CREATE VIEW cheap AS SELECT title FROM book WHERE price < 10;
        CREATE INDEX book_title ON book (title);
        INSERT INTO author (full_name, born) VALUES ('Ann Lee', '1970-01-01'), ('Bo Ma', NULL);
        INSERT INTO book VALUES ('111', 1, 'Rivers', 1, 9.5, NULL, 1), ('222', 2, 'Stones', 2, 20, NULL, 0);
        """
    )
    conn.commit()
    conn.close()
    return path


def test_schema_from_sqlite(library_db):
    schema = read_sqlite_schema(library_db)
    assert schema.db_id == "library"
    assert schema.tables == ["Author", "book", "review", "copy"]  # no sqlite_sequence, no view
    assert schema.table_natural == ["author", "book", "review", "copy"]
    names = [(c.table, c.name, c.type) for c in schema.columns]
    assert names[:10] == [
        (0, "id", "number"),
        (0, "Full_Name", "text"),
        (0, "born", "time"),
        (1, "isbn", "text"),
        (1, "edition", "number"),
        (1, "title", "text"),
        (1, "author_id", "number"),
        (1, "price", "number"),
        (1, "cover", "others"),
        (1, "in_print", "boolean"),
    ]
    assert schema.column(2).natural == "full name"
    col = {(schema.tables[c.table], c.name): i for i, c in enumerate(schema.columns, 1)}
    assert schema.primary_keys == [(col["Author", "id"],), (col["book", "edition"], col["book", "isbn"]), (col["review", "id"],)]
    assert schema.foreign_keys == [
        (col["book", "author_id"], col["Author", "id"]),  # no target column: the target's primary key
        (col["review", "book_isbn"], col["book", "isbn"]),
        (col["review", "book_edition"], col["book", "edition"]),
        # review.id -> ghost(id) is dangling and left out
        (col["copy", "copy_edition"], col["book", "edition"]),  # composite, no target columns: in key order
        (col["copy", "copy_isbn"], col["book", "isbn"]),
    ]
    text = describe(schema, "natural")
    assert (
        "Table book has columns such as isbn, edition, title, author_id, price, cover, in_print. edition and isbn together are the primary key."
        in text
    )
    assert "The author_id of book is the foreign key of id of Author." in text


def test_not_a_database_or_no_tables(tmp_path):
    (tmp_path / "notes.sqlite").write_text("SQLite format 2, honestly")
    with pytest.raises(SqloraError, match=r"notes.sqlite: not a SQLite database"):
        read_sqlite_schema(tmp_path / "notes.sqlite")
    with pytest.raises(SqloraError, match=r"nope.sqlite: no such file"):
        read_sqlite_schema(tmp_path / "nope.sqlite")
    conn = sqlite3.connect(tmp_path / "empty.sqlite")
    conn.executescript("CREATE TABLE t (a INT); DROP TABLE t;")
    conn.close()
    assert read_sqlite_schema(tmp_path / "empty.sqlite").tables == []
    with pytest.raises(SqloraError, match=r"empty.sqlite: the database has no tables"):
        prepare(tmp_path / "empty.sqlite", "How many?", tmp_path / "no-model", tmp_path / "no-base")


def spider_schemas(spider_dir: Path, db_id: str):
    from sqlora.data.layouts import load_schemas
    from sqlora.data.schema import database_path

    return load_schemas(spider_dir / "tables.json")[db_id], read_sqlite_schema(database_path(spider_dir / "database", db_id))


def test_spider_description_from_the_file_is_the_tables_json_one(spider_dir):
    from_json, from_file = spider_schemas(spider_dir, "car_1")
    for schema_format in ("natural", "ddl", "compact"):
        assert describe(from_file, schema_format) == describe(from_json, schema_format)


def test_spider_composite_key_is_told_whole(spider_dir):
    """Spider's tables.json keeps only the first column of a composite key; the file has all of it."""
    from_json, from_file = spider_schemas(spider_dir, "concert_singer")
    json_lines, file_lines = describe(from_json, "natural").splitlines(), describe(from_file, "natural").splitlines()
    differ = [(a, b) for a, b in zip(json_lines, file_lines) if a != b]
    assert len(json_lines) == len(file_lines) and differ == [
        (
            "Table singer_in_concert has columns such as concert_ID, Singer_ID. concert_ID is the primary key.",
            "Table singer_in_concert has columns such as concert_ID, Singer_ID. concert_ID and Singer_ID together are the primary key.",
        )
    ]


def test_format_table():
    table = format_table(["name", "n"], [("Ann Lee", 3), ("x" * 50, None), ("line\nbreak", 12)])
    assert table.splitlines() == [
        " name                                     |    n",
        "------------------------------------------+------",
        " Ann Lee                                  |    3",
        " xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... | NULL",
        " line break                               |   12",
    ]
    assert format_table(["a"], []).splitlines() == [" a", "-----"]


def test_cell():
    assert [cell(None), cell(b"\x00\x01"), cell(" a\n b "), cell(1.5)] == ["NULL", "<2 bytes>", "a b", "1.5"]
    assert cell("x" * 41) == "x" * 37 + "..." and cell("x" * 40) == "x" * 40  # 40: the schema prompt's width
    assert cell("abcdefgh", max_width=6) == "abc..."


@pytest.fixture()
def none_model(tiny_model_dir, tmp_path) -> Path:
    """A train-stage folder of method "none": the tiny base model as it is."""
    out = tmp_path / "finetuned"
    out.mkdir()
    (out / MODEL_INFO).write_text(json.dumps({"method": "none", "base": str(tiny_model_dir)}))
    return out


def fixed_generation(sql):
    def generate(*, prompts, **_):
        return [Generation(sql=sql, raw=sql + ";\n", new_tokens=9, hit_max_new_tokens=False) for _ in prompts]

    return generate


def test_ask_runs_the_sql_and_returns_the_rows(library_db, none_model, tiny_model_dir, monkeypatch):
    import sqlora.infer.engine

    monkeypatch.setattr(sqlora.infer.engine, "generate", fixed_generation("SELECT title, price FROM book ORDER BY price"))
    answer = ask(library_db, "Which books are there?", none_model, tiny_model_dir)
    assert isinstance(answer, Answer) and answer.ok and answer.sql == "SELECT title, price FROM book ORDER BY price"
    assert answer.columns == ["title", "price"] and answer.rows == [("Rivers", 9.5), ("Stones", 20.0)]
    assert answer.prompt_tokens > 0 and answer.seconds >= 0
    monkeypatch.setattr(sqlora.infer.engine, "generate", fixed_generation("DELETE FROM book"))
    answer = ask(library_db, "Delete the books", none_model, tiny_model_dir)
    assert answer.error == "refused: DELETE statements are not allowed" and answer.rows is None


def test_compact_schema_format(library_db):
    """One line per table, types and keys in place: composite keys whole, FKs to their target column."""
    assert describe(read_sqlite_schema(library_db), "compact").splitlines() == [
        "Author(id number primary key, Full_Name text, born time)",
        "book(isbn text, edition number, title text, author_id number references Author(id), price number, cover text, "
        "in_print boolean, primary key (edition, isbn))",
        "review(id number primary key, book_isbn text references book(isbn), book_edition number references book(edition), stars number)",
        "copy(copy_edition number references book(edition), copy_isbn text references book(isbn))",
    ]


def test_ask_prompts_as_the_model_was_trained(library_db, none_model, tiny_model_dir, monkeypatch):
    """sqlora_model.json's prompt settings are the defaults (values hints included); a flag overrides them."""
    from sqlora.config import PromptParams
    from sqlora.infer.assistant import trained_prompt

    assert trained_prompt(none_model) == PromptParams()  # a folder that records nothing: the defaults
    info = json.loads((none_model / MODEL_INFO).read_text())
    info["prompt"] = {"schema_format": "compact", "values": True, "sample_rows": 3, "chat_template": False, "retired_key": 1}
    (none_model / MODEL_INFO).write_text(json.dumps(info))
    assert trained_prompt(none_model) == PromptParams(schema_format="compact", values=True)
    assert trained_prompt(none_model, schema_format="ddl", values=None) == PromptParams(schema_format="ddl", values=True)
    prepared = prepare(library_db, "Books by Ann Lee?", none_model, tiny_model_dir)
    assert prepared.prompt.split("###Instruction:\n")[1].split("\n\n###Input")[0] == (
        describe(read_sqlite_schema(library_db), "compact") + "\nDatabase values that the question mentions:\nAuthor.Full_Name = 'Ann Lee'"
    )


def test_ask_materialises_a_missing_base_and_constrains(library_db, tiny_model_dir, tmp_path, monkeypatch):
    """A published adapter names its base model: ask writes it where --base points when it is missing.
    --constrained hands the database's names to the engine."""
    import sqlora.infer.engine
    import sqlora.model.loader

    model = tmp_path / "published"
    model.mkdir()
    (model / MODEL_INFO).write_text(json.dumps({"method": "none", "base": "models/base", "model": "some-alias"}))
    made = []
    monkeypatch.setattr(sqlora.model.loader, "materialize", lambda name, out: made.append(name) or shutil.copytree(tiny_model_dir, out))
    seen = {}

    def generate(*, prompts, constraints=None, constrained=False, **_):
        seen.update(constrained=constrained, tables=sorted(constraints[0].tables) if constraints else None)
        return [Generation(sql="SELECT 1", raw="SELECT 1", new_tokens=3, hit_max_new_tokens=False) for _ in prompts]

    monkeypatch.setattr(sqlora.infer.engine, "generate", generate)
    base = tmp_path / "base"
    answer = ask(library_db, "How many books?", model, base, constrained=True)
    assert made == ["some-alias"] and (base / "config.json").is_file() and answer.ok
    assert seen == {"constrained": True, "tables": ["author", "book", "copy", "review"]}
    ask(library_db, "How many books?", model, base)  # present now: not materialised again
    assert made == ["some-alias"] and seen == {"constrained": False, "tables": None}


def test_the_base_is_the_one_the_adapter_names(library_db, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """models/base holding another model (make repro leaves SmolLM2 there) is not loaded under an adapter
    trained on Gemma: without --base the adapter's own base is materialised in models/bases/<model>; with a
    --base that holds another model, one line and exit 2, before any weights load."""
    import sqlora.model.loader
    from sqlora import cli
    from sqlora.infer.assistant import resolve_base
    from sqlora.model.loader import BASE_INFO, base_model_name

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "published"
    model.mkdir()
    (model / MODEL_INFO).write_text(json.dumps({"method": "lora", "base": "models/base", "model": "gemma3-270m"}))
    (model / "adapter_config.json").write_text("{}")  # never loaded: the refusal comes first
    (model / "adapter_model.safetensors").write_bytes(b"")
    made = []

    def materialize(name, out):
        made.append((name, str(out)))
        shutil.copytree(tiny_model_dir, out)
        (Path(out) / BASE_INFO).write_text(json.dumps({"model": name}))

    monkeypatch.setattr(sqlora.model.loader, "materialize", materialize)
    pipeline_base = Path("models/base")
    shutil.copytree(tiny_model_dir, pipeline_base)
    (pipeline_base / BASE_INFO).write_text(json.dumps({"model": "smollm2-135m-instruct"}))
    assert resolve_base(model) == Path("models/bases/gemma3-270m") and made == [("gemma3-270m", "models/bases/gemma3-270m")]
    assert resolve_base(model) == Path("models/bases/gemma3-270m") and len(made) == 1  # there now
    assert base_model_name(pipeline_base) == "smollm2-135m-instruct"  # left as it was
    (pipeline_base / BASE_INFO).write_text(json.dumps({"model": "gemma3-270m"}))
    assert resolve_base(model) == pipeline_base  # the pipeline's base, when it is the right one
    (pipeline_base / BASE_INFO).write_text(json.dumps({"model": "smollm2-135m-instruct"}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ask", "--db", str(library_db), "--question", "q", "--model", str(model), "--base", str(pipeline_base)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err == (
        f"error: {model} was trained on 'gemma3-270m', but models/base holds 'smollm2-135m-instruct': leave out --base, "
        "or pass a folder that holds 'gemma3-270m' (or none yet, to materialise it there)"
    )


def test_ask_an_export_prompts_as_its_source_was_trained(library_db, none_model, tiny_model_dir, tmp_path, monkeypatch):
    """An export (sqlora export) is a standalone checkpoint: ask loads it as predict does, with no base,
    and prompts it with the settings sqlora_export.json copied from the fine-tuned folder."""
    import sqlora.infer.engine
    from sqlora.config import PromptParams
    from sqlora.infer.assistant import trained_prompt
    from sqlora.model.export import EXPORT_INFO, export_model

    info = json.loads((none_model / MODEL_INFO).read_text())
    (none_model / MODEL_INFO).write_text(json.dumps(info | {"prompt": {"schema_format": "compact", "values": True}}))
    exported = tmp_path / "exported"
    export_model(none_model, tiny_model_dir, exported, dtype="float32")
    assert json.loads((exported / EXPORT_INFO).read_text())["prompt"] == {"schema_format": "compact", "values": True}
    assert trained_prompt(exported) == PromptParams(schema_format="compact", values=True)
    no_base = tmp_path / "no-base"
    prepared = prepare(library_db, "Books by Ann Lee?", exported, no_base)
    assert prepared.prompt.split("###Instruction:\n")[1].split("\n\n###Input")[0] == (
        describe(read_sqlite_schema(library_db), "compact") + "\nDatabase values that the question mentions:\nAuthor.Full_Name = 'Ann Lee'"
    )
    monkeypatch.setattr(sqlora.infer.engine, "generate", fixed_generation("SELECT count(*) FROM book"))
    answer = ask(library_db, "How many books?", exported, no_base)
    assert answer.ok and answer.rows == [(2,)] and not no_base.exists()


def test_ask_a_plain_checkpoint_with_the_default_prompt(library_db, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A Hugging Face checkpoint folder (config.json + weights, nothing of sqlora's), as predict.model
    takes it: the default prompt, no base folder needed (the CLI's default --base does not exist here)."""
    import sqlora.infer.engine
    from sqlora.config import PromptParams
    from sqlora.infer.assistant import trained_prompt

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    assert trained_prompt(plain) == PromptParams()
    assert (
        prepare(library_db, "How many books?", plain, tmp_path / "no-base").prompt
        == prepare(library_db, "How many books?", plain, tmp_path / "no-base", prompt=PromptParams()).prompt
    )
    monkeypatch.setattr(sqlora.infer.engine, "generate", fixed_generation("SELECT title FROM book ORDER BY title"))
    monkeypatch.chdir(tmp_path)
    cli.main(["ask", "--db", str(library_db), "--question", "Titles?", "--model", str(plain)])
    assert capsys.readouterr().out.splitlines()[:4] == ["SELECT title FROM book ORDER BY title", " title", "---------", " Rivers"]
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not a valid sqlora_export.json"),
        ('{"method": "lora", "prompt": ["compact"]}', "'prompt' must be an object, got list"),
    ],
)
def test_ask_a_bad_export_info_is_one_line(library_db, tiny_model_dir, tmp_path, text, message):
    exported = tmp_path / "exported"
    shutil.copytree(tiny_model_dir, exported)
    (exported / "sqlora_export.json").write_text(text)
    result = run_ask("--db", str(library_db), "--question", "q", "--model", str(exported))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {exported / 'sqlora_export.json'}: {message}"), result.stderr


def test_ask_prompt_is_the_training_prompt(library_db, none_model, tiny_model_dir):
    from sqlora.data.records import Record

    prepared = prepare(library_db, "  How many books? ", none_model, tiny_model_dir)
    record = Record(db_id="library", instruction=describe(read_sqlite_schema(library_db), "natural"), input="How many books?", output="")
    assert prepared.prompt == record.prompt


def test_ask_command_prints_sql_table_and_count(library_db, none_model, tiny_model_dir, monkeypatch, capsys):
    import sqlora.infer.engine

    monkeypatch.setattr(sqlora.infer.engine, "generate", fixed_generation("SELECT title, edition FROM book ORDER BY title"))
    cli.main(
        ["ask", "--db", str(library_db), "--question", "Books?", "--model", str(none_model), "--base", str(tiny_model_dir), "--rows", "1"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        "SELECT title, edition FROM book ORDER BY title",
        " title   |   edition",
        "---------+-----------",
        " Rivers  |         1",
    ]
    assert re.fullmatch(r"\(2 rows, first 1 shown, \d+\.\d s\)", lines[4]) and len(lines) == 5
    monkeypatch.setattr(sqlora.infer.engine, "generate", fixed_generation("SELECT nope FROM book"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ask", "--db", str(library_db), "--question", "Books?", "--model", str(none_model), "--base", str(tiny_model_dir)])
    assert exit_.value.code == 1
    assert capsys.readouterr().out.splitlines() == ["SELECT nope FROM book", "failed: parse/execution error: no such column: nope"]


def run_ask(*args):
    return subprocess.run(SQLORA + ["ask", *args], capture_output=True, text=True)


@pytest.mark.slow  # a model materialised or run in a process
def test_ask_command_with_a_random_model(library_db, none_model, tiny_model_dir):
    """A random model writes garbage: the flow is what is checked, the SQL line then a table or a failure."""
    result = run_ask(
        "--db",
        str(library_db),
        "--question",
        "How many books are there?",
        "--model",
        str(none_model),
        "--base",
        str(tiny_model_dir),
        "--max-new-tokens",
        "8",
    )
    assert result.returncode in (0, 1), result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) >= 2 and lines[0].strip()
    if result.returncode == 1:
        assert len(lines) == 2 and lines[1].startswith("failed: ")
    else:
        assert re.fullmatch(r"\(\d+ rows?.*\)", lines[-1])


@pytest.mark.slow  # a model materialised or run in a process
def test_ask_bad_input_is_one_line_and_exit_2(library_db, none_model, tiny_model_dir, tmp_path):
    def error(*args):
        result = run_ask(*args)
        assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
        return result.stderr.strip()

    model = ["--model", str(none_model), "--base", str(tiny_model_dir)]
    (tmp_path / "text.sqlite").write_text("not a database\n")
    assert error("--db", str(tmp_path / "text.sqlite"), "--question", "q", *model).startswith(
        f"error: {tmp_path / 'text.sqlite'}: not a SQLite database"
    )
    assert error("--db", str(tmp_path / "nope.sqlite"), "--question", "q", *model) == f"error: {tmp_path / 'nope.sqlite'}: no such file"
    assert error("--db", str(library_db), "--question", "q", "--model", str(tmp_path / "nope"), "--base", str(tiny_model_dir)).startswith(
        f"error: {tmp_path / 'nope'}: no such fine-tuned model folder"
    )
    message = error("--db", str(library_db), "--question", "How many books?", *model, "--max-new-tokens", "1000")
    assert re.fullmatch(
        r"error: the prompt is \d+ tokens and max_new_tokens is 1000: \d+ tokens, more than the model's "
        r"context of 1024 \(max_position_embeddings in .*config.json\).*",
        message,
    ), message
    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    assert (
        error("--db", str(library_db), "--question", "q", "--model", str(none_model), "--base", str(no_template), "--chat-template")
        == f"error: prompt.chat_template is true but the model's tokenizer ({no_template}) has no chat template"
    )
