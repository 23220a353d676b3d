"""Database schemas from Spider's tables.json or a SQLite file itself, and their description for the prompt.

Four formats (``prompt.schema_format``):

- ``natural``: the schema told in words, tables, columns, primary and foreign keys (DB-GPT-Hub style);
- ``ddl``: CREATE TABLE statements with column types, primary and foreign keys;
- ``ddl_rows``: the same, each followed by the first N rows of the table, read from the database;
- ``compact``: one line per table, ``table(column type, ...)``, keys marked in place (about half of
  ``ddl``'s tokens, so fewer schemas shrink to fit the budget).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

from sqlora.errors import SqloraError
from sqlora.sql.engines import SQLITE_HEADER, Database
from sqlora.sql.sandbox import connect_read_only


@dataclass(frozen=True)
class Column:
    table: int  # index into DatabaseSchema.tables
    name: str  # original name, as in the database
    type: str  # Spider's type: text, number, time, boolean, others
    natural: str = ""  # Spider's natural-language name ("singer id")


@dataclass(frozen=True)
class DatabaseSchema:
    db_id: str
    tables: list[str]  # original table names
    columns: list[Column]  # without Spider's leading "*" entry; indexes below are Spider's (1-based)
    primary_keys: list[tuple[int, ...]]  # one tuple per table key; a composite key has several columns
    foreign_keys: list[tuple[int, int]]  # (column, referenced column), Spider column indexes
    table_natural: list[str] | None = None  # Spider's natural table names

    def names(self) -> set[str]:
        """Every table and column name: what :func:`sqlora.sql.engines.to_dialect` spells as the catalog does."""
        return {*self.tables, *(c.name for c in self.columns)}

    def column(self, spider_index: int) -> Column:
        return self.columns[spider_index - 1]

    def table_columns(self, table: int) -> list[int]:
        return [i for i, c in enumerate(self.columns, 1) if c.table == table]

    def subset(self, tables: list[int], drop_columns: frozenset[int] = frozenset()) -> DatabaseSchema:
        """The schema restricted to ``tables`` (in the given order) minus ``drop_columns``;
        keys that lose a column are left out, so nothing refers to what is gone."""
        keep = [i for t in tables for i in self.table_columns(t) if i not in drop_columns]
        new_index = {old: new for new, old in enumerate(keep, 1)}
        new_table = {old: new for new, old in enumerate(tables)}
        return replace(
            self,
            tables=[self.tables[t] for t in tables],
            table_natural=[self.table_natural[t] for t in tables] if self.table_natural else None,
            columns=[replace(self.column(i), table=new_table[self.column(i).table]) for i in keep],
            primary_keys=[tuple(new_index[c] for c in key) for key in self.primary_keys if all(c in new_index for c in key)],
            foreign_keys=[(new_index[a], new_index[b]) for a, b in self.foreign_keys if a in new_index and b in new_index],
        )


def read_sqlite_schema(db_path: str | Path, db_id: str | None = None) -> DatabaseSchema:
    """The schema of a SQLite file, read from the file itself (opened read-only), as tables.json tells it.

    Tables in ``sqlite_master`` order without SQLite's own ``sqlite_*`` tables; columns in table
    order, typed in Spider's classes; primary keys in key order (composite ones too); foreign keys
    in ``PRAGMA foreign_key_list`` order (the reverse of declaration, as in Spider's tables.json),
    one that names no target column referring to the target's primary key. Natural names are
    derived as Spider's own extraction derived them before annotators polished them: lower case,
    underscores as spaces. ``db_id``: the file's stem.
    """
    path = Path(db_path)
    if not path.is_file():
        raise SqloraError(f"{path}: no such file")
    with open(path, "rb") as f:
        # SQLite would read an empty or foreign file as an empty database, or fail only on the first query.
        if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise SqloraError(f"{path}: not a SQLite database (its first 16 bytes are not 'SQLite format 3\\0')")
    try:
        conn = connect_read_only(path)
        try:
            return _read_schema(conn, db_id or path.stem)
        finally:
            conn.close()
    except sqlite3.Error as exc:  # corrupt, encrypted, locked: one line for the user
        raise SqloraError(f"{path}: cannot read its schema ({exc})") from None


def _read_schema(conn: sqlite3.Connection, db_id: str) -> DatabaseSchema:
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"
        )
    ]
    columns: list[Column] = []
    primary_keys: list[tuple[int, ...]] = []
    key_of: dict[int, tuple[int, ...]] = {}  # table -> its primary key, for foreign keys that name no column
    index: dict[tuple[int, str], int] = {}  # (table, lower-case column name) -> Spider column index
    for t, table in enumerate(tables):
        key = []
        for name, declared, pk in conn.execute("SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid", (table,)):
            columns.append(Column(table=t, name=name, type=type_class(declared), natural=name.lower().replace("_", " ")))
            index[(t, name.lower())] = len(columns)
            if pk:  # pk is the column's 1-based position in the key
                key.append((pk, len(columns)))
        if key:
            key_of[t] = tuple(i for _, i in sorted(key))
            primary_keys.append(key_of[t])
    table_index = {name.lower(): t for t, name in enumerate(tables)}  # SQLite names are case-insensitive
    foreign_keys: list[tuple[int, int]] = []
    for t, table in enumerate(tables):
        rows = conn.execute('SELECT seq, "table", "from", "to" FROM pragma_foreign_key_list(?) ORDER BY id, seq', (table,))
        for seq, target, source, target_column in rows:
            ref_table = table_index.get(target.lower())
            if ref_table is None:  # a dangling reference: nothing to describe
                continue
            if target_column is None:
                target_key = key_of.get(ref_table, ())
                ref = target_key[seq] if seq < len(target_key) else None
            else:
                ref = index.get((ref_table, target_column.lower()))
            col = index.get((t, source.lower()))
            if col is not None and ref is not None and (col, ref) not in foreign_keys:
                foreign_keys.append((col, ref))
    return DatabaseSchema(
        db_id=db_id,
        tables=tables,
        columns=columns,
        primary_keys=primary_keys,
        foreign_keys=foreign_keys,
        table_natural=[name.lower().replace("_", " ") for name in tables],
    )


def type_class(declared: str | None) -> str:
    """Spider's type class of a declared column type, by the rules Spider's tables.json was made with."""
    t = (declared or "").lower()
    if not t or any(w in t for w in ("char", "text", "var")):
        return "text"
    if any(w in t for w in ("int", "numeric", "decimal", "number", "id", "real", "double", "float")):
        return "number"
    if any(w in t for w in ("date", "time", "year")):
        return "time"
    return "boolean" if "boolean" in t else "others"


def describe(schema: DatabaseSchema, schema_format: str, db_path: Path | Database | None = None, sample_rows: int = 0) -> str:
    if schema_format == "natural":
        return describe_natural(schema)
    if schema_format == "compact":
        return describe_compact(schema)
    return describe_ddl(schema, db_path if schema_format == "ddl_rows" else None, sample_rows)


def describe_natural(schema: DatabaseSchema) -> str:
    """The schema in words, DB-GPT-Hub style, with every key told correctly.

    ``<db> contains tables such as a, b. Table a has columns such as x, y. x is the primary key.``
    then one line per foreign key: ``The y of b is the foreign key of x of a.``
    """
    lines = [f"{schema.db_id} contains tables such as {', '.join(schema.tables)}."]
    keys_by_table = _keys_by_table(schema)
    for t, table in enumerate(schema.tables):
        names = [schema.column(i).name for i in schema.table_columns(t)]
        sentence = f"Table {table} has columns such as {', '.join(names)}."
        for key in keys_by_table.get(t, []):
            key_names = [schema.column(i).name for i in key]
            if len(key_names) == 1:
                sentence += f" {key_names[0]} is the primary key."
            else:
                sentence += f" {', '.join(key_names[:-1])} and {key_names[-1]} together are the primary key."
        lines.append(sentence)
    for col, ref in schema.foreign_keys:
        c, r = schema.column(col), schema.column(ref)
        lines.append(f"The {c.name} of {schema.tables[c.table]} is the foreign key of {r.name} of {schema.tables[r.table]}.")
    return "\n".join(lines)


_SQL_TYPES = {"text": "text", "number": "number", "time": "time", "boolean": "boolean", "others": "text"}


def _ident(name: str) -> str:
    """An identifier as SQLite accepts it: bare when plain, otherwise double-quoted."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def describe_ddl(schema: DatabaseSchema, db_path: Path | Database | None = None, sample_rows: int = 0) -> str:
    """CREATE TABLE statements with types and keys; with ``db_path`` and ``sample_rows``, each is
    followed by its first rows (the "CREATE TABLE + SELECT N" prompt of Rajkumar et al., 2022)."""
    keys_by_table = _keys_by_table(schema)
    statements = []
    for t, table in enumerate(schema.tables):
        lines = [f"  {_ident(schema.column(i).name)} {_SQL_TYPES.get(schema.column(i).type, 'text')}" for i in schema.table_columns(t)]
        for key in keys_by_table.get(t, []):
            lines.append(f"  PRIMARY KEY ({', '.join(_ident(schema.column(i).name) for i in key)})")
        for col, ref in schema.foreign_keys:
            if schema.column(col).table == t:
                r = schema.column(ref)
                lines.append(
                    f"  FOREIGN KEY ({_ident(schema.column(col).name)}) REFERENCES {_ident(schema.tables[r.table])}({_ident(r.name)})"
                )
        statement = f"CREATE TABLE {_ident(table)} (\n" + ",\n".join(lines) + "\n);"
        if db_path is not None and sample_rows > 0:
            statement += "\n" + _sample_rows(db_path, schema, t, sample_rows)
        statements.append(statement)
    return "\n".join(statements)


def describe_compact(schema: DatabaseSchema) -> str:
    """``singer(Singer_ID number primary key, Name text, Country text)``, one line per table; a foreign
    key as ``references table(column)`` after its column, a composite key as ``primary key (a, b)``."""
    keys_by_table = _keys_by_table(schema)
    references = {col: ref for col, ref in schema.foreign_keys}
    lines = []
    for t, table in enumerate(schema.tables):
        single = {key[0] for key in keys_by_table.get(t, []) if len(key) == 1}
        parts = []
        for i in schema.table_columns(t):
            column = schema.column(i)
            part = f"{_ident(column.name)} {_SQL_TYPES.get(column.type, 'text')}" + (" primary key" if i in single else "")
            if i in references:
                r = schema.column(references[i])
                part += f" references {_ident(schema.tables[r.table])}({_ident(r.name)})"
            parts.append(part)
        for key in keys_by_table.get(t, []):
            if len(key) > 1:
                parts.append(f"primary key ({', '.join(_ident(schema.column(i).name) for i in key)})")
        lines.append(f"{_ident(table)}({', '.join(parts)})")
    return "\n".join(lines)


def _sample_rows(db: Path | Database, schema: DatabaseSchema, table: int, n: int) -> str:
    from sqlora.sql.sandbox import run_query

    names = [schema.column(i).name for i in schema.table_columns(table)]
    query = f"SELECT {', '.join(_ident(c) for c in names)} FROM {_ident(schema.tables[table])} LIMIT {n}"
    if isinstance(db, Database):  # quoted as SQLite quotes; transpiled for DuckDB and PostgreSQL
        result = db.run(query, timeout_s=10.0, names=schema.names())
    else:
        result = run_query(db, query, timeout_s=10.0)
    rows = result.rows or []
    # Long cell values (BLOBs, essays) would crowd out the schema: cut each to 40 characters.
    body = "\n".join(" | ".join(cell(v) for v in row) for row in rows)
    return (
        f"/*\n{len(rows)} example rows:\n{query};\n{' | '.join(names)}\n{body}\n*/" if rows else f"/* {schema.tables[table]} has no rows */"
    )


def cell(value, max_width: int = 40) -> str:
    """A database value on one line: NULL, a BLOB's size, or its text cut to ``max_width`` characters."""
    text = "NULL" if value is None else (f"<{len(value)} bytes>" if isinstance(value, bytes) else str(value))
    text = " ".join(text.split())  # one line per row, whatever the cell holds
    return text if len(text) <= max_width else text[: max_width - 3] + "..."


def _keys_by_table(schema: DatabaseSchema) -> dict[int, list[tuple[int, ...]]]:
    keys: dict[int, list[tuple[int, ...]]] = {}
    for key in schema.primary_keys:
        keys.setdefault(schema.column(key[0]).table, []).append(key)
    return keys


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()))


def shrink_order(schema: DatabaseSchema, question: str) -> list[int]:
    """Tables from least to most related to the question: the order in which the length budget
    drops them. Relatedness is the number of words the question shares with the table's name and
    its columns' names; ties drop later tables first."""
    asked = _words(question)

    def overlap(t: int) -> int:
        names = [schema.tables[t], *(schema.column(i).name for i in schema.table_columns(t))]
        if schema.table_natural:
            names.append(schema.table_natural[t])
        names += [schema.column(i).natural for i in schema.table_columns(t)]
        return len(asked & set().union(*(_words(n) for n in names)))

    return sorted(range(len(schema.tables)), key=lambda t: (overlap(t), -t))


def database_path(database_dir: str | Path, db_id: str) -> Path:
    """Where a dataset's database folder holds the SQLite file of ``db_id`` (Spider's layout)."""
    return Path(database_dir) / db_id / f"{db_id}.sqlite"


def spider_entry(schema: DatabaseSchema) -> dict:
    """``schema`` as a Spider ``tables.json`` entry (what :func:`sqlora.data.layouts.load_schemas` reads back)."""
    natural = schema.table_natural or [t.lower().replace("_", " ") for t in schema.tables]
    return {
        "db_id": schema.db_id,
        "table_names": natural,
        "table_names_original": list(schema.tables),
        "column_names": [[-1, "*"]] + [[c.table, c.natural or c.name.lower().replace("_", " ")] for c in schema.columns],
        "column_names_original": [[-1, "*"]] + [[c.table, c.name] for c in schema.columns],
        "column_types": ["text"] + [c.type for c in schema.columns],
        "primary_keys": [key[0] if len(key) == 1 else list(key) for key in schema.primary_keys],
        "foreign_keys": [list(pair) for pair in schema.foreign_keys],
    }
