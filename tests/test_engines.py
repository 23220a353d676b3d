"""DuckDB and PostgreSQL as real targets: the same schema as the SQLite original, the sandbox's guarantees
on each engine, SQLite-style SQL transpiled to mean what SQLite means, and evaluation on each engine."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sqlora.data.catalog import read_schema
from sqlora.data.schema import describe, read_sqlite_schema
from sqlora.errors import SqloraError
from sqlora.sql.engines import open_database, to_dialect
from tests.databases import copy_to_duckdb, copy_to_postgres


@pytest.fixture(scope="module")
def copies(sample_dir, tmp_path_factory, request):
    """Every sample database as SQLite, DuckDB and (where PostgreSQL binaries exist) PostgreSQL."""
    out = tmp_path_factory.mktemp("copies")
    databases = {}
    cluster = None
    try:
        cluster = request.getfixturevalue("postgres")
    except pytest.skip.Exception:
        pass
    for path in sorted((sample_dir / "database").glob("*/*.sqlite")):
        db_id = path.stem
        (out / "duck").mkdir(exist_ok=True)
        entry = {"sqlite": str(path), "duckdb": str(copy_to_duckdb(path, out / "duck" / f"{db_id}.duckdb"))}
        if cluster is not None:
            entry["postgresql"] = cluster.create_database(db_id)
            copy_to_postgres(path, entry["postgresql"])
        databases[db_id] = entry
    return {"databases": databases, "duck_dir": out / "duck", "pg": cluster.url if cluster else None}


def test_schemas_match_the_sqlite_original_on_every_engine(copies):
    engines_seen = set()
    for db_id, specs in copies["databases"].items():
        original = read_sqlite_schema(specs["sqlite"])
        for engine, spec in specs.items():
            database = open_database(spec)
            schema = read_schema(database)
            engines_seen.add(database.engine)
            assert (database.engine, database.name) == (engine, db_id)
            # PostgreSQL keeps the tables in creation order, DuckDB by name: the same tables, keys and columns.
            expected = original.subset([original.tables.index(t) for t in schema.tables])
            if engine == "duckdb":
                assert schema.tables == sorted(original.tables)
            else:
                assert schema.tables == original.tables
            assert schema.columns == expected.columns, (engine, db_id)
            assert sorted(schema.primary_keys) == sorted(expected.primary_keys), (engine, db_id)
            assert sorted(schema.foreign_keys) == sorted(expected.foreign_keys), (engine, db_id)
            assert describe(schema, "ddl") == describe(expected, "ddl") or engine == "duckdb"
    assert engines_seen >= {"sqlite", "duckdb"}


def test_the_same_sql_gives_the_same_rows_on_every_engine(copies):
    specs = copies["databases"]["airline"]
    queries = [
        "SELECT name, country FROM airline ORDER BY airline_id",
        'SELECT Name FROM AIRLINE WHERE country = "Spain"',  # SQLite: a double-quoted non-name is a string
        "SELECT count(*) FROM airline WHERE name LIKE '%air%'",  # SQLite's LIKE ignores case
        "SELECT T1.name, count(*) FROM airline AS T1 JOIN flight AS T2 ON T1.airline_id = T2.airline_id "
        "GROUP BY T1.name ORDER BY count(*) DESC, T1.name LIMIT 3",
        "SELECT avg(fleet_size) > 0, max(founded_year) FROM airline",
    ]
    for sql in queries:
        results = {}
        for engine, spec in specs.items():
            database = open_database(spec)
            result = database.run(sql, names=read_schema(database).names())
            assert result.ok, (engine, sql, result.error)
            results[engine] = [
                tuple(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in row) for row in result.rows
            ]
        assert all(rows == results["sqlite"] for rows in results.values()), (sql, results)


def _fingerprint(spec: str) -> str:
    database = open_database(spec)
    if database.engine != "postgresql":
        return hashlib.sha256(Path(spec).read_bytes()).hexdigest()
    import psycopg

    with psycopg.connect(spec) as conn:
        rows = conn.execute("SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables ORDER BY 1").fetchall()
        return repr(rows) + repr(conn.execute("SELECT count(*) FROM flight").fetchone())


@pytest.mark.parametrize("engine", ["duckdb", "postgresql"])
def test_the_sandbox_holds_on_every_engine(copies, engine):
    specs = copies["databases"]["airline"]
    if engine not in specs:
        pytest.skip("no PostgreSQL binaries on this machine")
    database = open_database(specs[engine])
    before = _fingerprint(specs[engine])
    refused = {
        "DELETE FROM flight": "refused: DELETE statements are not allowed",
        "DROP TABLE flight": "refused: DROP statements are not allowed",
        "SELECT 1; DELETE FROM flight": "refused: only one SQL statement is allowed",
        "SELECT 1; SELECT 2": "refused: only one SQL statement is allowed",
    }
    for sql, error in refused.items():
        assert database.run_native(sql).error == error, sql
    cte = database.run_native("WITH x AS (DELETE FROM flight RETURNING *) SELECT count(*) FROM x")
    assert not cte.ok
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    assert database.run(slow, timeout_s=1.0).error == "timeout after 1.0s"
    assert database.run("SELECT * FROM flight", max_rows=10).error == "result too large: more than 10 rows"
    if engine == "duckdb":
        for sql in ("SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('/etc/hostname')"):
            assert database.run_native(sql).error.startswith("refused: Permission Error"), sql
    else:
        assert not database.run_native("SELECT nextval('x')").ok
        assert (
            "read-write mode must be set before any query"
            in database.run_native("SELECT set_config('transaction_read_only', 'off', false)").error
        )
    assert _fingerprint(specs[engine]) == before


def test_to_dialect_keeps_sqlites_meaning():
    names = {"Singer", "name", "Country"}
    assert (
        to_dialect('SELECT name FROM singer WHERE country = "France"', "postgres", names)
        == 'SELECT name FROM "Singer" WHERE "Country" = \'France\''
    )
    assert (
        to_dialect("SELECT name FROM Singer WHERE name LIKE 'a%'", "duckdb", names) == "SELECT name FROM \"Singer\" WHERE name ILIKE 'a%'"
    )
    assert to_dialect("SELECT 1", "sqlite", names) == "SELECT 1"
    # What sqlglot cannot read is a ValueError (the answer's error), not a crash: bad syntax, an unclosed
    # quote (a tokenizer error: met serving DuckDB under load), nesting past its recursion depth.
    for bad in ["SELECT FROM WHERE (", "SELECT name FROM singer WHERE name = 'escape Azer", "SELECT " + "(" * 5000 + "1" + ")" * 5000]:
        with pytest.raises(ValueError):
            to_dialect(bad, "duckdb", names)


def test_open_database_bad_input(tmp_path, copies):
    with pytest.raises(SqloraError, match=r"unknown database engine 'mysql'; expected a SQLite or DuckDB file"):
        open_database("mysql://u:pw@localhost/shop")
    with pytest.raises(SqloraError, match=r"mysql://u:\*\*\*@localhost/shop"):
        open_database("mysql://u:pw@localhost/shop")
    with pytest.raises(SqloraError, match="no such file"):
        open_database(tmp_path / "none.duckdb")
    (tmp_path / "text.db").write_text("hello")
    with pytest.raises(SqloraError, match="not a SQLite database, nor a DuckDB one"):
        open_database(tmp_path / "text.db")
    with pytest.raises(SqloraError, match="not a duckdb database file"):
        open_database("duckdb:" + copies["databases"]["airline"]["sqlite"])
    with pytest.raises(SqloraError, match="the URL names no database"):
        open_database("postgresql://u@127.0.0.1:1/")
    with pytest.raises(SqloraError, match=r"postgresql://u:\*\*\*@127.0.0.1:1/shop: cannot connect"):
        open_database("postgresql://u:secret@127.0.0.1:1/shop")
    if copies["pg"]:
        with pytest.raises(SqloraError, match="no schema 'sales'"):
            open_database(copies["databases"]["airline"]["postgresql"] + "?schema=sales")
        empty = copies["databases"]["airline"]["postgresql"].rsplit("/", 1)[0] + "/postgres"
        with pytest.raises(SqloraError, match=r"the database has no tables \(schema 'public'\)"):
            read_schema(empty)


def test_evaluate_on_every_engine_gives_the_sqlite_scores(copies, sample_dir):
    from sqlora.evaluate.execution import Gold, evaluate

    questions = [
        ("airline", "SELECT name FROM airline WHERE country = 'Spain'"),
        ("airline", "SELECT count(*) FROM flight"),
        ("airline", "SELECT max(price) FROM flight"),
    ]
    golds = [Gold(sql, db_id, f"gold #{i}") for i, (db_id, sql) in enumerate(questions, 1)]
    preds = ['SELECT Name FROM airline WHERE Country = "Spain"', "SELECT count(flight_id) FROM flight", "SELECT min(price) FROM flight"]
    places = {"sqlite": sample_dir / "database", "duckdb": str(copies["duck_dir"] / "{db_id}.duckdb")}
    if copies["pg"]:
        places["postgresql"] = copies["pg"] + "/{db_id}"
    scores = {engine: [e.exec for e in evaluate(golds, preds, place, workers=1).examples] for engine, place in places.items()}
    assert all(s == [1, 1, 0] for s in scores.values()), scores
    with pytest.raises(SqloraError, match=r"gold #1: no database for db_id 'airline'.*no such file"):
        evaluate(golds, preds, str(copies["duck_dir"] / "missing-{db_id}.duckdb"), workers=1)


def test_ask_prompts_the_same_on_every_engine(copies, tiny_model_dir, tmp_path):
    """The prompt built from a PostgreSQL catalog is the one the SQLite file gives (what the model was trained on);
    DuckDB's tells the same tables in name order."""
    import json

    from sqlora.config import PromptParams
    from sqlora.infer.assistant import prepare

    model = tmp_path / "none"
    model.mkdir()
    (model / "sqlora_model.json").write_text(json.dumps({"method": "none", "base": str(tiny_model_dir)}))
    for schema_format in ("natural", "ddl_rows"):
        prompt = PromptParams(schema_format=schema_format, sample_rows=2)
        prompts = {
            engine: prepare(spec, "How many flights?", model, tiny_model_dir, prompt=prompt).prompt
            for engine, spec in copies["databases"]["airline"].items()
        }
        assert prompts["sqlite"] == prompts.get("postgresql", prompts["sqlite"])
        assert prompts["duckdb"].count("\n") == prompts["sqlite"].count("\n")  # the same tables, in name order
