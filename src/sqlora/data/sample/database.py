"""Rows, SQLite files, schema.sql and the tables.json entry of one sample domain."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from .tables import Column, Domain, Kind, Table, skewed_weights

Rows = dict[str, list[dict[str, object]]]  # table name -> rows as {column: value}

# Only this share of a table's rows is ever referenced, so "authors without books" and
# "artists that performed at no festival" have answers.
REFERENCED_SHARE = 0.85


def fill(domain: Domain, rng: random.Random) -> Rows:
    rows: Rows = {}
    for table in domain.tables:
        n = table.rows
        columns: dict[str, list] = {}
        foreign = table.of_kind(Kind.FOREIGN)
        if table.name_column is None and len(foreign) == 2:
            # A link table: each (a, b) pair at most once, which the composite keys require.
            pairs = _unique_pairs(rng, [_referenced(rng, rows, fk) for fk in foreign], n)
            for i, fk in enumerate(foreign):
                columns[fk.name] = [pair[i] for pair in pairs]
        else:
            for fk in foreign:
                keys, weights = _referenced(rng, rows, fk)
                columns[fk.name] = rng.choices(keys, weights=weights, k=n)
        for column in table.columns:
            if column.kind is Kind.KEY:
                columns[column.name] = list(range(1, n + 1))
            elif column.values is not None:
                columns[column.name] = column.values.draw(rng, n)
        rows[table.name] = [{c.name: columns[c.name][i] for c in table.columns} for i in range(n)]
    return rows


def _referenced(rng: random.Random, rows: Rows, fk: Column) -> tuple[list, list[float]]:
    """The keys a foreign key may take, with skewed weights so per-parent counts differ."""
    table, column = fk.references.split(".")
    keys = [row[column] for row in rows[table]]
    keys = rng.sample(keys, round(len(keys) * REFERENCED_SHARE))
    return keys, skewed_weights(rng, len(keys))


def _unique_pairs(rng: random.Random, sides: list[tuple[list, list[float]]], n: int) -> list[tuple]:
    (a_keys, a_weights), (b_keys, b_weights) = sides
    if n > len(a_keys) * len(b_keys) // 2:
        raise ValueError(f"{n} link rows requested from {len(a_keys)} x {len(b_keys)} pairs")
    seen: dict[tuple, None] = {}
    while len(seen) < n:
        pair = (rng.choices(a_keys, a_weights)[0], rng.choices(b_keys, b_weights)[0])
        seen.setdefault(pair, None)
    return list(seen)


def create_statements(domain: Domain) -> list[str]:
    """CREATE TABLE statements in the style of Spider's schema.sql files."""
    statements = []
    for table in domain.tables:
        lines = [f'"{c.name}" {c.sql_type}' for c in table.columns]
        lines.append("PRIMARY KEY (" + ", ".join(f'"{name}"' for name in table.primary_key) + ")")
        for fk in table.of_kind(Kind.FOREIGN):
            target_table, target_column = fk.references.split(".")
            lines.append(f'FOREIGN KEY ("{fk.name}") REFERENCES "{target_table}"("{target_column}")')
        statements.append(f'CREATE TABLE "{table.name}" (\n' + ",\n".join("  " + line for line in lines) + "\n)")
    return statements


def write_database(domain: Domain, rows: Rows, database_dir: Path) -> Path:
    """Write database/<db_id>/<db_id>.sqlite and schema.sql; return the .sqlite path."""
    folder = database_dir / domain.db_id
    folder.mkdir(parents=True)
    statements = create_statements(domain)
    (folder / "schema.sql").write_text("PRAGMA foreign_keys = ON;\n\n" + ";\n\n".join(statements) + ";\n", encoding="utf-8")
    path = folder / f"{domain.db_id}.sqlite"
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA foreign_keys = ON")  # the inserts must satisfy the declared keys
        for statement in statements:
            conn.execute(statement)
        for table in domain.tables:
            names = [c.name for c in table.columns]
            placeholders = ", ".join("?" for _ in names)
            conn.executemany(
                f'INSERT INTO "{table.name}" VALUES ({placeholders})',
                [tuple(row[name] for name in names) for row in rows[table.name]],
            )
        conn.commit()
    finally:
        conn.close()
    return path


def spider_schema(domain: Domain) -> dict:
    """The domain's entry in tables.json, in Spider's format."""
    originals: list[list] = [[-1, "*"]]
    words: list[list] = [[-1, "*"]]
    types = ["text"]
    index: dict[tuple[str, str], int] = {}
    for table_index, table in enumerate(domain.tables):
        for column in table.columns:
            index[(table.name, column.name)] = len(originals)
            originals.append([table_index, column.name])
            words.append([table_index, column.words])
            types.append(column.spider_type)
    primary_keys: list = []
    for table in domain.tables:
        key = [index[(table.name, name)] for name in table.primary_key]
        primary_keys.append(key[0] if len(key) == 1 else key)  # composite keys nest, as in newer Spider
    foreign_keys = [
        [index[(table.name, fk.name)], index[tuple(fk.references.split("."))]]
        for table in domain.tables
        for fk in table.of_kind(Kind.FOREIGN)
    ]
    return {
        "db_id": domain.db_id,
        "table_names_original": [t.name for t in domain.tables],
        "table_names": [t.words for t in domain.tables],
        "column_names_original": originals,
        "column_names": words,
        "column_types": types,
        "primary_keys": primary_keys,
        "foreign_keys": foreign_keys,
    }


def table_of(domain: Domain, name: str) -> Table:
    return next(t for t in domain.tables if t.name == name)
