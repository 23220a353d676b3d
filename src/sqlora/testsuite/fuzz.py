"""Fuzzed databases: small random instances of a SQLite database's schema (Zhong, Yu & Klein 2020).

A fuzzed instance keeps the original CREATE statements and fills every table with a few random
rows that respect what SQLite would enforce (types by affinity, PRIMARY KEY / UNIQUE, NOT NULL,
CHECK) and the foreign keys, which Spider declares but never enforces: a child row copies the key
of one parent row already inserted. Values are drawn from a mix of the column's original values,
the literals of the gold queries (numbers also +/-1) and fresh random values, so that a query's
WHERE conditions hold for some rows and fail for others: that is what lets two queries that agree
on the original database disagree on a fuzzed one.

Usage::

    layout = read_layout("concert_singer.sqlite")  # once per database
    fuzz_database(layout, "fuzz_0.sqlite", random.Random(0), literals=("France", 1980))

The same layout, seed, literals and ``max_rows`` give the same rows: nothing here iterates over a
set or depends on Python's hash randomisation.
"""

from __future__ import annotations

import math
import os
import random
import re
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sqlora.sql.sandbox import connect_read_only


@dataclass(frozen=True)
class ColumnLayout:
    name: str
    declared: str  # the declared type as written ("varchar(20)", "number", "" ...)
    affinity: str  # "integer" | "real" | "text" | "numeric" | "blob", by SQLite's rules
    not_null: bool


@dataclass(frozen=True)
class TableLayout:
    name: str
    create_sql: str
    columns: tuple[ColumnLayout, ...]  # insertable columns (no generated ones), in declared order
    unique: tuple[tuple[str, ...], ...]  # the primary key first (when declared), then UNIQUE constraints and indexes
    # (child columns, parent table, parent columns); only those whose parent table and columns exist
    foreign_keys: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...]
    primary_key: tuple[str, ...] = ()
    rowid_alias: str | None = None  # the INTEGER PRIMARY KEY column: SQLite stores only integers there


@dataclass(frozen=True)
class DatabaseLayout:
    tables: tuple[TableLayout, ...]  # parents before children where the foreign keys allow (cycles broken)
    other_sql: tuple[str, ...]  # CREATE INDEX / VIEW / TRIGGER, replayed around the rows
    values: dict[tuple[str, str], tuple]  # (table, column) -> distinct non-NULL original values


# ---------------------------------------------------------------------------------------------
# Reading the source


def column_affinity(declared: str) -> str:
    """SQLite's affinity of a declared type (section 3.1 of https://sqlite.org/datatype3.html)."""
    upper = declared.upper()
    if "INT" in upper:
        return "integer"
    if "CHAR" in upper or "CLOB" in upper or "TEXT" in upper:
        return "text"
    if "BLOB" in upper or not upper.strip():
        return "blob"
    if "REAL" in upper or "FLOA" in upper or "DOUB" in upper:
        return "real"
    return "numeric"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_layout(db_path: str | Path, max_values: int = 50) -> DatabaseLayout:
    """The schema, keys and a sample of the values of the SQLite file ``db_path`` (opened read-only)."""
    conn = connect_read_only(db_path)
    # Some Spider databases hold text that is not valid UTF-8: drop the bad bytes, as the sandbox does.
    conn.text_factory = lambda raw: raw.decode("utf-8", errors="ignore")
    try:
        master = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY rowid").fetchall()
        tables: list[TableLayout] = []
        other_sql: list[str] = []
        values: dict[tuple[str, str], tuple] = {}
        for kind, name, sql in master:
            if name.startswith("sqlite_") or not sql:  # sqlite_sequence, autoindexes: SQLite makes them itself
                continue
            if kind != "table":
                other_sql.append(sql)
                continue
            tables.append(_read_table(conn, name, sql))
            for column in tables[-1].columns:
                rows = conn.execute(
                    f"SELECT DISTINCT {_quote(column.name)} FROM {_quote(name)} WHERE {_quote(column.name)} IS NOT NULL LIMIT ?",
                    (max_values,),
                ).fetchall()
                values[(name, column.name)] = tuple(row[0] for row in rows)
        tables = _resolve_foreign_keys(conn, tables)
    finally:
        conn.close()
    return DatabaseLayout(tables=_parents_first(tables), other_sql=tuple(other_sql), values=values)


def _read_table(conn: sqlite3.Connection, name: str, sql: str) -> TableLayout:
    # table_xinfo also lists generated columns (hidden 2 or 3), which cannot be inserted into.
    info = conn.execute(f"PRAGMA table_xinfo({_quote(name)})").fetchall()
    columns = tuple(
        ColumnLayout(col, declared or "", column_affinity(declared or ""), bool(notnull))
        for _cid, col, declared, notnull, _default, _pk, hidden in info
        if hidden == 0
    )
    primary_key = tuple(row[1] for row in sorted(info, key=lambda row: row[5]) if row[5])  # pk: rank in the key
    unique: list[tuple[str, ...]] = [primary_key] if primary_key else []
    for _seq, index, is_unique, *_ in conn.execute(f"PRAGMA index_list({_quote(name)})").fetchall():
        if not is_unique:
            continue
        key = tuple(col for _rank, _cid, col in conn.execute(f"PRAGMA index_info({_quote(index)})").fetchall())
        if key and None not in key and key not in unique:  # None: an expression index, beyond us
            unique.append(key)
    without_rowid = re.search(r"\)\s*WITHOUT\s+ROWID\b[^)]*$", sql, re.IGNORECASE) is not None
    declared = {c.name: c.declared for c in columns}
    rowid_alias = None
    if len(primary_key) == 1 and not without_rowid and declared.get(primary_key[0], "").upper() == "INTEGER":
        rowid_alias = primary_key[0]
    # Foreign keys are resolved once every table is known (a parent may come later in sqlite_master).
    return TableLayout(name, sql, columns, tuple(unique), (), primary_key, rowid_alias)


def _resolve_foreign_keys(conn: sqlite3.Connection, tables: list[TableLayout]) -> list[TableLayout]:
    """Each table with the foreign keys whose parent table and columns exist, named as the parent spells them."""
    by_name = {t.name.lower(): t for t in tables}
    resolved = []
    for table in tables:
        own = {c.name.lower(): c.name for c in table.columns}
        groups: dict[int, list[tuple]] = {}
        for fk_id, seq, parent, child, to, *_ in conn.execute(f"PRAGMA foreign_key_list({_quote(table.name)})"):
            groups.setdefault(fk_id, []).append((seq, parent, child, to))
        keys = []
        for fk_id in sorted(groups):
            parts = sorted(groups[fk_id])
            parent = by_name.get(parts[0][1].lower())
            if parent is None:  # Spider names parents that do not exist; such a key cannot be kept
                continue
            parent_columns = {c.name.lower(): c.name for c in parent.columns}
            if any(part[3] is None for part in parts):  # REFERENCES parent: its primary key
                to = parent.primary_key if len(parent.primary_key) == len(parts) else ()
            else:
                to = tuple(parent_columns.get(part[3].lower()) for part in parts)
            child = tuple(own.get(part[2].lower()) for part in parts)
            if not to or None in to or None in child:
                continue
            key = (child, parent.name, to)
            if key not in keys:
                keys.append(key)
        resolved.append(replace(table, foreign_keys=tuple(keys)))
    return resolved


def _parents_first(tables: list[TableLayout]) -> tuple[TableLayout, ...]:
    """Tables ordered so that parents come before their children; a cycle is broken at the first
    table (in sqlite_master order) still waiting, whose keys to later tables then get NULL or no rows."""
    remaining = list(tables)
    placed: list[TableLayout] = []
    done: set[str] = set()
    while remaining:
        ready = next(
            (t for t in remaining if all(p == t.name or p in done for _, p, _ in t.foreign_keys)),
            remaining[0],
        )
        remaining.remove(ready)
        placed.append(ready)
        done.add(ready.name)
    return tuple(placed)


# ---------------------------------------------------------------------------------------------
# Values

_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
_INT64 = (-(2**63), 2**63 - 1)
_LENGTH = re.compile(r"\(\s*(\d+)")
_SCALE = re.compile(r"\(\s*\d+\s*,\s*([1-9]\d*)\s*\)")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _as_number(text: str) -> int | float | None:
    """The number a text is, when SQLite's numeric affinity would convert it; otherwise None."""
    if not _NUMBER.fullmatch(text):
        return None
    number = float(text)
    if re.fullmatch(r"\s*[+-]?\d+\s*", text):
        as_int = int(text)
        return as_int if _INT64[0] <= as_int <= _INT64[1] else number
    return number


def _stored(value: object, affinity: str) -> object:
    """The value SQLite would store for ``value`` in a column of ``affinity`` (datatype3.html, 3.0):
    keys are compared, and children copy their parent's values, as SQLite holds them."""
    if value is None or isinstance(value, bytes) or affinity == "blob":
        return value
    if affinity == "text":
        return str(value) if isinstance(value, int | float) else value
    if isinstance(value, str):
        number = _as_number(value)
        if number is None:
            return value
        value = number
    if affinity == "real":
        return float(value)
    if isinstance(value, float) and value.is_integer() and _INT64[0] <= value <= _INT64[1]:
        return int(value)  # INTEGER and NUMERIC affinity store a whole REAL as an INTEGER
    return value


_KINDS = ("bool", "int", "real", "date", "text", "any")


def _kind(column: ColumnLayout, originals: tuple) -> str:
    """How fresh values of a column are made (one of _KINDS)."""
    upper = column.declared.upper()
    if "BOOL" in upper or upper.strip() == "BIT":
        return "bool"
    strings = sum(isinstance(v, str) for v in originals)
    if originals and strings * 2 > len(originals) and not any(k in upper for k in ("DATE", "TIME")):
        return "text"  # Spider stores text in many INT and NUMBER columns: stay close to what is there
    if "DATE" in upper or "TIME" in upper:
        return "date"
    if column.affinity == "integer" or "YEAR" in upper:
        return "int"
    if column.affinity == "real":
        return "real"
    if column.affinity == "numeric":
        floats = any(isinstance(v, float) and not v.is_integer() for v in originals)
        return "real" if floats or _SCALE.search(upper) else "int"
    if column.affinity == "text":
        return "text"
    if originals and all(isinstance(v, int) for v in originals):
        return "int"
    return "any"


@dataclass
class _Column:
    """What drawing values for one column needs, worked out once per fuzzed database."""

    layout: ColumnLayout
    kind: str
    originals: tuple
    literals: tuple
    low: float  # range of fresh numbers, around the original ones
    high: float
    length: int  # most characters of fresh text (the declared length, capped)
    date_suffix: tuple[str, ...]  # what follows the date in the original values (" 00:00:00" ...)


def _fitting_literals(kind: str, literals: Sequence[object]) -> tuple:
    """The literals (and neighbours) a column of this kind could hold, in the order given, no repeats."""
    out: list[object] = []
    for literal in literals:
        if isinstance(literal, bool):
            literal = int(literal)
        if isinstance(literal, float) and not math.isfinite(literal):
            continue
        if isinstance(literal, str):
            number = _as_number(literal)  # '1980' in a query on a number column
        else:
            number = literal if isinstance(literal, int | float) else None
        if number is not None and not math.isfinite(number):  # '1e999'
            number = None
        if kind in ("int", "real", "bool") and number is not None:
            out += [number, number + 1, number - 1]
        elif kind == "date" and (number is not None or (isinstance(literal, str) and literal[:1].isdigit())):
            out.append(literal)
            if isinstance(number, int):  # a year
                out += [number + 1, number - 1]
        elif kind == "text" and isinstance(literal, str):
            out.append(literal)
            if "%" in literal:  # a LIKE pattern: the text it matches, and the same within other text
                core = literal.replace("%", "")
                out += [core, "x" + core + "y"] if core else []
        elif kind == "text" and isinstance(literal, int):
            out.append(str(literal))
        elif kind == "any" and isinstance(literal, int | float | str | bytes):
            out.append(literal)
            if isinstance(literal, int | float):
                out += [literal + 1, literal - 1]
    unique: dict[tuple[type, object], object] = {}
    for value in out:
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            continue
        unique.setdefault((type(value), value), value)  # dicts keep insertion order: deterministic
    return tuple(unique.values())


def _prepare_column(column: ColumnLayout, originals: tuple, fitting: dict[str, tuple], max_rows: int) -> _Column:
    kind = _kind(column, originals)
    numbers = [v for v in originals if isinstance(v, int | float) and math.isfinite(v)]
    low, high = (min(numbers), max(numbers)) if numbers else (0, 100)
    if kind in ("int", "bool", "any"):
        low, high = int(low), int(high)
        high = max(high, low + 3 * max_rows)  # room for distinct keys
    elif kind == "real":
        high = max(high, low + max_rows)
    length = 12
    if match := _LENGTH.search(column.declared):
        length = max(1, min(int(match.group(1)), length))
    suffixes = tuple(sorted({v[10:] for v in originals if isinstance(v, str) and _DATE.match(v)}))
    return _Column(column, kind, originals, fitting[kind], low, high, length, suffixes or ("",))


def _fresh(column: _Column, rng: random.Random) -> object:
    """A new random value of the column's kind."""
    kind = column.kind
    if kind == "bool":
        return rng.randint(0, 1)
    if kind == "int":
        return rng.randint(int(column.low), int(column.high))
    if kind == "real":
        return round(rng.uniform(column.low, column.high), 2)
    if kind == "date":
        date = f"{rng.randint(1950, 2025):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        return date + rng.choice(column.date_suffix)
    if kind == "any" and rng.random() < 0.5:
        return rng.randint(int(column.low), int(column.high))
    word = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(1, column.length)))
    return word.capitalize() if rng.random() < 0.5 else word


def _draw(column: _Column, rng: random.Random, nullable: bool, fresh: bool = False) -> object:
    """One value: NULL now and then where allowed, else a literal, an original value or a fresh one."""
    if fresh:
        return _fresh(column, rng)
    if nullable and rng.random() < 0.1:
        return None
    u = rng.random()
    if column.literals and u < 0.3:
        return rng.choice(column.literals)
    if column.originals and u < 0.75:
        return rng.choice(column.originals)
    return _fresh(column, rng)


# ---------------------------------------------------------------------------------------------
# Writing a fuzzed instance

_INDEX = re.compile(r"\s*CREATE\s+(UNIQUE\s+)?INDEX\b", re.IGNORECASE)
_RETRIES = 5  # tries for a row whose unique key clashes (or that SQLite refuses) before it is skipped
_FK_NULL = 0.1  # chance that a nullable foreign key is NULL


@dataclass
class _ForeignKey:
    child: tuple[int, ...]  # column positions in the child row
    parent: str
    parent_pos: tuple[int, ...]  # column positions in the parent's rows
    parent_affinity: tuple[str, ...]
    nullable: bool  # every child column may be NULL (and none is part of a unique key)


@dataclass
class _TablePlan:
    table: TableLayout
    columns: list[_Column]
    plain: list[int]  # positions of the columns no foreign key fills
    foreign_keys: list[_ForeignKey]
    keys: list[tuple[int, ...]]  # positions of each unique key's columns
    nullable: list[bool]  # may this column be NULL (not NOT NULL, not in a key)
    in_key: list[bool]  # is this column part of a unique key
    rowid_alias: int | None
    insert_sql: str


def _plan(table: TableLayout, layout: DatabaseLayout, fitting: dict[str, tuple], max_rows: int) -> _TablePlan:
    position = {c.name: i for i, c in enumerate(table.columns)}
    keys = [tuple(position[c] for c in key) for key in table.unique if all(c in position for c in key)]
    in_key = {i for key in keys for i in key}
    nullable = [not c.not_null and i not in in_key for i, c in enumerate(table.columns)]
    tables = {t.name: t for t in layout.tables}
    foreign_keys = []
    for child, parent, to in table.foreign_keys:
        parent_layout = tables[parent]
        parent_position = {c.name: i for i, c in enumerate(parent_layout.columns)}
        foreign_keys.append(
            _ForeignKey(
                child=tuple(position[c] for c in child),
                parent=parent,
                parent_pos=tuple(parent_position[c] for c in to),
                parent_affinity=tuple(parent_layout.columns[parent_position[c]].affinity for c in to),
                nullable=all(nullable[position[c]] for c in child),
            )
        )
    filled = {i for fk in foreign_keys for i in fk.child}
    originals = [layout.values.get((table.name, c.name), ()) for c in table.columns]
    columns = [_prepare_column(c, v, fitting, max_rows) for c, v in zip(table.columns, originals, strict=True)]
    names = ", ".join(_quote(c.name) for c in table.columns)
    marks = ", ".join("?" * len(table.columns))
    return _TablePlan(
        table=table,
        columns=columns,
        plain=[i for i in range(len(columns)) if i not in filled],
        foreign_keys=foreign_keys,
        keys=keys,
        nullable=nullable,
        in_key=[i in in_key for i in range(len(columns))],
        rowid_alias=position.get(table.rowid_alias) if table.rowid_alias else None,
        # OR IGNORE: a row SQLite refuses (a CHECK constraint, a clash we did not foresee) is
        # skipped, and rowcount tells us, so that no child ever points at a row that is not there.
        insert_sql=f"INSERT OR IGNORE INTO {_quote(table.name)} ({names}) VALUES ({marks})",
    )


def _row_count(rng: random.Random, max_rows: int) -> int:
    """Mostly small, non-empty tables; now and then an empty one (queries over no rows differ too)."""
    if max_rows <= 0 or rng.random() < 0.05:
        return 0
    return 1 + int(max_rows * rng.random() ** 2) if max_rows > 1 else 1


def _draw_row(plan: _TablePlan, rows: dict[str, list[tuple]], own: list[tuple], rng: random.Random, fresh_keys: bool) -> tuple | None:
    """A candidate row (values as SQLite will store them), or None when its foreign keys cannot be met.
    ``fresh_keys``: key columns take fresh values only (a retry: the few originals and literals clash)."""
    row: list[object] = [None] * len(plan.columns)
    for i in plan.plain:
        value = _draw(plan.columns[i], rng, plan.nullable[i], fresh=fresh_keys and plan.in_key[i])
        row[i] = _stored(value, plan.columns[i].layout.affinity)
    assigned: set[int] = set()  # filled by an earlier foreign key of this row (keys may overlap)
    for fk in plan.foreign_keys:
        self_reference = fk.parent == plan.table.name
        parents = own if self_reference else rows.get(fk.parent, [])
        candidates = [
            values
            for values in (tuple(parent[p] for p in fk.parent_pos) for parent in parents)
            if None not in values and all(row[c] == v for c, v in zip(fk.child, values, strict=True) if c in assigned)
        ]
        if self_reference and not candidates and all(row[p] is not None for p in fk.parent_pos):
            candidates = [tuple(row[p] for p in fk.parent_pos)]  # the first row may point at itself
        if fk.nullable and not any(c in assigned for c in fk.child) and (not candidates or rng.random() < _FK_NULL):
            continue  # stays NULL
        if not candidates:
            return None
        values = rng.choice(candidates)
        for c, v, parent_affinity in zip(fk.child, values, fk.parent_affinity, strict=True):
            stored = _stored(v, plan.columns[c].layout.affinity)
            # SQLite looks the child's value up with the parent column's affinity: it must come back the same.
            if _stored(stored, parent_affinity) != v:
                return None
            row[c] = stored
            assigned.add(c)
    if plan.rowid_alias is not None and not isinstance(row[plan.rowid_alias], int):
        return None
    if any(v is None and c.layout.not_null for v, c in zip(row, plan.columns, strict=True)):
        return None
    return tuple(row)


def _fill_table(conn: sqlite3.Connection, plan: _TablePlan, rows: dict[str, list[tuple]], rng: random.Random, max_rows: int) -> None:
    """Insert up to a random number of rows into one table; ``rows`` gets the rows SQLite kept."""
    own: list[tuple] = []
    rows[plan.table.name] = own  # children (and self-references) see exactly the rows SQLite kept
    seen: list[set[tuple]] = [set() for _ in plan.keys]
    for _ in range(_row_count(rng, max_rows)):
        for attempt in range(_RETRIES):
            row = _draw_row(plan, rows, own, rng, fresh_keys=attempt > 0)
            if row is None:
                continue
            # 1 == 1.0 in Python as in SQLite, and values are already as SQLite stores them.
            keys = [tuple(row[i] for i in key) for key in plan.keys]
            if any(key in taken for key, taken in zip(keys, seen, strict=True)):
                continue
            try:
                if conn.execute(plan.insert_sql, row).rowcount != 1:
                    continue
            except sqlite3.IntegrityError:  # what OR IGNORE does not cover: a value a STRICT column refuses
                continue
            for key, taken in zip(keys, seen, strict=True):
                taken.add(key)
            own.append(row)
            break


def fuzz_database(
    layout: DatabaseLayout,
    out: str | Path,
    rng: random.Random,
    literals: Sequence[object] = (),
    max_rows: int = 30,
) -> None:
    """Write a random instance of ``layout`` to ``out`` (replaced whole, never left half-written)."""
    out = Path(out)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            # Nothing here needs to survive a crash (the file is renamed into place only when
            # complete), so no journal and no fsync: several times faster.
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA foreign_keys=OFF")  # Spider's keys name missing tables; we keep them ourselves
            conn.execute("BEGIN")
            for table in layout.tables:
                conn.execute(table.create_sql)
            # Indexes before the rows, so that OR IGNORE also honours unique indexes (their collations
            # included); views and triggers after, so that no trigger fires on the fuzzed rows.
            indexes = [sql for sql in layout.other_sql if _INDEX.match(sql)]
            _replay(conn, indexes)
            fitting = {kind: _fitting_literals(kind, literals) for kind in _KINDS}  # once, not per column
            rows: dict[str, list[tuple]] = {}
            for table in layout.tables:
                _fill_table(conn, _plan(table, layout, fitting, max_rows), rows, rng, max_rows)
            _replay(conn, [sql for sql in layout.other_sql if not _INDEX.match(sql)])
            conn.execute("COMMIT")
        finally:
            conn.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _replay(conn: sqlite3.Connection, statements: list[str]) -> None:
    """Run each statement; one SQLite cannot run (a view over a missing table ...) is left out."""
    for sql in statements:
        try:
            conn.execute(sql)
        except sqlite3.OperationalError:
            pass
