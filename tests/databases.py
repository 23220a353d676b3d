"""Real DuckDB and PostgreSQL databases for tests: a throwaway PostgreSQL cluster (``initdb``, ``pg_ctl``)
listening on 127.0.0.1 only, and copies of SQLite test databases on either engine.

The cluster needs Debian's ``postgresql`` binaries (``.ci/run`` installs them when missing); without
them the tests that use it skip, saying so. As root (CI), the server runs as the ``postgres`` user,
since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def postgres_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    return next((Path(f) for f in folders if (Path(f) / "initdb").exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """A cluster in a new folder under the system's temporary folder (one the ``postgres`` user can
    reach, unlike pytest's private ones), with a superuser ``sqlora`` (trust auth, 127.0.0.1 only)."""

    def __init__(self):
        binaries = postgres_binaries()
        if binaries is None:
            pytest.skip("needs PostgreSQL's initdb and pg_ctl (Debian: apt-get install postgresql)")
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
                pytest.skip("running as root needs the postgres user and runuser to start a PostgreSQL cluster")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        folder = Path(tempfile.mkdtemp(prefix="sqlora-postgres-"))
        self.bin, self.folder, self.port = binaries, folder, free_port()
        if self.prefix:
            shutil.chown(folder, "postgres")
        self.data = folder / "data"
        self._run("initdb", "-D", str(self.data), "-U", "sqlora", "--auth=trust", "-E", "UTF8", "--locale=C")
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(folder / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {folder} -c fsync=off",
            "start",
        )
        self.url = f"postgresql://sqlora@127.0.0.1:{self.port}"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.prefix, str(self.bin / tool), *args], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{tool} failed: {done.stderr.strip() or done.stdout.strip()}")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"{self.url}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        for _ in range(50):  # the server removes its files as it goes
            if not (self.data / "postmaster.pid").exists():
                break
            time.sleep(0.1)
        shutil.rmtree(self.folder, ignore_errors=True)


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]


def _pg_type(declared: str) -> str:
    t = (declared or "").upper()
    if "INT" in t:
        return "bigint"
    if any(w in t for w in ("REAL", "FLOA", "DOUB")):
        return "double precision"
    if any(w in t for w in ("NUMERIC", "DECIMAL")):
        return "numeric"
    if "BLOB" in t:
        return "bytea"
    return "text"


def _create_statements(conn: sqlite3.Connection, type_of) -> list[tuple[str, str, list[str]]]:
    """(table, CREATE TABLE with keys, column names) per table, in SQLite's order."""
    out = []
    for table in _tables(conn):
        info = conn.execute("SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid", (table,)).fetchall()
        parts = [f'"{name}" {type_of(declared)}' for name, declared, _ in info]
        key = [name for name, _, pk in sorted(info, key=lambda r: r[2]) if pk]
        if key:
            parts.append("PRIMARY KEY (" + ", ".join(f'"{k}"' for k in key) + ")")
        out.append((table, f'CREATE TABLE "{table}" ({", ".join(parts)})', [name for name, _, _ in info]))
    return out


def _foreign_keys(conn: sqlite3.Connection, table: str) -> list[tuple[str, str, str]]:
    """In declaration order: SQLite lists the last-declared first."""
    return [
        (source, target, to)
        for _, target, source, to in conn.execute(
            'SELECT seq, "table", "from", "to" FROM pragma_foreign_key_list(?) ORDER BY id DESC, seq', (table,)
        )
        if to
    ]


def copy_to_postgres(sqlite_path: Path, url: str) -> None:
    """The tables, rows, primary and (single-column) foreign keys of a SQLite file, into the empty database at ``url``."""
    import psycopg

    source = sqlite3.connect(sqlite_path)
    with psycopg.connect(url, autocommit=True) as conn:
        statements = _create_statements(source, _pg_type)
        for table, create, columns in statements:
            conn.execute(create)
            rows = source.execute(f'SELECT * FROM "{table}"').fetchall()
            with conn.cursor() as cur:
                placeholders = ", ".join(["%s"] * len(columns))
                cur.executemany(f'INSERT INTO "{table}" VALUES ({placeholders})', rows)
        for table, _, _ in statements:
            for source_column, target, to in _foreign_keys(source, table):
                conn.execute(f'ALTER TABLE "{table}" ADD FOREIGN KEY ("{source_column}") REFERENCES "{target}" ("{to}") NOT VALID')
    source.close()


def copy_to_duckdb(sqlite_path: Path, out: Path) -> Path:
    """The same copy as :func:`copy_to_postgres`, into a new DuckDB file ``out``."""
    import duckdb

    source = sqlite3.connect(sqlite_path)
    conn = duckdb.connect(str(out))
    statements = _create_statements(
        source,
        lambda d: {"bigint": "BIGINT", "double precision": "DOUBLE", "numeric": "DOUBLE", "bytea": "BLOB"}.get(_pg_type(d), "VARCHAR"),
    )
    for table, create, columns in statements:
        fks = [f', FOREIGN KEY ("{s}") REFERENCES "{t}" ("{to}")' for s, t, to in _foreign_keys(source, table)]
        try:
            conn.execute(create[:-1] + "".join(fks) + ")")
        except duckdb.Error:  # Spider's keys may join columns of different types: DuckDB refuses those
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
            conn.execute(create)
        rows = source.execute(f'SELECT * FROM "{table}"').fetchall()
        if rows:
            conn.executemany(f'INSERT INTO "{table}" VALUES ({", ".join(["?"] * len(columns))})', rows)
    conn.close()
    source.close()
    return out
