"""Fuzzed databases (sqlora.testsuite.fuzz): random instances that keep the schema and its constraints."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sqlora.testsuite.fuzz import column_affinity, fuzz_database, read_layout

SCHOOL = """
CREATE TABLE "school district" ("district id" INTEGER PRIMARY KEY, "name" varchar(20) NOT NULL UNIQUE, budget number);
CREATE TABLE teacher (
    teacher_id int NOT NULL,
    district_id INTEGER NOT NULL REFERENCES "school district"("district id"),
    mentor int REFERENCES teacher(teacher_id),
    name TEXT,
    salary REAL,
    hired datetime,
    active bool,
    note,
    PRIMARY KEY (teacher_id)
);
CREATE TABLE course (dept varchar(4), num INT, title TEXT NOT NULL, credits numeric(2,0) CHECK (credits > 0),
                     PRIMARY KEY (dept, num)) WITHOUT ROWID;
CREATE TABLE teaches (
    teacher_id int NOT NULL REFERENCES teacher(teacher_id),
    dept varchar(4) NOT NULL, num INT NOT NULL,
    year INT,
    PRIMARY KEY (teacher_id, dept, num),
    FOREIGN KEY (dept, num) REFERENCES course(dept, num)
);
CREATE TABLE ghost (id INTEGER PRIMARY KEY, lost_id int NOT NULL REFERENCES nowhere(id), other int REFERENCES course(nope));
CREATE TABLE room (code varchar(10), building TEXT);
CREATE UNIQUE INDEX room_code ON room(code);
CREATE INDEX teacher_by_name ON teacher(name);
CREATE VIEW busy AS SELECT teacher_id, count(*) AS n FROM teaches GROUP BY teacher_id;
"""

ROWS = [
    "INSERT INTO \"school district\" VALUES (1, 'North', 1000.5), (2, 'South', 2000), (7, 'East', NULL)",
    "INSERT INTO teacher VALUES (10, 1, NULL, 'Ann', 5000.0, '2001-02-03 00:00:00', 1, 'x'),"
    " (11, 2, 10, 'Bob', 6100.5, '1999-12-31 00:00:00', 0, 5), (12, 2, 10, 'Cy', NULL, NULL, NULL, NULL)",
    "INSERT INTO course VALUES ('CS', 101, 'Intro', 3), ('CS', 202, 'Systems', 4), ('MA', 101, 'Calculus', 4)",
    "INSERT INTO teaches VALUES (10, 'CS', 101, 2020), (11, 'MA', 101, 2021), (12, 'CS', 202, NULL)",
    "INSERT INTO ghost VALUES (1, 5, NULL)",
    "INSERT INTO room VALUES ('A1', 'Main'), ('B2', NULL)",
]


TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"


def make_school(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(SCHOOL)
    for sql in ROWS:
        conn.execute(sql)
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def school(tmp_path: Path) -> Path:
    return make_school(tmp_path / "school.sqlite")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def master(path: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall(), key=repr)
    finally:
        conn.close()


def table_rows(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.text_factory = lambda raw: raw.decode("utf-8", errors="replace")
    try:
        names = [n for (n,) in conn.execute(TABLES)]
        return {n: conn.execute(f"SELECT * FROM {_q(n)}").fetchall() for n in sorted(names)}
    finally:
        conn.close()


def constraint_violations(path: Path) -> list[str]:
    """Every way the file breaks its own schema: NOT NULL, PRIMARY KEY / UNIQUE, INTEGER PRIMARY KEY
    types, and the foreign keys whose parent table and columns exist (found here, from the file alone)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    problems: list[str] = []
    try:
        tables = {n.lower(): n for (n,) in conn.execute(TABLES)}
        columns = {n: conn.execute(f"PRAGMA table_info({_q(n)})").fetchall() for n in tables.values()}
        for name, info in columns.items():
            t = _q(name)
            for _cid, col, _declared, notnull, _default, _pk in info:
                if notnull and conn.execute(f"SELECT count(*) FROM {t} WHERE {_q(col)} IS NULL").fetchone()[0]:
                    problems.append(f"{name}.{col}: NULL in a NOT NULL column")
            pk = [row[1] for row in sorted(info, key=lambda row: row[5]) if row[5]]
            keys = [pk] if pk else []
            for _seq, index, unique, *_ in conn.execute(f"PRAGMA index_list({t})").fetchall():
                if unique:
                    keys.append([row[2] for row in conn.execute(f"PRAGMA index_info({_q(index)})")])
            for key in keys:
                cols = ", ".join(_q(c) for c in key)
                repeated = f"SELECT count(*) FROM (SELECT 1 FROM {t} GROUP BY {cols} HAVING count(*) > 1)"
                dupes = conn.execute(repeated).fetchone()[0]
                any_null = " OR ".join(f"{_q(c)} IS NULL" for c in key)
                nulls = conn.execute(f"SELECT count(*) FROM {t} WHERE {any_null}").fetchone()[0]
                if dupes or nulls:
                    problems.append(f"{name}{tuple(key)}: {dupes} repeated keys, {nulls} NULL in keys")
            if len(pk) == 1 and next(r[2] for r in info if r[1] == pk[0]).upper() == "INTEGER":
                if conn.execute(f"SELECT count(*) FROM {t} WHERE typeof({_q(pk[0])}) != 'integer'").fetchone()[0]:
                    problems.append(f"{name}.{pk[0]}: INTEGER PRIMARY KEY that is not an integer")
            problems += _foreign_key_violations(conn, name, tables, columns)
    finally:
        conn.close()
    return problems


def _foreign_key_violations(conn: sqlite3.Connection, name: str, tables: dict, columns: dict) -> list[str]:
    groups: dict[int, list] = {}
    for fk_id, seq, parent, child, to, *_ in conn.execute(f"PRAGMA foreign_key_list({_q(name)})"):
        groups.setdefault(fk_id, []).append((seq, parent, child, to))
    checkable = []
    for parts in (sorted(groups[i]) for i in sorted(groups)):
        parent = tables.get(parts[0][1].lower())
        if parent is None:
            continue  # a key to a table the schema lacks: nothing to hold
        parent_cols = {r[1].lower(): r[1] for r in columns[parent]}
        pk = [r[1] for r in sorted(columns[parent], key=lambda r: r[5]) if r[5]]
        to = [parent_cols.get(p[3].lower()) for p in parts] if parts[0][3] is not None else pk
        if len(to) != len(parts) or None in to:
            continue
        checkable.append(([p[2] for p in parts], parent, to))
    if len(checkable) == len(groups):
        try:  # SQLite's own check, where it can run (each parent key has a unique index)
            rows = conn.execute(f"PRAGMA foreign_key_check({_q(name)})").fetchall()
            return [f"{name}: foreign_key_check {row}" for row in rows]
        except sqlite3.OperationalError:  # "foreign key mismatch": a parent key without an index
            pass
    problems = []
    for child, parent, to in checkable:
        present = " AND ".join(f"c.{_q(c)} IS NOT NULL" for c in child)
        match = " AND ".join(f"p.{_q(p)} = c.{_q(c)}" for c, p in zip(child, to, strict=True))
        missing = conn.execute(
            f"SELECT count(*) FROM {_q(name)} AS c WHERE {present} AND NOT EXISTS (SELECT 1 FROM {_q(parent)} AS p WHERE {match})"
        ).fetchone()[0]
        if missing:
            problems.append(f"{name}{tuple(child)} -> {parent}{tuple(to)}: {missing} rows without a parent")
    return problems


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_affinity_follows_sqlite_rules():
    cases = {
        "INTEGER": "integer",
        "int(11)": "integer",
        "varchar(20)": "text",
        "character varchar(3)": "text",
        "TEXT": "text",
        "": "blob",
        "BLOB": "blob",
        "REAL": "real",
        "double": "real",
        "float(10,2)": "real",
        "number": "numeric",
        "datetime": "numeric",
        "bool": "numeric",
        "decimal(19,4)": "numeric",
    }
    assert {declared: column_affinity(declared) for declared in cases} == cases


def test_read_layout(school: Path):
    before = sha256(school)
    layout = read_layout(school)
    assert sha256(school) == before
    tables = {t.name: t for t in layout.tables}
    order = [t.name for t in layout.tables]
    assert order.index("school district") < order.index("teacher") < order.index("teaches")
    assert order.index("course") < order.index("teaches")
    assert tables["school district"].unique == (("district id",), ("name",))
    assert tables["school district"].rowid_alias == "district id"
    assert tables["course"].unique == (("dept", "num"),) and tables["course"].rowid_alias is None
    assert tables["room"].unique == (("code",),)
    assert set(tables["teaches"].foreign_keys) == {
        (("teacher_id",), "teacher", ("teacher_id",)),
        (("dept", "num"), "course", ("dept", "num")),
    }
    assert (("mentor",), "teacher", ("teacher_id",)) in tables["teacher"].foreign_keys
    assert tables["ghost"].foreign_keys == ()  # a missing table and a missing column
    note = next(c for c in tables["teacher"].columns if c.name == "note")
    assert note.affinity == "blob" and not note.not_null
    assert next(c for c in tables["course"].columns if c.name == "title").not_null
    assert layout.values[("teacher", "name")] == ("Ann", "Bob", "Cy")
    assert len(read_layout(school, max_values=2).values[("teacher", "name")]) == 2
    assert any("CREATE VIEW busy" in sql for sql in layout.other_sql)
    assert any("room_code" in sql for sql in layout.other_sql)
    assert not any("sqlite_autoindex" in sql for sql in layout.other_sql)


def test_fuzzed_instances_keep_schema_and_constraints(school: Path, tmp_path: Path):
    before = sha256(school)
    layout = read_layout(school)
    filled = {name: 0 for name in table_rows(school)}
    for seed in range(30):
        out = tmp_path / f"fuzz_{seed}.sqlite"
        fuzz_database(layout, out, random.Random(seed), literals=("North", 2020, "Calc%"))
        assert master(out) == master(school)
        assert constraint_violations(out) == []
        for name, rows in table_rows(out).items():
            filled[name] += bool(rows)
        conn = sqlite3.connect(out)
        assert conn.execute("SELECT count(*) FROM busy").fetchone()[0] >= 0  # the view works
        conn.close()
    assert sha256(school) == before
    assert constraint_violations(school) == []  # the checker itself passes the original
    # Mostly non-empty; the ghost table's NOT NULL key to a missing table is filled like any column.
    assert all(count >= 20 for count in filled.values()), filled
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_same_seed_same_rows_other_seed_other_rows(school: Path, tmp_path: Path):
    layout = read_layout(school)
    a, b, c = tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "c.sqlite"
    fuzz_database(layout, a, random.Random(7), literals=("North", 3))
    fuzz_database(layout, b, random.Random(7), literals=("North", 3))
    fuzz_database(layout, c, random.Random(8), literals=("North", 3))
    assert table_rows(a) == table_rows(b)
    assert table_rows(a) != table_rows(c)
    # The same layout read again (another process would see the same) gives the same rows too.
    fuzz_database(read_layout(school), b, random.Random(7), literals=("North", 3))
    assert table_rows(a) == table_rows(b)


def test_rows_do_not_depend_on_hash_randomisation(school: Path, tmp_path: Path):
    script = (
        "import random, sys; from sqlora.testsuite.fuzz import read_layout, fuzz_database; "
        "fuzz_database(read_layout(sys.argv[1]), sys.argv[2], random.Random(3), ('North', 'Ann', 5, 'a%'))"
    )
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"h{hash_seed}.sqlite"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", script, str(school), str(out)], check=True, env=env)
        outs.append(table_rows(out))
    assert outs[0] == outs[1]


def test_checker_sees_dangling_keys(school: Path, tmp_path: Path):
    """The one constraint SQLite leaves to us (foreign keys are off): the checker must see it broken."""
    conn = sqlite3.connect(school)
    conn.execute("INSERT INTO teaches VALUES (99, 'CS', 101, NULL)")  # no teacher 99
    conn.execute("INSERT INTO teacher (teacher_id, district_id, mentor) VALUES (13, 1, 77)")  # no mentor 77
    conn.commit()
    conn.close()
    problems = "\n".join(constraint_violations(school))
    assert "foreign_key_check ('teaches'" in problems and "foreign_key_check ('teacher'" in problems
    # The fallback for parent keys without a unique index (SQLite's check refuses those).
    other = tmp_path / "loose.sqlite"
    conn = sqlite3.connect(other)
    conn.executescript(
        "CREATE TABLE p (x int); CREATE TABLE c (y int REFERENCES p(x));INSERT INTO p VALUES (1); INSERT INTO c VALUES (1), (2), (NULL);"
    )
    conn.close()
    assert constraint_violations(other) == ["c('y',) -> p('x',): 1 rows without a parent"]


def test_literals_show_up(school: Path, tmp_path: Path):
    layout = read_layout(school)
    seen: set = set()
    for seed in range(10):
        out = tmp_path / "f.sqlite"
        fuzz_database(layout, out, random.Random(seed), literals=("Zanzibar", 4242, 77.5, "%Quux%"))
        seen |= {v for rows in table_rows(out).values() for row in rows for v in row}
    assert {"Zanzibar", 4242, 4241, 4243, 77.5, "Quux", "xQuuxy"} <= seen
    assert "Zanzibar" not in {v for rows in table_rows(school).values() for row in rows for v in row}


def test_composite_and_self_references(school: Path, tmp_path: Path):
    layout = read_layout(school)
    self_refs = composite = 0
    for seed in range(20):
        out = tmp_path / "f.sqlite"
        fuzz_database(layout, out, random.Random(seed))
        conn = sqlite3.connect(out)
        self_refs += conn.execute("SELECT count(*) FROM teacher WHERE mentor IS NOT NULL").fetchone()[0]
        composite += conn.execute("SELECT count(*) FROM teaches JOIN course USING (dept, num)").fetchone()[0]
        # Every (dept, num) of teaches is one course's key as a whole, not a mix of two courses.
        mixed = "SELECT count(*) FROM teaches WHERE (dept, num) NOT IN (SELECT dept, num FROM course)"
        assert conn.execute(mixed).fetchone()[0] == 0
        conn.close()
    assert self_refs > 0 and composite > 0


def test_integer_primary_key_and_types(school: Path, tmp_path: Path):
    layout = read_layout(school)
    out = tmp_path / "f.sqlite"
    types: dict[str, set[str]] = {}
    for seed in range(10):
        fuzz_database(layout, out, random.Random(seed), literals=("7", 1.5, "North"))
        conn = sqlite3.connect(out)
        for column in ("teacher_id", "salary", "hired", "active", "name"):
            types.setdefault(column, set()).update(t for (t,) in conn.execute(f"SELECT DISTINCT typeof({column}) FROM teacher"))
        assert {t for (t,) in conn.execute('SELECT DISTINCT typeof("district id") FROM "school district"')} <= {"integer"}
        conn.close()
    assert types["teacher_id"] <= {"integer", "real"}  # int column: numbers (1.5 is a literal)
    assert types["salary"] <= {"real", "null"}
    assert types["name"] <= {"text", "null"}
    assert types["active"] <= {"integer", "real", "null"}  # bool: 0/1, and the numeric literals
    assert "text" in types["hired"]  # dates as the original holds them


def test_max_rows_and_empty_tables(school: Path, tmp_path: Path):
    layout = read_layout(school)
    out = tmp_path / "f.sqlite"
    sizes = []
    for seed in range(40):
        fuzz_database(layout, out, random.Random(seed), max_rows=5)
        sizes += [len(rows) for rows in table_rows(out).values()]
    assert max(sizes) <= 5 and 0 in sizes and sum(s > 0 for s in sizes) > len(sizes) / 2
    fuzz_database(layout, out, random.Random(0), max_rows=0)
    assert all(rows == [] for rows in table_rows(out).values())
    assert master(out) == master(school)


def test_failed_fuzz_leaves_no_file(school: Path, tmp_path: Path):
    layout = read_layout(school)
    out = tmp_path / "f.sqlite"
    fuzz_database(layout, out, random.Random(0))
    before = sha256(out)

    class Boom(random.Random):
        def random(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fuzz_database(layout, out, Boom(0))
    assert sha256(out) == before  # the earlier instance is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.sqlite", "school.sqlite"]


def test_foreign_key_cycle_and_missing_parent(tmp_path: Path):
    source = tmp_path / "cycle.sqlite"
    conn = sqlite3.connect(source)
    conn.executescript(
        """
        CREATE TABLE a (id INTEGER PRIMARY KEY, b_id int REFERENCES b(id));
        CREATE TABLE b (id INTEGER PRIMARY KEY, a_id int NOT NULL REFERENCES a(id));
        CREATE TABLE c (id text PRIMARY KEY, x REFERENCES missing_table, y int REFERENCES a(missing_col));
        INSERT INTO a VALUES (1, 1); INSERT INTO b VALUES (1, 1); INSERT INTO c VALUES ('k', 1, 2);
        """
    )
    conn.commit()
    conn.close()
    layout = read_layout(source)
    order = [t.name for t in layout.tables]
    assert order.index("a") < order.index("b")  # the cycle is broken at the first table in the schema
    filled = 0
    for seed in range(10):
        out = tmp_path / f"f{seed}.sqlite"
        fuzz_database(layout, out, random.Random(seed))
        assert constraint_violations(out) == []
        rows = table_rows(out)
        filled += bool(rows["b"]) and bool(rows["c"])
        assert all(b_id is None for _, b_id in rows["a"])  # the cycle is broken at a.b_id (nullable)
    assert filled >= 5


def test_every_spider_database(spider_dir: Path, tmp_path: Path):
    """Each Spider database: its layout and three fuzzed instances, schema and constraints intact."""
    paths = sorted(p for d in (spider_dir / "database").iterdir() if (p := d / f"{d.name}.sqlite").is_file())
    assert len(paths) >= 150
    problems: list[str] = []
    timings: list[float] = []
    literals = ("France", "1980", 1980, 3.5, "%a%", "Male", 10)
    for path in paths:
        before = sha256(path)
        layout = read_layout(path)
        expected = master(path)
        filled = False
        for seed in range(3):
            out = tmp_path / f"{path.stem}_{seed}.sqlite"
            start = time.perf_counter()
            fuzz_database(layout, out, random.Random(f"{path.stem}/{seed}"), literals)
            timings.append(time.perf_counter() - start)
            if master(out) != expected:
                problems.append(f"{path.stem}: schema differs")
            problems += [f"{path.stem}: {p}" for p in constraint_violations(out)]
            filled = filled or any(table_rows(out).values())
            out.unlink()
        if not filled:
            problems.append(f"{path.stem}: every table of every instance empty")
        if sha256(path) != before:
            problems.append(f"{path.stem}: the source changed")
    assert problems == []
    print(f"fuzzed {len(timings)} instances: mean {1000 * sum(timings) / len(timings):.1f} ms, max {1000 * max(timings):.1f} ms")
