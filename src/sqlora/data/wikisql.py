"""WikiSQL (official layout) → the Spider layout, so that it follows the Spider code path.

A WikiSQL split is three files: ``<split>.jsonl`` (questions with a structured query
``{"sel", "agg", "conds"}``), ``<split>.tables.jsonl`` (headers, types, rows, titles) and
``<split>.db`` (SQLite, one table ``table_<id>`` per WikiSQL table, columns ``col0..colN``).
:func:`convert_wikisql` writes, atomically, a folder with ``tables.json``, ``<split>.json`` and
``database/<db_id>/<db_id>.sqlite``: one database per table that has questions, with readable
table and column names, and the gold query rendered as Spider-style SQL.

Execution semantics. The official evaluation (salesforce/WikiSQL ``lib/dbengine.py``) runs
``SELECT {agg}(col{sel}) AS result FROM table_<id> WHERE col{i} {op} :col{i} AND ...`` with bound
parameters, after normalising each condition value:

1. a string value is lowercased (``lower=True``, the default used by the evaluation script); the
   column data is *not* lowercased: the comparison is SQLite's case-sensitive one against the text
   exactly as the ``.db`` stores it (which is why we copy the ``.db`` rows, not the JSON rows);
2. when the column is declared ``real`` in the ``.db`` and the value is not already a number, it is
   parsed with ``babel.numbers.parse_decimal`` (English locale: drop the ``,`` group separators, then
   ``decimal.Decimal``), falling back to the first match of ``[-+]?\\d*\\.\\d+|\\d+``.

The rendered gold SQL bakes exactly that normalised value into a literal whose SQLite meaning is the
same as the bound parameter (see :func:`sql_literal`), and the converted tables keep the ``.db``
rows and declared column types (so the same affinities apply). One deliberate difference: the
official engine names its parameters ``:col{i}``, so two conditions on the same column both get the
*last* value (``col2 > 3 AND col2 < 9`` runs as ``col2 > 9 AND col2 < 9``). We render each
condition with its own value, the query the annotator wrote; such questions are counted in the
returned ``"repeated_column_conditions"``.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Iterator

from sqlora.errors import SqloraError
from sqlora.sql.sandbox import connect_read_only

AGG_OPS = ("", "MAX", "MIN", "COUNT", "SUM", "AVG")  # lib/query.py; index 0 = no aggregate
COND_OPS = ("=", ">", "<")  # lib/query.py also lists "OP", which no question uses

Value = str | int | float

# --- identifiers -----------------------------------------------------------------------------------

# SQLite's keywords (sqlite.org/lang_keywords.html) plus the names that are not keywords but still do
# not behave as plain column names (TRUE/FALSE literals, the rowid aliases). Many keywords are accepted
# as bare identifiers by SQLite, but not all of them, and not by every parser (sqlglot reads the gold
# SQL elsewhere), so none is used unquoted.
_RESERVED = frozenset(
    """
    abort action add after all alter always analyze and as asc attach autoincrement before begin
    between by cascade case cast check collate column commit conflict constraint create cross current
    current_date current_time current_timestamp database default deferrable deferred delete desc
    detach distinct do drop each else end escape except exclude exclusive exists explain fail filter
    first following for foreign from full generated glob group groups having if ignore immediate in
    index indexed initially inner insert instead intersect into is isnull join key last left like
    limit match materialized natural no not nothing notnull null nulls of offset on or order others
    outer over partition plan pragma preceding primary query raise range recursive references regexp
    reindex release rename replace restrict returning right rollback row rows savepoint select set
    table temp temporary then ties to transaction trigger unbounded union unique update using vacuum
    values view virtual when where window with without true false rowid oid _rowid_
    """.split()
)
# Names a double-quoted literal would resolve to besides the table's own columns.
_ROWID_ALIASES = frozenset({"rowid", "oid", "_rowid_"})
# Symbols that carry meaning in headers ("%", "#") become words instead of vanishing.
_SYMBOL_WORDS = (("%", " percent "), ("#", " number "), ("&", " and "), ("+", " plus "))
_MAX_IDENTIFIER = 60


def to_identifier(text: str, fallback: str, *, digit_prefix: str, reserved_suffix: str) -> str:
    """``text`` as a lowercase ``[a-z0-9_]`` identifier: its words joined by ``_``, accents folded.

    Empty results use ``fallback``; a leading digit gets ``digit_prefix``; SQL keywords get
    ``reserved_suffix`` — so the name is always usable unquoted in SQLite.
    """
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    for symbol, word in _SYMBOL_WORDS:
        folded = folded.replace(symbol, word)
    words = re.findall(r"[a-z0-9]+", folded.lower())
    name = ""
    for word in words:  # keep whole words up to the length cap
        candidate = f"{name}_{word}" if name else word
        if len(candidate) > _MAX_IDENTIFIER:
            break
        name = candidate
    if not name and words:  # a single word longer than the cap
        name = words[0][:_MAX_IDENTIFIER]
    name = name or fallback
    if name[0].isdigit():
        name = f"{digit_prefix}_{name}"
    if name in _RESERVED:
        name = f"{name}_{reserved_suffix}"
    return name


def unique_names(names: list[str]) -> list[str]:
    """De-duplicate in order: a repeat becomes ``name_2``, ``name_3``… never taking a name used elsewhere."""
    taken = set(names)
    seen: set[str] = set()
    result = []
    for name in names:
        if name in seen:
            k = 2
            while f"{name}_{k}" in taken:
                k += 1
            name = f"{name}_{k}"
            taken.add(name)
        seen.add(name)
        result.append(name)
    return result


def db_id_for(table_id: str) -> str:
    """``1-1000181-1`` → ``t_1_1000181_1``."""
    return "t_" + re.sub(r"[^A-Za-z0-9]", "_", table_id)


# --- input records ---------------------------------------------------------------------------------


class _BadQuestion(Exception):
    """A question that cannot be converted: raised as SqloraError, or skipped with ``skip_bad``."""


@dataclass(frozen=True)
class WikiTable:
    """One line of ``<split>.tables.jsonl``, without its rows (the ``.db`` holds those)."""

    table_id: str
    header: tuple[str, ...]
    title: str  # page title, else section title, else caption, else ""
    where: str  # "file:line", for messages


@dataclass(frozen=True)
class Condition:
    column: int
    op: int
    value: Value


@dataclass(frozen=True)
class WikiQuestion:
    table_id: str
    question: str
    sel: int
    agg: int
    conds: tuple[Condition, ...]
    where: str


@dataclass
class ConvertedTable:
    """How one WikiSQL table appears in the Spider layout."""

    db_id: str
    source_name: str  # table_<id> in <split>.db
    source_types: list[str]  # declared types in <split>.db, lowercased ("text" / "real")
    table_name: str
    table_natural: str
    columns: list[str]  # SQL identifiers, one per header
    naturals: list[str]  # header text, lowercased
    literal_clashes: frozenset[str]  # names a double-quoted "x" would resolve to instead of a string


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines: streamed, never the whole file in memory."""
    with open(path, "rb") as f:  # bytes, so that a bad encoding is reported with its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig")  # -sig: tolerate a byte-order mark
            except UnicodeDecodeError as exc:
                raise SqloraError(f"{path}:{lineno}: not UTF-8 text ({exc.reason})") from None
            if line.strip():
                yield lineno, line


def _parse_json(line: str, where: str, exc_type: type[Exception]) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise exc_type(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise exc_type(f"{where}: expected a JSON object")
    return obj


def read_tables(path: Path) -> dict[str, WikiTable]:
    """All tables of ``<split>.tables.jsonl`` by id. Any bad line is fatal: questions depend on it."""
    tables: dict[str, WikiTable] = {}
    for lineno, line in _jsonl_lines(path):
        where = f"{path}:{lineno}"
        obj = _parse_json(line, where, SqloraError)
        table_id, header = obj.get("id"), obj.get("header")
        if not isinstance(table_id, str) or not table_id:
            raise SqloraError(f"{where}: missing or empty 'id'")
        if not isinstance(header, list) or not header or not all(isinstance(h, str) for h in header):
            raise SqloraError(f"{where}: 'header' must be a non-empty list of strings")
        if table_id in tables:
            raise SqloraError(f"{where}: table id {table_id!r} already defined at {tables[table_id].where}")
        title = next(
            (obj[k].strip() for k in ("page_title", "section_title", "caption") if isinstance(obj.get(k), str) and obj[k].strip()), ""
        )
        tables[table_id] = WikiTable(table_id, tuple(header), title, where)
    return tables


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_question(obj: dict, where: str, tables: dict[str, WikiTable]) -> WikiQuestion:
    """Check one question record against its table; raises _BadQuestion with ``where`` in the message."""

    def bad(message: str) -> _BadQuestion:
        return _BadQuestion(f"{where}: {message}")

    table_id, question, sql = obj.get("table_id"), obj.get("question"), obj.get("sql")
    if not isinstance(table_id, str):
        raise bad("missing 'table_id'")
    if table_id not in tables:
        raise bad(f"unknown table_id {table_id!r}")
    if not isinstance(question, str) or not question.strip():
        raise bad("missing or empty 'question'")
    if not isinstance(sql, dict):
        raise bad("missing 'sql' object")
    width = len(tables[table_id].header)
    sel, agg, conds = sql.get("sel"), sql.get("agg"), sql.get("conds", [])
    if not _is_index(sel) or not 0 <= sel < width:
        raise bad(f"sel {sel!r} out of range 0..{width - 1} for table {table_id}")
    if not _is_index(agg) or not 0 <= agg < len(AGG_OPS):
        raise bad(f"agg {agg!r} out of range 0..{len(AGG_OPS) - 1}")
    if not isinstance(conds, list):
        raise bad("'sql.conds' must be a list")
    conditions = []
    for k, cond in enumerate(conds):
        if not isinstance(cond, list) or len(cond) != 3:
            raise bad(f"conds[{k}] must be [column, op, value]")
        column, op, value = cond
        if not _is_index(column) or not 0 <= column < width:
            raise bad(f"conds[{k}] column {column!r} out of range 0..{width - 1} for table {table_id}")
        if not _is_index(op) or not 0 <= op < len(COND_OPS):
            raise bad(f"conds[{k}] op {op!r} out of range 0..{len(COND_OPS) - 1}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad(f"conds[{k}] value {value!r} is not a string or a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(f"conds[{k}] value {value!r} is not finite")
        conditions.append(Condition(column, op, value))
    return WikiQuestion(table_id, question.strip(), sel, agg, tuple(conditions), where)


# --- official value semantics ----------------------------------------------------------------------

_NUM_RE = re.compile(r"[-+]?\d*\.\d+|\d+")  # lib/dbengine.py's fallback number pattern


def official_value(value: Value, column_type: str) -> Value:
    """The value lib/dbengine.py binds for a condition on a column declared ``column_type``.

    Raises ValueError where the official engine would fail (no number in a value for a real column)
    or bind something meaningless (NaN, infinity, an integer SQLite cannot hold).
    """
    if isinstance(value, str):
        value = value.lower()
        if column_type == "real":
            # babel.numbers.parse_decimal with the English locale: remove "," then Decimal(...).
            try:
                value = float(Decimal(value.replace(",", "")))
            except InvalidOperation:
                numbers = _NUM_RE.findall(value)
                if not numbers:
                    raise ValueError(f"value {value!r} has no number for a real column") from None
                value = float(numbers[0])
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"value {value!r} is not a finite number")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError(f"value {value!r} does not fit a SQLite integer")
    return value


def _quote(text: str, quote: str) -> str:
    return quote + text.replace(quote, quote * 2) + quote


def sql_literal(value: Value, column_type: str, clashes: frozenset[str], engine: sqlite3.Connection) -> str:
    """A SQL literal meaning what binding the official ``value`` means against this column.

    - a number compared with a ``real`` (not ``text``) column: unquoted (an integral float as an integer, which
      compares equal under SQLite's numeric comparison);
    - a number compared with a ``text`` column: SQLite gives the bound number TEXT affinity, i.e.
      compares its text form, so we quote that text form (as SQLite itself converts it);
    - a string: double-quoted, Spider style, quotes doubled. SQLite reads a double-quoted token as an
      identifier when it names a column, so a value spelling a column name (``"total"`` in a table
      with a ``total`` column) is single-quoted instead.
    """
    if isinstance(value, (int, float)):
        if column_type != "text":
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                return str(int(value))
            return repr(value)
        value = engine.execute("SELECT CAST(? AS TEXT)", (value,)).fetchone()[0]
    quote = "'" if value.lower() in clashes else '"'
    return _quote(value, quote)


def render_query(question: WikiQuestion, table: ConvertedTable, engine: sqlite3.Connection) -> str:
    """Spider-style SQL: ``SELECT max(col) FROM tbl WHERE a = "x" AND b > 3``."""
    select = table.columns[question.sel]
    if question.agg:
        select = f"{AGG_OPS[question.agg].lower()}({select})"
    sql = f"SELECT {select} FROM {table.table_name}"
    predicates = []
    for cond in question.conds:
        column_type = table.source_types[cond.column]
        try:
            value = official_value(cond.value, column_type)
        except ValueError as exc:
            raise _BadQuestion(f"{question.where}: condition on column {cond.column}: {exc}") from None
        literal = sql_literal(value, column_type, table.literal_clashes, engine)
        predicates.append(f"{table.columns[cond.column]} {COND_OPS[cond.op]} {literal}")
    if predicates:
        sql += " WHERE " + " AND ".join(predicates)
    return sql


def has_repeated_column(question: WikiQuestion, table: ConvertedTable) -> bool:
    """True when the official engine's one-parameter-per-column naming changes this query's meaning."""
    values: dict[int, Value] = {}
    for cond in question.conds:
        try:
            value = official_value(cond.value, table.source_types[cond.column])
        except ValueError:
            return False
        if cond.column in values and values[cond.column] != value:
            return True
        values[cond.column] = value
    return False


# --- the source database -----------------------------------------------------------------------------


def source_table_name(table_id: str) -> str:
    return "table_{}".format(table_id.replace("-", "_"))


def _open_read_only(path: Path) -> sqlite3.Connection:
    try:
        conn = connect_read_only(path)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise SqloraError(f"{path}: cannot read as a SQLite database ({exc})") from None
    return conn


def _source_types(conn: sqlite3.Connection, name: str, width: int, db_path: Path) -> list[str]:
    """Declared types of ``col0..col{width-1}`` in the ``.db`` table, checked against the header count."""
    try:
        rows = conn.execute("SELECT name, type FROM pragma_table_info(?) ORDER BY cid", (name,)).fetchall()
    except sqlite3.DatabaseError as exc:
        raise SqloraError(f"{db_path}: {exc}") from None
    if not rows:
        raise ValueError(f"table {name} is not in {db_path}")
    names = [r[0] for r in rows]
    if names != [f"col{i}" for i in range(width)]:
        raise ValueError(f"{db_path} table {name} has columns {', '.join(names)}; expected col0..col{width - 1} for {width} headers")
    return [(r[1] or "").lower() for r in rows]


def describe_table(table: WikiTable, source_types: list[str], db_id: str) -> ConvertedTable:
    columns = unique_names([to_identifier(h, f"col{i}", digit_prefix="col", reserved_suffix="col") for i, h in enumerate(table.header)])
    table_name = to_identifier(table.title, "data", digit_prefix="t", reserved_suffix="table")
    naturals = [" ".join(h.split()).lower() or columns[i].replace("_", " ") for i, h in enumerate(table.header)]
    return ConvertedTable(
        db_id=db_id,
        source_name=source_table_name(table.table_id),
        source_types=source_types,
        table_name=table_name,
        table_natural=" ".join(table.title.split()).lower() or "data",
        columns=columns,
        naturals=naturals,
        literal_clashes=frozenset(columns) | _ROWID_ALIASES,
    )


def spider_entry(table: ConvertedTable) -> dict:
    return {
        "db_id": table.db_id,
        "table_names_original": [table.table_name],
        "table_names": [table.table_natural],
        "column_names_original": [[-1, "*"]] + [[0, c] for c in table.columns],
        "column_names": [[-1, "*"]] + [[0, n] for n in table.naturals],
        "column_types": ["text"] + ["number" if t == "real" else "text" for t in table.source_types],
        "primary_keys": [],
        "foreign_keys": [],
    }


def write_database(source: sqlite3.Connection, source_path: Path, table: ConvertedTable, path: Path) -> None:
    """Copy the ``.db`` rows (rowid order) into a one-table database with readable names.

    The declared types are the ``.db``'s own, so values keep the storage classes and affinities the
    official execution sees.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    width = len(table.columns)
    select = ", ".join(f"col{i}" for i in range(width))
    try:
        rows = source.execute(f'SELECT {select} FROM "{table.source_name}" ORDER BY rowid').fetchall()
    except sqlite3.DatabaseError as exc:
        raise SqloraError(f"{source_path}: table {table.source_name}: {exc}") from None
    columns = ", ".join(f"{name} {kind.upper()}".rstrip() for name, kind in zip(table.columns, table.source_types))
    conn = sqlite3.connect(path)
    try:
        # The whole output folder is renamed into place only on success: no journal needed.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(f"CREATE TABLE {table.table_name} ({columns})")
        conn.executemany(f"INSERT INTO {table.table_name} VALUES ({', '.join('?' * width)})", rows)
        conn.commit()
    finally:
        conn.close()


# --- conversion -------------------------------------------------------------------------------------


@dataclass
class _Source:
    questions: Path
    tables: Path
    db: Path


def _source_files(source: Path, split: str) -> _Source:
    """The three files of ``split``; the official archive's ``data/`` folder is accepted too."""
    folder = source / "data" if not (source / f"{split}.jsonl").exists() and (source / "data" / f"{split}.jsonl").exists() else source
    files = _Source(folder / f"{split}.jsonl", folder / f"{split}.tables.jsonl", folder / f"{split}.db")
    for path in (files.questions, files.tables, files.db):
        if not path.is_file():
            raise SqloraError(f"{path}: file not found (WikiSQL split {split!r})")
    return files


class _Converter:
    """Streams the questions, converting each against its table; remembers the tables it used."""

    def __init__(self, files: _Source, tables: dict[str, WikiTable], source: sqlite3.Connection):
        self.files = files
        self.tables = tables
        self.source = source
        self.converted: dict[str, ConvertedTable] = {}
        self.table_errors: dict[str, str] = {}
        self.db_ids: set[str] = set()
        self.used: set[str] = set()  # table ids with at least one converted question
        self.repeated = 0

    def table(self, table_id: str) -> ConvertedTable:
        if table_id in self.table_errors:
            raise ValueError(self.table_errors[table_id])
        if table_id not in self.converted:
            wiki = self.tables[table_id]
            try:
                types = _source_types(self.source, source_table_name(table_id), len(wiki.header), self.files.db)
            except ValueError as exc:
                self.table_errors[table_id] = str(exc)
                raise
            db_id = db_id_for(table_id)
            if db_id in self.db_ids:  # two ids that differ only in punctuation
                k = 2
                while f"{db_id}_{k}" in self.db_ids:
                    k += 1
                db_id = f"{db_id}_{k}"
            self.db_ids.add(db_id)
            self.converted[table_id] = describe_table(wiki, types, db_id)
        return self.converted[table_id]

    def convert(self, obj: dict, where: str) -> dict:
        question = parse_question(obj, where, self.tables)
        try:
            table = self.table(question.table_id)
        except ValueError as exc:
            raise _BadQuestion(f"{where}: {exc}") from None
        query = render_query(question, table, self.source)
        self.repeated += has_repeated_column(question, table)
        self.used.add(question.table_id)
        return {"db_id": table.db_id, "question": question.question, "query": query}


def convert_wikisql(source: str | Path, split: str, out_dir: str | Path, *, skip_bad: bool = False) -> dict:
    """Convert one WikiSQL split to a Spider-layout folder at ``out_dir`` (replaced only on success).

    Returns ``{"questions", "databases", "skipped", "repeated_column_conditions", "problems"}``;
    ``problems`` lists the skipped questions as ``"file:line: message"`` (only with ``skip_bad``;
    otherwise the first bad question raises SqloraError). Errors in the tables file or the ``.db``
    itself always raise.
    """
    from sqlora.data.schema import database_path
    from sqlora.io import atomic_path, write_json

    files = _source_files(Path(source), split)
    tables = read_tables(files.tables)
    source_db = _open_read_only(files.db)
    try:
        converter = _Converter(files, tables, source_db)
        examples, problems = [], []
        for lineno, line in _jsonl_lines(files.questions):
            where = f"{files.questions}:{lineno}"
            try:
                examples.append(converter.convert(_parse_json(line, where, _BadQuestion), where))
            except _BadQuestion as exc:
                if not skip_bad:
                    raise SqloraError(str(exc)) from None
                problems.append(str(exc))
        # Tables in tables-file order (deterministic), only those some question uses.
        used = [converter.converted[t] for t in tables if t in converter.used]
        with atomic_path(Path(out_dir)) as tmp:
            tmp.mkdir()
            for table in used:
                write_database(source_db, files.db, table, database_path(tmp / "database", table.db_id))
            write_json(tmp / "tables.json", [spider_entry(t) for t in used])
            write_json(tmp / f"{split}.json", examples)
    finally:
        source_db.close()
    return {
        "questions": len(examples),
        "databases": len(used),
        "skipped": len(problems),
        "repeated_column_conditions": converter.repeated,
        "problems": problems,
    }
