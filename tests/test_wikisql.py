"""WikiSQL → Spider layout: a fixture in the exact official format, checked against the official
execution semantics (salesforce/WikiSQL lib/dbengine.py) on the original ``.db``."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pytest
import sqlglot

from sqlora.data.layouts import load_examples, load_schemas
from sqlora.data.wikisql import convert_wikisql, to_identifier, unique_names
from sqlora.errors import SqloraError

SPLIT = "dev"

TABLES = [
    {
        "id": "1-10015132-11",
        "page_title": "Toronto Raptors all-time roster",
        "section_title": "L",
        "caption": "L",
        "name": "table_10015132_11",
        "header": ["Player", "No.", "Nationality", "Position", "Years in Toronto", "School/Club Team"],
        "types": ["text", "real", "text", "text", "text", "text"],
        "rows": [
            ["Aleksandar Radojević", 25, "Serbia", "Center", "1999-2000", "Barton CC (KS)"],
            ["Shawn Respert", 31, "United States", "Guard", "1997-98", "Michigan State"],
            ["Quentin Richardson", 3, "United States", "Forward", "2013-present", "DePaul"],
            ["Alvin Robertson", 7, "United States", "Guard", "1995-96", "Arkansas"],
            ["Carlos Rogers", 33, "United States", "Forward-Center", "1995-98", "Tennessee State"],
            ["Roy Rogers", 9, "United States", "Forward", "1998", 'O\'Neill "Prep" Academy'],
        ],
    },
    {
        "id": "2-1234567-1",
        "section_title": "Scoring leaders",
        "header": ["Player", "Player", "%", "Points", "", "2010", "Order"],
        "types": ["text", "text", "real", "real", "text", "real", "text"],
        "rows": [
            ["Ann Lee", "Bo Lee", 45.5, "1,234", "x", 3, "First"],
            ["Cy Day", "Di Day", 50.0, 980, "3.0", 7.5, "Second"],
            ["Ed Fox", "Flo Fox", 38.25, 1500, "z", 12, "Third"],
            ["Gus Ray", "Hal Ray", 50, 700, "x", 0, "Fourth"],
        ],
    },
    {  # no titles at all: the table is called "data"; a "Total" row next to a "Total" column
        "id": "1-2222-3",
        "header": ["Rank", "Nation", "Gold", "Total"],
        "types": ["real", "text", "real", "real"],
        "rows": [[1, "Norway", 5, 9], [2, "Sweden", 3, 6], [3, "Finland", 1, 2], [4, "Total", 9, 17]],
    },
    {  # no question uses it: not converted
        "id": "1-9999-1",
        "page_title": "Unused",
        "header": ["A"],
        "types": ["text"],
        "rows": [["a"]],
    },
]


def q(table_id: str, question: str, sel: int, agg: int, conds=()) -> dict:
    return {"phase": 1, "table_id": table_id, "question": question, "sql": {"sel": sel, "agg": agg, "conds": [list(c) for c in conds]}}


T1, T2, T3 = "1-10015132-11", "2-1234567-1", "1-2222-3"
QUESTIONS = [
    q(T1, "Which guards are from the United States?", 0, 0, [(2, 0, "United States"), (3, 0, "Guard")]),
    q(T1, "How many forwards?", 0, 3, [(3, 0, "FORWARD")]),
    q(T1, "Highest number of an American player?", 1, 1, [(2, 0, "united states")]),
    q(T1, "Lowest number above 5?", 1, 2, [(1, 1, "5")]),  # string value on a real column
    q(T1, "Sum of numbers below 20?", 1, 4, [(1, 2, 20)]),  # JSON number on a real column
    q(T1, 'When was the player from O\'Neill "Prep" Academy in Toronto?', 4, 0, [(5, 0, 'O\'Neill "Prep" Academy')]),
    q(T1, "Who played in 1998?", 0, 0, [(4, 0, 1998)]),  # JSON number on a text column
    q(T1, "Highest number of a player from Mars?", 1, 1, [(2, 0, "Mars")]),  # empty match
    q(T2, "Average % for more than 1,000 points?", 2, 5, [(3, 1, "1,000")]),  # grouping separator
    q(T2, "Who had about 50 %?", 0, 0, [(2, 0, "about 50 %")]),  # no number parse: regex fallback
    q(T2, "Second player ordered after Second?", 1, 0, [(6, 1, "Second")]),  # text comparison
    q(T2, "Which 2010 value is 7.5?", 5, 0, [(5, 0, 7.5)]),
    q(T2, "How many orders?", 6, 3),
    q(T2, "How many rows have 3.0?", 4, 3, [(4, 0, 3.0)]),  # float on a text column: "3.0"
    q(T3, "Gold of the total?", 2, 0, [(1, 0, "Total")]),  # value spells a column name
    q(T3, "Nations with more than 2 and fewer than 9 gold?", 1, 0, [(2, 1, 2), (2, 2, 9)]),
    q(T3, "How many ranks have a total above 5?", 0, 3, [(3, 1, "5.0")]),
]
REPEATED = {15}  # question indexes with two conditions on one column (see module docstring)


def build_wikisql(folder: Path, tables=TABLES, questions=QUESTIONS) -> Path:
    """The three files of a split, as WikiSQL ships them: text cells lowercased in the .db,
    real cells stored as REAL, columns col0..colN."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{SPLIT}.tables.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tables), encoding="utf-8")
    (folder / f"{SPLIT}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in questions), encoding="utf-8")
    conn = sqlite3.connect(folder / f"{SPLIT}.db")
    for table in tables:
        name = "table_" + table["id"].replace("-", "_")
        columns = ", ".join(f"col{i} {t}" for i, t in enumerate(table["types"]))
        conn.execute(f"CREATE TABLE {name} ({columns})")
        for row in table["rows"]:
            values = [_db_cell(cell, kind) for cell, kind in zip(row, table["types"])]
            conn.execute(f"INSERT INTO {name} VALUES ({', '.join('?' * len(values))})", values)
    conn.commit()
    conn.close()
    return folder


def _db_cell(cell, kind: str):
    return float(str(cell).replace(",", "")) if kind == "real" else str(cell).lower()


# The official engine, restated: parameters named :col{i}, values lowercased, then for a real column
# parsed like babel.numbers.parse_decimal (English: drop ",", Decimal) or by the fallback regex.
_NUM_RE = re.compile(r"[-+]?\d*\.\d+|\d+")


def official_execute(db: Path, table_id: str, sql: dict, per_condition: bool = False) -> list:
    conn = sqlite3.connect(db)
    table = "table_" + table_id.replace("-", "_")
    info = conn.execute("SELECT sql FROM sqlite_master WHERE tbl_name = ?", (table,)).fetchone()[0]
    schema = dict(part.split() for part in re.findall(r"\((.+)\)", info)[0].split(", "))
    select = f"col{sql['sel']}"
    agg = ["", "MAX", "MIN", "COUNT", "SUM", "AVG"][sql["agg"]]
    if agg:
        select = f"{agg}({select})"
    clauses, params = [], {}
    for k, (col, op, val) in enumerate(sql["conds"]):
        if isinstance(val, str):
            val = val.lower()
        if schema[f"col{col}"] == "real" and not isinstance(val, (int, float)):
            try:
                val = float(Decimal(val.replace(",", "")))
            except InvalidOperation:
                val = float(_NUM_RE.findall(val)[0])
        name = f"c{k}" if per_condition else f"col{col}"
        clauses.append(f"col{col} {['=', '>', '<'][op]} :{name}")
        params[name] = val
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    rows = conn.execute(f"SELECT {select} AS result FROM {table}{where}", params).fetchall()
    conn.close()
    return [r[0] for r in rows]


@pytest.fixture
def converted(tmp_path):
    source = build_wikisql(tmp_path / "wikisql")
    out = tmp_path / "out"
    counts = convert_wikisql(source, SPLIT, out)
    return source, out, counts


def load(out: Path):
    return json.loads((out / "tables.json").read_text()), json.loads((out / f"{SPLIT}.json").read_text())


def test_spider_layout_and_counts(converted):
    _, out, counts = converted
    assert counts == {"questions": len(QUESTIONS), "databases": 3, "skipped": 0, "repeated_column_conditions": 1, "problems": []}
    tables, examples = load(out)
    assert [t["db_id"] for t in tables] == ["t_1_10015132_11", "t_2_1234567_1", "t_1_2222_3"]
    assert sorted(p.name for p in (out / "database").iterdir()) == sorted(t["db_id"] for t in tables)
    for t in tables:
        assert (out / "database" / t["db_id"] / f"{t['db_id']}.sqlite").is_file()
    assert [e["db_id"] for e in examples] == ["t_" + x["table_id"].replace("-", "_") for x in QUESTIONS]
    assert all(set(e) == {"db_id", "question", "query"} for e in examples)
    # The Spider loader reads it as it is.
    schemas = load_schemas(out / "tables.json")
    assert len(load_examples(out / f"{SPLIT}.json", schemas)) == len(QUESTIONS)


def test_names_types_and_columns_match_the_databases(converted):
    _, out, _ = converted
    tables, _ = load(out)
    by_id = {t["db_id"]: t for t in tables}
    raptors = by_id["t_1_10015132_11"]
    assert raptors["table_names_original"] == ["toronto_raptors_all_time_roster"]
    assert raptors["table_names"] == ["toronto raptors all-time roster"]
    assert [c for _, c in raptors["column_names_original"]] == [
        "*",
        "player",
        "no_col",
        "nationality",
        "position",
        "years_in_toronto",
        "school_club_team",
    ]
    assert [c for _, c in raptors["column_names"]] == [
        "*",
        "player",
        "no.",
        "nationality",
        "position",
        "years in toronto",
        "school/club team",
    ]
    assert raptors["column_types"] == ["text", "text", "number", "text", "text", "text", "text"]
    assert raptors["primary_keys"] == [] and raptors["foreign_keys"] == []
    assert raptors["column_names_original"][0] == [-1, "*"]
    leaders = by_id["t_2_1234567_1"]
    assert leaders["table_names_original"] == ["scoring_leaders"]
    assert [c for _, c in leaders["column_names_original"][1:]] == [
        "player",
        "player_2",
        "percent",
        "points",
        "col4",
        "col_2010",
        "order_col",
    ]
    medals = by_id["t_1_2222_3"]
    assert medals["table_names_original"] == ["data"] and medals["table_names"] == ["data"]
    for entry in tables:
        conn = sqlite3.connect(out / "database" / entry["db_id"] / f"{entry['db_id']}.sqlite")
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert names == entry["table_names_original"]
        info = conn.execute(f"PRAGMA table_info({names[0]})").fetchall()
        assert [r[1] for r in info] == [c for _, c in entry["column_names_original"][1:]]
        assert [("number" if r[2] == "REAL" else "text") for r in info] == entry["column_types"][1:]
        conn.close()


def test_rows_are_the_db_rows_and_agree_with_the_json_rows(converted):
    source, out, _ = converted
    tables, _ = load(out)
    wiki = {("t_" + t["id"].replace("-", "_")): t for t in TABLES}
    for entry in tables:
        table = wiki[entry["db_id"]]
        conn = sqlite3.connect(out / "database" / entry["db_id"] / f"{entry['db_id']}.sqlite")
        rows = conn.execute(f"SELECT * FROM {entry['table_names_original'][0]}").fetchall()
        conn.close()
        original = sqlite3.connect(source / f"{SPLIT}.db")
        assert rows == original.execute(f"SELECT * FROM table_{table['id'].replace('-', '_')}").fetchall()
        original.close()
        expected = [tuple(_db_cell(c, k) for c, k in zip(row, table["types"])) for row in table["rows"]]
        assert rows == expected
        assert all(isinstance(v, float) for row in rows for v, k in zip(row, table["types"]) if k == "real")


def execute(out: Path, db_id: str, sql: str) -> list:
    conn = sqlite3.connect(out / "database" / db_id / f"{db_id}.sqlite")
    rows = conn.execute(sql).fetchall()
    conn.close()
    assert all(len(r) == 1 for r in rows)
    return [r[0] for r in rows]


def test_every_gold_query_matches_the_official_execution(converted):
    source, out, _ = converted
    _, examples = load(out)
    for i, (question, example) in enumerate(zip(QUESTIONS, examples)):
        ours = Counter(execute(out, example["db_id"], example["query"]))
        official = Counter(official_execute(source / f"{SPLIT}.db", question["table_id"], question["sql"]))
        intended = Counter(official_execute(source / f"{SPLIT}.db", question["table_id"], question["sql"], per_condition=True))
        assert ours == intended, (i, example["query"])
        if i in REPEATED:  # the official engine binds the last value to both conditions
            assert official == Counter() and ours == Counter({"norway": 1, "sweden": 1})
        else:
            assert ours == official, (i, example["query"])
        sqlglot.parse_one(example["query"], read="sqlite")  # the rest of sqlora parses gold SQL


def test_queries_are_rendered_spider_style(converted):
    _, out, _ = converted
    _, examples = load(out)
    queries = [e["query"] for e in examples]
    assert queries[0] == 'SELECT player FROM toronto_raptors_all_time_roster WHERE nationality = "united states" AND position = "guard"'
    assert queries[1] == 'SELECT count(player) FROM toronto_raptors_all_time_roster WHERE position = "forward"'
    assert queries[3] == "SELECT min(no_col) FROM toronto_raptors_all_time_roster WHERE no_col > 5"
    assert queries[4] == "SELECT sum(no_col) FROM toronto_raptors_all_time_roster WHERE no_col < 20"
    assert queries[5] == 'SELECT years_in_toronto FROM toronto_raptors_all_time_roster WHERE school_club_team = "o\'neill ""prep"" academy"'
    assert queries[6] == 'SELECT player FROM toronto_raptors_all_time_roster WHERE years_in_toronto = "1998"'
    assert queries[8] == "SELECT avg(percent) FROM scoring_leaders WHERE points > 1000"
    assert queries[9] == "SELECT player FROM scoring_leaders WHERE percent = 50"
    assert queries[11] == "SELECT col_2010 FROM scoring_leaders WHERE col_2010 = 7.5"
    assert queries[12] == "SELECT count(order_col) FROM scoring_leaders"
    assert queries[13] == 'SELECT count(col4) FROM scoring_leaders WHERE col4 = "3.0"'
    # "total" names a column: double quotes would compare with it, so single quotes
    assert queries[14] == "SELECT gold FROM data WHERE nation = 'total'"
    assert queries[15] == "SELECT nation FROM data WHERE gold > 2 AND gold < 9"


def test_output_is_deterministic(tmp_path):
    source = build_wikisql(tmp_path / "wikisql")
    convert_wikisql(source, SPLIT, tmp_path / "a")
    convert_wikisql(source, SPLIT, tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 5
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_existing_output_is_replaced_on_success(tmp_path):
    source = build_wikisql(tmp_path / "wikisql")
    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)
    convert_wikisql(source, SPLIT, out)
    assert not (out / "stale").exists() and (out / "tables.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_official_archive_layout_with_data_folder(tmp_path):
    build_wikisql(tmp_path / "WikiSQL" / "data")
    counts = convert_wikisql(tmp_path / "WikiSQL", SPLIT, tmp_path / "out")
    assert counts["questions"] == len(QUESTIONS)


# --- bad input ---------------------------------------------------------------------------------------


def expect_error(source: Path, out: Path, pattern: str, **kwargs) -> None:
    with pytest.raises(SqloraError, match=pattern) as info:
        convert_wikisql(source, SPLIT, out, **kwargs)
    assert "\n" not in str(info.value)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("missing", [f"{SPLIT}.jsonl", f"{SPLIT}.tables.jsonl", f"{SPLIT}.db"])
def test_missing_file_names_it(tmp_path, missing):
    source = build_wikisql(tmp_path / "wikisql")
    (source / missing).unlink()
    expect_error(source, tmp_path / "out", re.escape(str(source / missing)) + ": file not found")


def with_question_lines(tmp_path: Path, bad_lines: dict[int, str]) -> Path:
    """The fixture with some question lines (1-based) replaced by raw text."""
    source = build_wikisql(tmp_path / "wikisql")
    lines = (source / f"{SPLIT}.jsonl").read_text().splitlines()
    for lineno, text in bad_lines.items():
        lines[lineno - 1] = text
    (source / f"{SPLIT}.jsonl").write_text("\n".join(lines) + "\n")
    return source


BAD = {
    "truncated": (3, json.dumps(QUESTIONS[2])[:40], "invalid JSON"),
    "unknown table": (4, json.dumps(q("1-404-1", "?", 0, 0)), "unknown table_id '1-404-1'"),
    "sel out of range": (5, json.dumps(q(T1, "?", 6, 0)), r"sel 6 out of range 0\.\.5"),
    "cond column out of range": (6, json.dumps(q(T3, "?", 0, 0, [(4, 0, "x")])), r"conds\[0\] column 4 out of range"),
    "agg out of range": (7, json.dumps(q(T3, "?", 0, 6)), "agg 6 out of range"),
    "op OP": (8, json.dumps(q(T3, "?", 0, 0, [(1, 3, "x")])), r"conds\[0\] op 3 out of range"),
    "no number for a real column": (
        9,
        json.dumps(q(T3, "?", 0, 0, [(2, 0, "none")])),
        "condition on column 2: value 'none' has no number for a real column",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_question_raises_with_file_and_line(tmp_path, case):
    lineno, text, message = BAD[case]
    source = with_question_lines(tmp_path, {lineno: text})
    expect_error(source, tmp_path / "out", re.escape(f"{source / f'{SPLIT}.jsonl'}:{lineno}: ") + message)


def test_skip_bad_counts_and_lists_them(tmp_path):
    source = with_question_lines(tmp_path, {lineno: text for lineno, text, _ in BAD.values()})
    counts = convert_wikisql(source, SPLIT, tmp_path / "out", skip_bad=True)
    assert counts["skipped"] == len(BAD) and counts["questions"] == len(QUESTIONS) - len(BAD)
    assert [p.split(": ", 1)[0] for p in counts["problems"]] == [f"{source / f'{SPLIT}.jsonl'}:{n}" for n, _, _ in sorted(BAD.values())]
    _, examples = load(tmp_path / "out")
    assert len(examples) == counts["questions"]


def test_bad_tables_file_is_fatal_even_with_skip_bad(tmp_path):
    source = build_wikisql(tmp_path / "wikisql")
    lines = (source / f"{SPLIT}.tables.jsonl").read_text().splitlines()
    lines[1] = lines[1][:30]
    (source / f"{SPLIT}.tables.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    expect_error(source, out, re.escape(f"{source / f'{SPLIT}.tables.jsonl'}:2: invalid JSON"), skip_bad=True)


def test_failure_keeps_an_existing_output(tmp_path):
    source = with_question_lines(tmp_path, {2: "{"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(SqloraError, match=":2: invalid JSON"):
        convert_wikisql(source, SPLIT, out)
    assert (out / "keep").read_text() == "x"


def test_table_missing_from_the_db(tmp_path):
    source = build_wikisql(tmp_path / "wikisql")
    conn = sqlite3.connect(source / f"{SPLIT}.db")
    conn.execute("DROP TABLE table_1_2222_3")
    conn.commit()
    conn.close()
    expect_error(source, tmp_path / "out", re.escape(f"{source / f'{SPLIT}.jsonl'}:15: table table_1_2222_3 is not in"))
    counts = convert_wikisql(source, SPLIT, tmp_path / "out", skip_bad=True)
    assert counts["skipped"] == 3 and counts["databases"] == 2


# --- identifiers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, expected",
    [
        ("No.", "no_col"),
        ("Years in Toronto", "years_in_toronto"),
        ("School/Club Team", "school_club_team"),
        ("%", "percent"),
        ("", "col3"),
        ("—", "col3"),
        ("2010", "col_2010"),
        ("Order", "order_col"),
        ("Año", "ano"),
        ("U.S. viewers (millions)", "u_s_viewers_millions"),
        ("word " * 30, "_".join(["word"] * 12)),
    ],
)
def test_identifiers(header, expected):
    name = to_identifier(header, "col3", digit_prefix="col", reserved_suffix="col")
    assert name == expected
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", name)
    conn = sqlite3.connect(":memory:")  # usable unquoted, in SQLite and in sqlglot
    conn.execute(f"CREATE TABLE t ({name} TEXT)")
    conn.execute(f"SELECT max({name}) FROM t WHERE {name} = 1")
    assert sqlglot.parse_one(f"SELECT {name} FROM t", read="sqlite").selects[0].name == name


def test_unique_names_never_steal_a_later_name():
    assert unique_names(["player", "player", "player_2", "a"]) == ["player", "player_3", "player_2", "a"]


def test_bad_encoding_names_the_line(tmp_path):
    source = build_wikisql(tmp_path / "wikisql")
    path = source / f"{SPLIT}.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"question": "caf\xe9"}\n'
    path.write_bytes(b"".join(lines))
    expect_error(source, tmp_path / "out", re.escape(f"{path}:2: not UTF-8 text"))


def test_db_that_is_not_sqlite(tmp_path):
    source = build_wikisql(tmp_path / "wikisql")
    (source / f"{SPLIT}.db").write_bytes(b"not a database at all" * 100)
    expect_error(source, tmp_path / "out", re.escape(f"{source / f'{SPLIT}.db'}: cannot read as a SQLite database"))


def test_wikisql_goes_through_the_spider_path(tmp_path):
    from sqlora.data.layouts import load_split
    from sqlora.data.records import to_records

    source = build_wikisql(tmp_path / "wikisql")
    split = load_split("wikisql", source, "dev", work_dir=tmp_path / "work")
    records = to_records(split)
    assert len(records) == len(QUESTIONS)
    assert all(r.instruction.startswith(f"{r.db_id} contains tables such as") for r in records)
    assert all(split.database_path(r.db_id).is_file() for r in records)
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["wikisql-dev"]


def test_wikisql_needs_a_work_dir_and_writes_nothing_elsewhere(tmp_path, monkeypatch):
    from sqlora.data.layouts import load_split

    source = build_wikisql(tmp_path / "wikisql")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="work_dir"):
        load_split("wikisql", source, "dev")
    (source / f"{SPLIT}.db").write_bytes(b"not a database at all" * 100)  # the conversion fails
    with pytest.raises(SqloraError):
        load_split("wikisql", source, "dev", work_dir=tmp_path / "work")
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob("work/*"))  # nothing here, no partial folder
