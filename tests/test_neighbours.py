"""Neighbour queries (sqlora.testsuite.neighbours): one small edit of a gold query at each site, valid SQLite."""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest
import sqlglot

from sqlora.testsuite.neighbours import KINDS, Neighbour, neighbour_queries
from tests.helpers import SPIDER

COLUMNS = {"singer": ["Singer_ID", "Name", "Country", "Age"], "concert": ["concert_ID", "Singer_ID", "Year", "Stadium"]}

# Spider-style golds: aliases, double-quoted strings, LIKE, subqueries, set operations, GROUP BY / HAVING, ORDER BY / LIMIT
QUERIES = [
    "SELECT count(*) FROM singer WHERE age > 20",
    'SELECT name ,  country FROM singer WHERE country  =  "France" AND age >= 30 ORDER BY age DESC',
    (
        "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id WHERE T2.year >= 2014 "
        "GROUP BY T1.name ORDER BY count(*) DESC LIMIT 3"
    ),
    "SELECT country , count(DISTINCT name) FROM singer GROUP BY country , age HAVING count(*) > 1 AND avg(age) < 30.5",
    "SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer) UNION SELECT name FROM singer WHERE country LIKE '%an%'",
    (
        'SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM concert WHERE stadium = "Wembley") '
        "EXCEPT SELECT name FROM singer WHERE name NOT LIKE 'J%'"
    ),
    "SELECT DISTINCT T2.stadium FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id ORDER BY T2.year ASC LIMIT 1",
]


def sqls(neighbours: list[Neighbour], kind: str | None = None) -> list[str]:
    return [n.sql for n in neighbours if kind is None or n.kind == kind]


def test_every_edit_of_a_simple_query_exactly():
    got = neighbour_queries("SELECT count(*) FROM singer WHERE age > 20", COLUMNS)
    base = "SELECT COUNT(*) FROM singer"
    assert sorted((n.kind, n.sql) for n in got) == sorted(
        [("condition", base)]
        + [("comparison", f"{base} WHERE age {op} 20") for op in ("=", "<>", "<", "<=", ">=")]
        + [("column", f"{base} WHERE {c} > 20") for c in ("Singer_ID", "Name", "Country")]  # singer's columns, not concert's
        + [("number", f"{base} WHERE age > 21"), ("number", f"{base} WHERE age > 19")]
    )  # no SUM(*)/AVG(*)/MIN(*)/MAX(*), no DISTINCT on a one-row count


def test_every_kind_appears_where_it_applies():
    kinds = {n.kind for q in QUERIES for n in neighbour_queries(q, COLUMNS)}
    assert kinds == set(KINDS)
    assert all(n.kind in KINDS for q in QUERIES for n in neighbour_queries(q, COLUMNS))


def test_aggregates_distinct_group_by_and_having():
    got = neighbour_queries(QUERIES[3], COLUMNS)
    tail = "FROM singer GROUP BY country, age HAVING COUNT(*) > 1 AND AVG(age) < 30.5"
    assert f"SELECT country, COUNT(name) {tail}" in sqls(got, "distinct")
    assert f"SELECT DISTINCT country, COUNT(DISTINCT name) {tail}" in sqls(got, "distinct")
    assert f"SELECT country, SUM(DISTINCT name) {tail}" in sqls(got, "aggregate")
    assert f"SELECT country, COUNT(DISTINCT name) {tail.replace('AVG(age)', 'MAX(age)')}" in sqls(got, "aggregate")
    assert not any("SUM(*)" in s or "AVG(*)" in s for s in sqls(got))
    assert sqls(got, "group_by") == [
        "SELECT country, COUNT(DISTINCT name) FROM singer",  # GROUP BY dropped takes its HAVING along
        "SELECT country, COUNT(DISTINCT name) FROM singer GROUP BY age HAVING COUNT(*) > 1 AND AVG(age) < 30.5",
        "SELECT country, COUNT(DISTINCT name) FROM singer GROUP BY country HAVING COUNT(*) > 1 AND AVG(age) < 30.5",
    ]
    assert sqls(got, "condition") == [
        "SELECT country, COUNT(DISTINCT name) FROM singer GROUP BY country, age HAVING AVG(age) < 30.5",
        "SELECT country, COUNT(DISTINCT name) FROM singer GROUP BY country, age HAVING COUNT(*) > 1",
    ]
    assert f"SELECT country, COUNT(DISTINCT name) {tail.replace('30.5', '31.5')}" in sqls(got, "number")


def test_order_by_and_limit():
    got = neighbour_queries(QUERIES[2], COLUMNS)
    head = "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id WHERE T2.year >= 2014"
    head += " GROUP BY T1.name"
    assert sorted(sqls(got, "order_by")) == sorted([f"{head} LIMIT 3", f"{head} ORDER BY COUNT(*) ASC LIMIT 3"])
    assert sqls(got, "limit") == [f"{head} ORDER BY COUNT(*) DESC LIMIT {n}" for n in (4, 2)] + [f"{head} ORDER BY COUNT(*) DESC"]
    assert not any(n.kind == "number" and "LIMIT 3" not in n.sql for n in got)  # LIMIT's number belongs to the limit kind
    one = neighbour_queries("SELECT name FROM singer ORDER BY age LIMIT 1", COLUMNS)
    # LIMIT 1 gives no LIMIT 0
    assert sqls(one, "limit") == ["SELECT name FROM singer ORDER BY age LIMIT 2", "SELECT name FROM singer ORDER BY age"]
    assert "SELECT name FROM singer ORDER BY age DESC LIMIT 1" in sqls(one, "order_by")


def test_aliases_resolve_to_their_tables():
    got = neighbour_queries(QUERIES[2], COLUMNS)
    selected = {s.split(" FROM ")[0] for s in sqls(got, "column") if not s.startswith("SELECT T1.name FROM")}
    assert selected == {"SELECT T1.Singer_ID", "SELECT T1.Country", "SELECT T1.Age"}  # T1 is singer: no Year, no Stadium
    years = {s.split(" WHERE ")[1].split(" ")[0] for s in sqls(got, "column") if "T2.year >= 2014" not in s}
    assert years == {"T2.concert_ID", "T2.Singer_ID", "T2.Stadium"}  # T2 is concert
    # an unqualified column belongs to the table of its FROM/JOINs that has it, and becomes no name another one has too
    joined = neighbour_queries("SELECT stadium FROM singer JOIN concert ON singer.singer_id = concert.singer_id", COLUMNS)
    selected = {s.split(" FROM ")[0] for s in sqls(joined, "column") if "stadium FROM" not in s}
    assert selected == {"SELECT concert_ID", "SELECT Year"}
    assert "SELECT stadium FROM singer JOIN concert ON singer.Age = concert.singer_id" in sqls(joined, "column")


def test_strings_stay_strings():
    got = neighbour_queries(QUERIES[1], COLUMNS)
    assert all('"France"' in n.sql for n in got if n.kind != "condition")  # a string, no column to swap
    assert 'SELECT name, country FROM singer WHERE country <> "France" AND age >= 30 ORDER BY age DESC' in sqls(got, "comparison")


def test_subqueries_and_set_operations_are_edited():
    got = sqls(neighbour_queries(QUERIES[4], COLUMNS))
    tail = "UNION SELECT name FROM singer WHERE country LIKE '%an%'"
    assert f"SELECT name FROM singer WHERE age > (SELECT MAX(age) FROM singer) {tail}" in got
    assert f"SELECT name FROM singer WHERE age > (SELECT AVG(Country) FROM singer) {tail}" in got
    left = "SELECT name FROM singer WHERE age > (SELECT AVG(age) FROM singer)"
    assert f"{left} UNION ALL SELECT name FROM singer WHERE country LIKE '%an%'" in got
    assert f"{left} UNION SELECT name FROM singer WHERE country NOT LIKE '%an%'" in got
    assert f"{left} UNION SELECT name FROM singer" in got
    inner = sqls(neighbour_queries(QUERIES[5], COLUMNS))
    assert any("(SELECT singer_id FROM concert)" in s for s in inner)  # the subquery's WHERE dropped
    assert any('stadium <> "Wembley"' in s for s in inner)
    assert any(" name LIKE 'J%'" in s for s in inner)  # NOT LIKE -> LIKE in the EXCEPT's right side


def test_no_neighbour_is_the_gold_and_none_repeats():
    for q in QUERIES:
        got = sqls(neighbour_queries(q, COLUMNS))
        assert got and len(got) == len(set(got))
        assert sqlglot.parse_one(q, read="sqlite").sql(dialect="sqlite") not in got


def test_limit_is_a_seeded_sample_in_order():
    full = neighbour_queries(QUERIES[2], COLUMNS)
    sample = neighbour_queries(QUERIES[2], COLUMNS, limit=5, seed=1)
    assert len(full) > 5 and len(sample) == 5
    assert sample == neighbour_queries(QUERIES[2], COLUMNS, limit=5, seed=1)
    assert sample != neighbour_queries(QUERIES[2], COLUMNS, limit=5, seed=2)
    positions = [full.index(n) for n in sample]
    assert positions == sorted(positions)
    assert neighbour_queries(QUERIES[2], COLUMNS, limit=len(full) + 3) == full


UNPARSABLE = [
    "",
    "SELECT FROM WHERE (",
    "not sql at all",
    "SELECT name FROM singer WHERE",
    'SELECT "open FROM singer',
    "SELECT 1; SELECT 2",
]
NOT_QUERIES = ["DROP TABLE singer", "INSERT INTO singer VALUES (1, 'a', 'b', 2)"]


@pytest.mark.parametrize("sql", UNPARSABLE + NOT_QUERIES)
def test_unparsable_or_not_a_query_gives_nothing(sql):
    assert neighbour_queries(sql, COLUMNS) == []


def test_every_neighbour_runs_on_sqlite():
    db = sqlite3.connect(":memory:")
    db.executescript(
        "CREATE TABLE singer (Singer_ID INTEGER PRIMARY KEY, Name TEXT, Country TEXT, Age INTEGER);"
        "CREATE TABLE concert (concert_ID INTEGER PRIMARY KEY, Singer_ID INTEGER, Year INTEGER, Stadium TEXT);"
        "INSERT INTO singer VALUES (1, 'Joe', 'France', 31), (2, 'Ann', 'Japan', 25), (3, 'Jan', 'France', 40);"
        "INSERT INTO concert VALUES (1, 1, 2014, 'Wembley'), (2, 2, 2015, 'Stade'), (3, 1, 2013, 'Wembley');"
    )
    # the regenerated gold still means the gold: "France" is read as a string by SQLite
    france = sqlglot.parse_one(QUERIES[1], read="sqlite").sql(dialect="sqlite")
    assert db.execute(france).fetchall() == db.execute(QUERIES[1]).fetchall() == [("Jan", "France"), ("Joe", "France")]
    for q in QUERIES:
        for n in neighbour_queries(q, COLUMNS):
            db.execute(n.sql).fetchall()  # raises sqlite3.Error on SQL SQLite does not take


@pytest.mark.needs_spider
@pytest.mark.skipif(not (SPIDER / "dev_gold.sql").exists(), reason="needs ../shared/datasets/spider/dev_gold.sql")
def test_spider_dev_gold(capsys, caplog):
    tables = {}
    for db in json.loads((SPIDER / "tables.json").read_text()):
        names = [t.lower() for t in db["table_names_original"]]
        tables[db["db_id"]] = {t: [c for i, c in db["column_names_original"] if i == k] for k, t in enumerate(names)}
    golds = {tuple(line.rsplit("\t", 1)) for line in (SPIDER / "dev_gold.sql").read_text().splitlines() if line.strip()}
    caplog.set_level(logging.WARNING)
    counts = [len(neighbour_queries(sql, tables[db_id])) for sql, db_id in sorted(golds)]
    assert sum(c > 0 for c in counts) >= 0.95 * len(counts)
    assert capsys.readouterr() == ("", "") and not caplog.records
