"""Run one untrusted, read-only SQL query against a SQLite database file.

Model-written SQL is untrusted, so a query runs under several independent guards:

* the file is opened read-only (``mode=ro`` URI) and ATTACH is capped at zero databases;
* the text must be a single SELECT / WITH / VALUES statement;
* an authorizer allows only the actions a read query needs (SELECT, READ, FUNCTION, RECURSIVE)
  and denies everything else: writes, DDL (also on the writable ``temp`` schema), ATTACH/DETACH
  (which is how ``VACUUM INTO`` writes a copy), PRAGMA, transactions, savepoints, and the
  ``load_extension()`` SQL function (extension loading is also switched off on the connection);
* a progress handler and a timer thread abort the query once its deadline has passed;
* SQLite's heap is capped with ``PRAGMA hard_heap_limit`` and the rows brought into Python are
  capped by count and by (approximate) size.

``immutable=1`` is deliberately *not* used: it tells SQLite the file can never change, so it
skips locking and ignores a WAL file, which can silently give stale or wrong answers if a
database is in WAL mode or is being rewritten. ``mode=ro`` already makes writes impossible.

The heap limit is process-wide, and ``PRAGMA hard_heap_limit`` can only lower it, never raise
it (only the C API can). So the first query in a process lowers SQLite's heap limit for that
process to ``memory_limit_mb`` for good, and a later call asking for more keeps the lower
limit. Evaluation runs queries in worker processes, where that is exactly what is wanted; when
called in-process, SQLite use elsewhere in the same process is capped too.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

# Actions a plain SELECT / WITH / compound query needs; everything else is denied.
_ALLOWED_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
# Names for the authorizer action codes, only to say in the error what was refused.
_ACTION_NAMES = {
    getattr(sqlite3, name): name.removeprefix("SQLITE_")
    for name in (
        "SQLITE_CREATE_INDEX",
        "SQLITE_CREATE_TABLE",
        "SQLITE_CREATE_TEMP_INDEX",
        "SQLITE_CREATE_TEMP_TABLE",
        "SQLITE_CREATE_TEMP_TRIGGER",
        "SQLITE_CREATE_TEMP_VIEW",
        "SQLITE_CREATE_TRIGGER",
        "SQLITE_CREATE_VIEW",
        "SQLITE_DELETE",
        "SQLITE_DROP_INDEX",
        "SQLITE_DROP_TABLE",
        "SQLITE_DROP_TEMP_INDEX",
        "SQLITE_DROP_TEMP_TABLE",
        "SQLITE_DROP_TEMP_TRIGGER",
        "SQLITE_DROP_TEMP_VIEW",
        "SQLITE_DROP_TRIGGER",
        "SQLITE_DROP_VIEW",
        "SQLITE_INSERT",
        "SQLITE_PRAGMA",
        "SQLITE_READ",
        "SQLITE_SELECT",
        "SQLITE_TRANSACTION",
        "SQLITE_UPDATE",
        "SQLITE_ATTACH",
        "SQLITE_DETACH",
        "SQLITE_ALTER_TABLE",
        "SQLITE_REINDEX",
        "SQLITE_ANALYZE",
        "SQLITE_CREATE_VTABLE",
        "SQLITE_DROP_VTABLE",
        "SQLITE_FUNCTION",
        "SQLITE_SAVEPOINT",
        "SQLITE_RECURSIVE",
    )
    if hasattr(sqlite3, name)
}
_FORBIDDEN_FUNCTIONS = {"load_extension"}

# Leading whitespace, comments and opening parentheses before the first keyword.
_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$)|\()*", re.DOTALL)
# First keywords of statements that are not queries; refused before SQLite sees them.
_NON_QUERY_STATEMENTS = {
    "ALTER",
    "ANALYZE",
    "ATTACH",
    "BEGIN",
    "COMMIT",
    "CREATE",
    "DELETE",
    "DETACH",
    "DROP",
    "END",
    "EXPLAIN",
    "INSERT",
    "PRAGMA",
    "REINDEX",
    "RELEASE",
    "REPLACE",
    "ROLLBACK",
    "SAVEPOINT",
    "UPDATE",
    "VACUUM",
}

# How many SQLite VM instructions run between deadline checks: frequent enough to stop within
# milliseconds of the deadline, rare enough that the Python callback costs nothing noticeable.
_PROGRESS_STEPS = 10_000
_FETCH_BATCH = 1_000


@dataclass(frozen=True)
class QueryResult:
    rows: list[tuple] | None  # None when the query did not produce a result
    error: str | None  # one line: "parse/execution error: ...", "timeout after 5.0s", "refused: ..."
    # The result's column names, for display (sqlora ask); not compared: two results are the
    # same answer when their rows are, whatever the columns are called (execution accuracy).
    columns: list[str] | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def run_query(
    db_path: str | Path,
    sql: str,
    timeout_s: float = 30.0,
    memory_limit_mb: int = 512,
    max_rows: int = 100_000,
) -> QueryResult:
    """Execute ``sql`` read-only on the SQLite file ``db_path``; never raises for bad SQL."""
    refusal = check_text(sql)
    if refusal is not None:
        return QueryResult(rows=None, error=refusal)

    try:
        conn = _connect(Path(db_path), memory_limit_mb)
    except Exception as e:  # noqa: BLE001 - any failure to open is reported, not raised
        return QueryResult(rows=None, error=one_line(f"parse/execution error: cannot open database: {e}"))

    denied: list[str] = []

    def authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, _src: str | None) -> int:
        if action in _ALLOWED_ACTIONS and not (action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _FORBIDDEN_FUNCTIONS):
            return sqlite3.SQLITE_OK
        target = " ".join(str(a) for a in (arg1, arg2) if a)
        denied.append(f"{_ACTION_NAMES.get(action, action)} {target}".strip())
        return sqlite3.SQLITE_DENY

    conn.set_authorizer(authorize)
    watchdog = _Watchdog(conn, timeout_s)
    try:
        cursor = conn.execute(sql)
        if cursor.description is None:
            return QueryResult(rows=None, error="parse/execution error: statement returned no result set")
        return fetch_capped(cursor, max_rows, memory_limit_mb)
    except Exception as e:  # noqa: BLE001 - untrusted SQL: every failure becomes a result
        if watchdog.expired:
            return QueryResult(rows=None, error=f"timeout after {float(timeout_s)}s")
        if denied:
            return QueryResult(rows=None, error=one_line(f"refused: not allowed: {denied[0]}"))
        if isinstance(e, sqlite3.ProgrammingError) and "one statement" in str(e):
            return QueryResult(rows=None, error="refused: only one SQL statement is allowed")
        if isinstance(e, MemoryError):
            return QueryResult(rows=None, error=f"memory limit: query needed more than {memory_limit_mb} MB")
        return QueryResult(rows=None, error=one_line(f"parse/execution error: {e}"))
    finally:
        watchdog.stop_and_close()


class _Watchdog:
    """Interrupts whatever ``conn`` is running once ``timeout_s`` has passed.

    A progress handler checks a monotonic deadline every few thousand VM instructions; that
    alone can overshoot badly when single instructions are slow (say a LIKE over a 50 MB string
    on every row), so a timer thread also calls ``interrupt()`` at the deadline. SQLite checks
    the interrupt flag between instructions, so either way the query stops within a row's work.
    """

    def __init__(self, conn: sqlite3.Connection, timeout_s: float) -> None:
        self.expired = False
        self._conn = conn
        self._deadline = time.monotonic() + timeout_s
        # interrupt() must never race with close(): it would touch a freed connection.
        self._lock = threading.Lock()
        self._closed = False
        conn.set_progress_handler(self._check, _PROGRESS_STEPS)
        self._timer = threading.Timer(timeout_s, self._interrupt)
        self._timer.daemon = True
        self._timer.start()

    def _check(self) -> int:
        if time.monotonic() > self._deadline:
            self.expired = True
            return 1  # non-zero aborts the running statement
        return 0

    def _interrupt(self) -> None:
        with self._lock:
            if not self._closed:
                self.expired = True
                self._conn.interrupt()

    def stop_and_close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            self._conn.close()


def check_text(sql: str) -> str | None:
    """Cheap checks on the SQL text before it reaches SQLite; returns an error or None."""
    rest = sql[_LEADING_NOISE.match(sql).end() :]
    if not rest.strip(" \t\r\n;"):
        return "parse/execution error: empty SQL"
    first_word = re.match(r"\w*", rest).group().upper()
    # Defence in depth next to the authorizer, which is what actually enforces read-only.
    if first_word in _NON_QUERY_STATEMENTS:
        return f"refused: {first_word} statements are not allowed"
    if first_word not in ("SELECT", "WITH", "VALUES"):
        return one_line(f"parse/execution error: not a query: {rest[:40]!r}")
    return None


def connect_read_only(db_path: str | Path) -> sqlite3.Connection:
    """A connection that cannot write to the file (``mode=ro``): how sqlora opens every database it reads."""
    return sqlite3.connect(f"file:{quote(str(Path(db_path).resolve()))}?mode=ro", uri=True)


def _connect(db_path: Path, memory_limit_mb: int) -> sqlite3.Connection:
    if not db_path.is_file():
        raise FileNotFoundError(f"no such file: {db_path}")
    conn = connect_read_only(db_path)
    try:
        # Some Spider databases hold text that is not valid UTF-8; drop the bad bytes (the same
        # way for gold and prediction, and as the official Spider evaluator does) instead of
        # failing the whole query.
        conn.text_factory = lambda raw: raw.decode("utf-8", errors="ignore")
        if hasattr(conn, "enable_load_extension"):  # absent when Python is built without it
            conn.enable_load_extension(False)
        if hasattr(conn, "setlimit"):  # Python >= 3.11; the authorizer denies ATTACH anyway
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        # Must run before the authorizer is installed, since the authorizer denies every PRAGMA.
        limit_bytes = memory_limit_mb * 1024 * 1024
        (current,) = conn.execute("PRAGMA hard_heap_limit").fetchone()
        if current == 0 or current > limit_bytes:
            conn.execute(f"PRAGMA hard_heap_limit={int(limit_bytes)}")
    except BaseException:
        conn.close()
        raise
    return conn


def fetch_capped(cursor, max_rows: int, memory_limit_mb: int) -> QueryResult:
    """Fetch rows in batches, stopping as soon as the result exceeds the row or size caps."""
    rows: list[tuple] = []
    budget = memory_limit_mb * 1024 * 1024
    size = 0
    while batch := cursor.fetchmany(_FETCH_BATCH):
        rows.extend(batch)
        if len(rows) > max_rows:
            return QueryResult(rows=None, error=f"result too large: more than {max_rows} rows")
        size += sum(_approx_size(value) for row in batch for value in row)
        if size > budget:
            return QueryResult(rows=None, error=f"result too large: more than {memory_limit_mb} MB")
    return QueryResult(rows=rows, error=None, columns=[d[0] for d in cursor.description])


def _approx_size(value: object) -> int:
    # Rough per-value footprint; only used to stop results that would exhaust memory.
    if isinstance(value, (str, bytes)):
        return 50 + len(value)
    return 32


def one_line(text: str) -> str:
    return " ".join(text.split())
