import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sqlora.sql.sandbox import QueryResult, run_query

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "shop" / "shop.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    conn.executemany("INSERT INTO item VALUES (?, ?, ?)", [(i, f"item{i}", i * 1.5) for i in range(1, 301)])
    # Bytes that are not valid UTF-8 stored as TEXT, as in some Spider databases.
    conn.execute("CREATE TABLE note (id INTEGER, body TEXT)")
    conn.execute("INSERT INTO note VALUES (1, CAST(X'4F4BFF21' AS TEXT))")
    conn.commit()
    conn.close()
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_select_returns_rows(db: Path) -> None:
    result = run_query(db, "SELECT id, name FROM item WHERE id <= 2 ORDER BY id")
    assert result == QueryResult(rows=[(1, "item1"), (2, "item2")], error=None)
    assert result.ok


def test_with_compound_and_values_are_allowed(db: Path) -> None:
    sql = "WITH cheap AS (SELECT id FROM item WHERE price < 3) SELECT id FROM cheap UNION SELECT 99"
    assert run_query(db, sql).rows == [(1,), (99,)]
    assert run_query(db, "VALUES (1, 'a')").rows == [(1, "a")]
    assert run_query(db, "-- leading comment\nSELECT count(*) FROM item;").rows == [(300,)]


WRITES_AND_ADMIN = [
    "DROP TABLE item",
    "DELETE FROM item",
    "UPDATE item SET price = 0",
    "INSERT INTO item VALUES (1000, 'x', 1.0)",
    "CREATE TABLE t (a)",
    "CREATE TEMP TABLE t (a)",
    "ATTACH DATABASE ':memory:' AS other",
    "PRAGMA writable_schema=1",
    "BEGIN IMMEDIATE",
    "SELECT load_extension('x')",
    # These pass the keyword check, so the authorizer is what stops them.
    "WITH x AS (SELECT 1) DELETE FROM item",
    "WITH x AS (SELECT 1) INSERT INTO item SELECT 1000, 'x', 1.0 FROM x",
    "SELECT * FROM pragma_table_info('item')",
]


@pytest.mark.parametrize("sql", WRITES_AND_ADMIN)
def test_writes_ddl_attach_pragma_are_refused(db: Path, sql: str) -> None:
    before = sha256(db)
    result = run_query(db, sql)
    assert result.rows is None
    assert result.error is not None and result.error.startswith("refused:"), result.error
    assert sha256(db) == before


def test_vacuum_into_is_refused_and_writes_nothing(db: Path, tmp_path: Path) -> None:
    target = tmp_path / "copy.sqlite"
    result = run_query(db, f"VACUUM INTO '{target}'")
    assert result.rows is None and result.error.startswith("refused:")
    assert not target.exists()


def test_database_file_is_unchanged_after_everything(db: Path, tmp_path: Path) -> None:
    before = sha256(db)
    files_before = sorted(p.name for p in db.parent.iterdir())
    for sql in [*WRITES_AND_ADMIN, f"VACUUM INTO '{tmp_path / 'copy.sqlite'}'", "VACUUM", "REINDEX"]:
        assert not run_query(db, sql).ok
    assert run_query(db, "SELECT count(*) FROM item").rows == [(300,)]
    assert sha256(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == files_before  # no journal, no copy


@pytest.mark.parametrize(
    "sql",
    [
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        "SELECT count(*) FROM item AS a, item AS b, item AS c, item AS d",  # 8.1e9 rows
        # Few but slow VM instructions (a LIKE over 50 MB per row): the progress handler alone
        # would only notice after ~30 s.
        "SELECT count(*) FROM item WHERE printf('%.*c', 50000000 + id, 'x') LIKE '%y%'",
    ],
    ids=["infinite-recursive-cte", "huge-cross-join", "slow-instructions"],
)
def test_runaway_queries_time_out(db: Path, sql: str) -> None:
    start = time.monotonic()
    result = run_query(db, sql, timeout_s=1)
    elapsed = time.monotonic() - start
    assert result == QueryResult(rows=None, error="timeout after 1.0s")
    assert elapsed < 2.0


def test_invalid_utf8_text_does_not_crash(db: Path) -> None:
    result = run_query(db, "SELECT body FROM note")
    assert result.ok
    assert result.rows == [("OK!",)]  # the bad byte dropped, as the official Spider evaluator does


def test_multiple_statements_are_refused(db: Path) -> None:
    result = run_query(db, "SELECT 1; DROP TABLE item")
    assert result.rows is None and result.error.startswith("refused:")
    assert run_query(db, "SELECT count(*) FROM item").rows == [(300,)]


@pytest.mark.parametrize("sql", ["", "   \n", ";", "-- only a comment"])
def test_empty_sql_is_an_error(db: Path, sql: str) -> None:
    assert run_query(db, sql) == QueryResult(rows=None, error="parse/execution error: empty SQL")


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT nope FROM item", "SELECT * FROM missing", "Answer: 42"])
def test_bad_sql_is_an_error_not_an_exception(db: Path, sql: str) -> None:
    result = run_query(db, sql)
    assert result.rows is None
    assert result.error.startswith("parse/execution error:")
    assert "\n" not in result.error


def test_missing_database_is_an_error(tmp_path: Path) -> None:
    result = run_query(tmp_path / "nope.sqlite", "SELECT 1")
    assert result.rows is None and result.error.startswith("parse/execution error:")
    assert not (tmp_path / "nope.sqlite").exists()  # read-only open must not create it


def test_row_cap(db: Path) -> None:
    assert run_query(db, "SELECT id FROM item", max_rows=300).ok
    result = run_query(db, "SELECT id FROM item", max_rows=299)
    assert result == QueryResult(rows=None, error="result too large: more than 299 rows")


def test_memory_limit(db: Path) -> None:
    # The SQLite heap limit is process-wide and can only go down, so try a tiny one in a child
    # process rather than lowering it for the rest of this test session.
    code = (
        "import sys; from sqlora.sql.sandbox import run_query\n"
        "sql = ('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000) '\n"
        "       'SELECT length(group_concat(hex(randomblob(100)))) FROM c')\n"
        "print(run_query(sys.argv[1], sql, memory_limit_mb=16).error)\n"
        "print(run_query(sys.argv[1], 'SELECT count(*) FROM item', memory_limit_mb=16).rows)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC)},
        check=True,
    ).stdout.splitlines()
    assert out == ["memory limit: query needed more than 16 MB", "[(300,)]"]
