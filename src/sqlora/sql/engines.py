"""The databases sqlora queries: a SQLite file, a DuckDB file or a PostgreSQL database, behind one
:class:`Database` that runs untrusted, SQLite-style SQL read-only on any of them.

A model trained on Spider writes SQLite. On another engine its SQL is transpiled with sqlglot
(:func:`to_dialect`) and shown both ways; three SQLite habits are kept as SQLite means them:
a double-quoted word that names no column is a string (``WHERE name = "Bob"``), ``LIKE`` ignores
case, and unquoted names match the catalog's whatever their case.

Every engine gets the guarantees :mod:`sqlora.sql.sandbox` gives SQLite: one SELECT / WITH /
VALUES statement, opened read-only, a time limit, capped rows:

- DuckDB: ``read_only=True``, ``enable_external_access=false`` (no files, URLs, ATTACH or
  extensions: a query cannot read ``/etc/passwd`` through ``read_csv``), a memory limit, one
  thread, the configuration locked so a query cannot undo it; ``interrupt()`` at the deadline.
- PostgreSQL: a ``READ ONLY`` transaction that is always rolled back, ``statement_timeout``
  (and a client-side cancel as a second guard), ``search_path`` set to the chosen schema, rows
  pulled through a server-side cursor in batches. A read-only transaction still lets a query call
  functions such as ``pg_read_file`` when the role may: connect as a role that can only read
  (docs/deployment.md shows one).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlora.errors import SqloraError
from sqlora.sql.sandbox import QueryResult, check_text, fetch_capped, one_line, run_query

DIALECTS = {"sqlite": "sqlite", "duckdb": "duckdb", "postgresql": "postgres"}  # sqlglot's names
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
_DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of a DuckDB database file
_CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Database:
    """One database: ``location`` is a file path or a ``postgresql://`` URL (without sqlora's
    ``schema`` parameter); ``name`` is how it is addressed (the file's stem, the URL's database)."""

    engine: str
    location: str
    name: str
    schema: str = "public"  # PostgreSQL: the schema whose tables the model sees
    # The schema's table and column names, when known: how run() spells names as the catalog does.
    names: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def dialect(self) -> str:
        return DIALECTS[self.engine]

    def __str__(self) -> str:  # for messages: never a password
        return _without_password(self.location)

    def run(
        self, sql: str, *, timeout_s: float = 30.0, max_rows: int = 100_000, memory_limit_mb: int = 512, names: set[str] | None = None
    ) -> QueryResult:
        """Run SQLite-style ``sql`` read-only (transpiled first on another engine; ``names``: the
        schema's table and column names, see :func:`to_dialect`; default: ``self.names``). Never raises for bad SQL."""
        if self.engine == "sqlite":
            return run_query(self.location, sql, timeout_s=timeout_s, memory_limit_mb=memory_limit_mb, max_rows=max_rows)
        try:
            native = to_dialect(sql, self.dialect, names if names is not None else self.names or None)
        except ValueError as exc:
            return QueryResult(rows=None, error=one_line(f"parse/execution error: cannot transpile to {self.dialect}: {exc}"))
        return self.run_native(native, timeout_s=timeout_s, max_rows=max_rows, memory_limit_mb=memory_limit_mb)

    def run_native(self, sql: str, *, timeout_s: float = 30.0, max_rows: int = 100_000, memory_limit_mb: int = 512) -> QueryResult:
        """Run ``sql``, already in this engine's dialect, read-only. Never raises for bad SQL."""
        refusal = check_text(sql)
        if refusal is not None:
            return QueryResult(rows=None, error=refusal)
        if self.engine == "sqlite":
            return run_query(self.location, sql, timeout_s=timeout_s, memory_limit_mb=memory_limit_mb, max_rows=max_rows)
        if self.engine == "duckdb":
            return _run_duckdb(self.location, sql, timeout_s, max_rows, memory_limit_mb)
        return _run_postgres(self.location, self.schema, sql, timeout_s, max_rows, memory_limit_mb)


def with_names(database: Database, names: set[str]) -> Database:
    return replace(database, names=frozenset(names))


def run_sql(target: str | Path | Database, sql: str, timeout_s: float = 30.0) -> QueryResult:
    """``sql`` run read-only on a SQLite file (a path) or any :class:`Database`: what evaluation workers call."""
    if isinstance(target, Database):
        return target.run(sql, timeout_s=timeout_s)
    return run_query(target, sql, timeout_s=timeout_s)


def open_database(spec: str | Path, *, schema: str | None = None, check: bool = True) -> Database:
    """The database ``spec`` names: a SQLite or DuckDB file (told apart by their headers; ``duckdb:``
    before a path says it outright) or a ``postgresql://`` URL, whose ``?schema=`` (default ``public``,
    or ``schema``) picks the schema. ``check``: a PostgreSQL server is connected to once, so an
    unreachable one is an error here and not on the first question."""
    text = str(spec)
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", text)
    if scheme and scheme.group(1).lower() in ("postgresql", "postgres"):
        return _open_postgres(text, schema, check)
    if scheme and scheme.group(1).lower() == "duckdb":
        return _open_file(Path(text[len("duckdb:") :]), "duckdb")
    if scheme and len(scheme.group(1)) > 1:  # "C:" is a drive, not an engine
        raise SqloraError(
            f"{_without_password(text)}: unknown database engine {scheme.group(1)!r}; "
            "expected a SQLite or DuckDB file or a postgresql:// URL"
        )
    return _open_file(Path(text), None)


def _open_file(path: Path, engine: str | None) -> Database:
    if not path.is_file():
        raise SqloraError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    found = "sqlite" if head == SQLITE_HEADER else "duckdb" if head[8:12] == _DUCKDB_MAGIC else None
    if found is None:
        raise SqloraError(f"{path}: not a SQLite database, nor a DuckDB one (its first bytes are neither's header)")
    if engine is not None and found != engine:
        raise SqloraError(f"{path}: not a {engine} database file (it is a {found} one)")
    name = path.stem
    return Database(engine=found, location=str(path), name=name)


def _open_postgres(url: str, schema: str | None, check: bool) -> Database:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    chosen = schema or next((v for k, v in query if k == "schema"), None) or "public"
    libpq_query = [(k, v) for k, v in query if k != "schema"]  # libpq rejects parameters it does not know
    name = parts.path.lstrip("/") or next((v for k, v in libpq_query if k == "dbname"), "")
    if not name:
        raise SqloraError(f"{_without_password(url)}: the URL names no database (postgresql://host/DATABASE)")
    database = Database(
        engine="postgresql",
        location=urlunsplit(parts._replace(query=urlencode(libpq_query))),
        name=name,
        schema=chosen,
    )
    if check:
        with postgres_connection(database.location) as conn:
            found = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (chosen,)).fetchone()[0]
        if not found:
            raise SqloraError(f"{database}: no schema {chosen!r} in database {name!r}")
    return database


def to_dialect(sql: str, dialect: str, names: set[str] | None = None) -> str:
    """SQLite-style ``sql`` in ``dialect`` (sqlglot's name), meaning what SQLite would make of it:
    ``LIKE`` becomes case-insensitive (``ILIKE``); with the schema's table and column ``names``, a
    double-quoted word that names none of them becomes a string literal, and a name is spelt (and,
    where needed, quoted) as the catalog spells it, so ``Singer`` finds PostgreSQL's ``singer``.
    Raises ValueError when sqlglot cannot read it."""
    from sqlglot import exp

    from sqlora.sql.parse import parse_statement

    if dialect == "sqlite":
        return sql
    tree = parse_statement(sql)  # ValueError for what sqlglot cannot tokenize or parse, or nests too deep
    spelling = {n.lower(): n for n in names} if names else None

    def rewrite(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Like):
            return exp.ILike(this=node.this, expression=node.expression)
        if spelling is None:
            return node
        if (
            isinstance(node, exp.Column)
            and not node.table
            and isinstance(node.this, exp.Identifier)
            and node.this.quoted
            and node.name.lower() not in spelling
        ):
            return exp.Literal.string(node.name)  # SQLite: "text" that names no column is a string
        if isinstance(node, exp.Identifier) and node.name.lower() in spelling:
            exact = spelling[node.name.lower()]
            plain = exact == exact.lower() and re.fullmatch(r"[a-z_][a-z0-9_]*", exact)
            return exp.Identifier(this=exact, quoted=not plain)
        return node

    return tree.transform(rewrite).sql(dialect=dialect)


# --- DuckDB -----------------------------------------------------------------------------------


def connect_duckdb(path: str | Path, memory_limit_mb: int = 512):
    """A read-only DuckDB connection that can reach nothing but its own file."""
    import duckdb

    return duckdb.connect(
        str(path),
        read_only=True,
        config={
            "enable_external_access": False,  # no read_csv('/etc/passwd'), no ATTACH, no COPY, no httpfs
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "memory_limit": f"{int(memory_limit_mb)}MB",
            "threads": 1,  # one query, one core: concurrent questions share the machine
            "lock_configuration": True,  # a query cannot SET any of the above back
        },
    )


def _run_duckdb(path: str, sql: str, timeout_s: float, max_rows: int, memory_limit_mb: int) -> QueryResult:
    import duckdb

    try:
        conn = connect_duckdb(path, memory_limit_mb)
    except duckdb.Error as exc:
        return QueryResult(rows=None, error=one_line(f"parse/execution error: cannot open database: {exc}"))
    expired = threading.Event()
    timer = threading.Timer(timeout_s, lambda: (expired.set(), conn.interrupt()))
    try:
        statements = conn.extract_statements(sql)
        if len(statements) != 1:
            return QueryResult(rows=None, error="refused: only one SQL statement is allowed")
        if statements[0].type != duckdb.StatementType.SELECT:
            return QueryResult(rows=None, error=f"refused: {statements[0].type.name} statements are not allowed")
        timer.start()
        cursor = conn.execute(sql)
        if cursor.description is None:
            return QueryResult(rows=None, error="parse/execution error: statement returned no result set")
        return fetch_capped(cursor, max_rows, memory_limit_mb)
    except Exception as exc:  # noqa: BLE001 - untrusted SQL: every failure becomes a result
        if expired.is_set():
            return QueryResult(rows=None, error=f"timeout after {float(timeout_s)}s")
        if isinstance(exc, duckdb.OutOfMemoryException):
            return QueryResult(rows=None, error=f"memory limit: query needed more than {memory_limit_mb} MB")
        if isinstance(exc, duckdb.PermissionException):
            return QueryResult(rows=None, error=one_line(f"refused: {exc}"))
        return QueryResult(rows=None, error=one_line(f"parse/execution error: {exc}"))
    finally:
        timer.cancel()
        conn.close()


# --- PostgreSQL -------------------------------------------------------------------------------


def postgres_connection(url: str):
    """A connection (autocommit off) whose every transaction is read-only; SqloraError when the
    server cannot be reached or refuses us."""
    import psycopg

    try:
        conn = psycopg.connect(url, connect_timeout=_CONNECT_TIMEOUT_S, autocommit=False)
    except psycopg.Error as exc:
        reason = one_line(str(exc)) or type(exc).__name__
        raise SqloraError(f"{_without_password(url)}: cannot connect ({_without_password(reason)})") from None
    conn.read_only = True  # BEGIN READ ONLY: no INSERT, UPDATE, DDL, nextval() ... can commit or even run
    return conn


def _run_postgres(url: str, schema: str, sql: str, timeout_s: float, max_rows: int, memory_limit_mb: int) -> QueryResult:
    import psycopg

    try:
        conn = postgres_connection(url)
    except SqloraError as exc:
        return QueryResult(rows=None, error=one_line(f"parse/execution error: {exc}"))
    # A second guard beside statement_timeout: the client cancels a second after the deadline.
    expired = threading.Event()
    timer = threading.Timer(timeout_s + 1.0, lambda: (expired.set(), conn.cancel_safe()))
    try:
        with conn.cursor() as setup:
            # Local to this transaction, which is rolled back: nothing outlives the query.
            setup.execute(
                "SELECT set_config('statement_timeout', %s, true), set_config('search_path', %s, true)",
                (str(max(1, int(timeout_s * 1000))), _quote_ident(schema)),
            )
        timer.start()
        with conn.cursor(name="sqlora_query") as cursor:  # server-side: rows come in batches, capped
            cursor.execute(sql)
            if cursor.description is None:
                return QueryResult(rows=None, error="parse/execution error: statement returned no result set")
            return fetch_capped(cursor, max_rows, memory_limit_mb)
    except Exception as exc:  # noqa: BLE001 - untrusted SQL: every failure becomes a result
        if expired.is_set() or isinstance(exc, psycopg.errors.QueryCanceled):
            return QueryResult(rows=None, error=f"timeout after {float(timeout_s)}s")
        if isinstance(exc, (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)):
            return QueryResult(rows=None, error=one_line(f"refused: {exc}"))
        if "cannot insert multiple commands" in str(exc):
            return QueryResult(rows=None, error="refused: only one SQL statement is allowed")
        if isinstance(exc, psycopg.errors.OutOfMemory):
            return QueryResult(rows=None, error=f"memory limit: {one_line(str(exc))}")
        return QueryResult(rows=None, error=one_line(f"parse/execution error: {exc}"))
    finally:
        timer.cancel()
        try:
            conn.rollback()
        except psycopg.Error:
            pass  # a broken connection: closing it is all that is left to do
        conn.close()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _without_password(text: str) -> str:
    return re.sub(r"(://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)
