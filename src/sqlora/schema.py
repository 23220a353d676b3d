"""Database schemas from Spider's tables.json, and their description in words for the prompt."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    table: int  # index into DatabaseSchema.tables
    name: str  # original name, as in the database
    type: str


@dataclass(frozen=True)
class DatabaseSchema:
    db_id: str
    tables: list[str]  # original table names
    columns: list[Column]  # without Spider's leading "*" entry; indexes below are Spider's (1-based)
    primary_keys: list[tuple[int, ...]]  # one tuple per table key; a composite key has several columns
    foreign_keys: list[tuple[int, int]]  # (column, referenced column), Spider column indexes

    def column(self, spider_index: int) -> Column:
        return self.columns[spider_index - 1]


def describe_natural(schema: DatabaseSchema) -> str:
    """The schema in words, DB-GPT-Hub style, with every key told correctly.

    ``<db> contains tables such as a, b. Table a has columns such as x, y. x is the primary key.``
    then one line per foreign key: ``The y of b is the foreign key of x of a.``
    """
    lines = [f"{schema.db_id} contains tables such as {', '.join(schema.tables)}."]
    keys_by_table: dict[int, list[tuple[int, ...]]] = {}
    for key in schema.primary_keys:
        keys_by_table.setdefault(schema.column(key[0]).table, []).append(key)
    for t, table in enumerate(schema.tables):
        names = [c.name for c in schema.columns if c.table == t]
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
