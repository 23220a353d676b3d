"""Tests for sqlora.evaluate.exact_match: official Spider exact-set-match, example by example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sqlora.data.layouts import _parse_schema, load_schemas
from sqlora.data.schema import DatabaseSchema
from sqlora.evaluate.exact_match import exact_match, foreign_key_map
from sqlora.evaluate.spider_sql import parse_spider_sql

# concert_singer, as in Spider's tables.json (its types left out: EM does not read them), read as
# sqlora reads every tables.json.
CONCERT_SINGER = _parse_schema(
    {
        "db_id": "concert_singer",
        "table_names_original": ["stadium", "singer", "concert", "singer_in_concert"],
        "column_names_original": [
            [-1, "*"],
            [0, "Stadium_ID"],
            [0, "Location"],
            [0, "Name"],
            [0, "Capacity"],
            [0, "Highest"],
            [0, "Lowest"],
            [0, "Average"],
            [1, "Singer_ID"],
            [1, "Name"],
            [1, "Country"],
            [1, "Song_Name"],
            [1, "Song_release_year"],
            [1, "Age"],
            [1, "Is_male"],
            [2, "concert_ID"],
            [2, "concert_Name"],
            [2, "Theme"],
            [2, "Stadium_ID"],
            [2, "Year"],
            [3, "concert_ID"],
            [3, "Singer_ID"],
        ],
        "foreign_keys": [[18, 1], [21, 8], [20, 15]],
        "primary_keys": [1, 8, 15, 20],
        "column_types": ["text"] * 22,
    },
    "concert_singer",
)


def em(gold: str, pred: str, schema: DatabaseSchema = CONCERT_SINGER) -> bool:
    match, error = exact_match(gold, pred, schema)
    assert error is None, error
    return match


JOIN = "FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.singer_id = T2.singer_id"


@pytest.mark.parametrize(
    ("gold", "pred", "expected"),
    [
        # literal values are dropped before comparison
        ("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE age > 35", True),
        ("SELECT name FROM singer WHERE country = 'France'", 'SELECT name FROM singer WHERE country = "Spain"', True),
        # wrong column / wrong operator / wrong aggregate
        ("SELECT name FROM singer", "SELECT country FROM singer", False),
        ("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE age < 20", False),
        ("SELECT max(age) FROM singer", "SELECT min(age) FROM singer", False),
        # ORDER BY: missing, direction, LIMIT presence; the LIMIT value is never compared
        ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer", False),
        ("SELECT name FROM singer ORDER BY age DESC", "SELECT name FROM singer ORDER BY age ASC", False),
        ("SELECT name FROM singer ORDER BY age DESC LIMIT 1", "SELECT name FROM singer ORDER BY age DESC", False),
        ("SELECT name FROM singer ORDER BY age DESC LIMIT 1", "SELECT name FROM singer ORDER BY age DESC LIMIT 3", True),
        ("SELECT name FROM singer LIMIT 1", "SELECT name FROM singer LIMIT 5", True),
        # bag matching of SELECT items; DISTINCT ignored at top level
        ("SELECT name, age FROM singer", "SELECT age, name FROM singer", True),
        ("SELECT name FROM singer", "SELECT DISTINCT name FROM singer", True),
        ("SELECT count(name) FROM singer", "SELECT count(DISTINCT name) FROM singer", True),
        # WHERE: AND/OR and condition order
        ("SELECT name FROM singer WHERE age > 1 AND country = 'x'", "SELECT name FROM singer WHERE country = 'y' AND age > 2", True),
        ("SELECT name FROM singer WHERE age > 1 AND country = 'x'", "SELECT name FROM singer WHERE age > 1 OR country = 'x'", False),
        # joins: tables compared as a multiset, ON conditions not compared at all
        (f"SELECT T1.name {JOIN}", "SELECT T2.name FROM singer_in_concert AS T1 JOIN singer AS T2 ON T2.singer_id = T1.singer_id", True),
        (f"SELECT T1.name {JOIN}", "SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.name = T2.concert_id", True),
        (f"SELECT T1.name {JOIN}", "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.concert_id", False),
        # alias names do not matter
        (f"SELECT T1.name {JOIN}", "SELECT T2.name FROM singer AS T2 JOIN singer_in_concert AS T1 ON T2.singer_id = T1.singer_id", True),
        # foreign-key unification (kmap): singer_in_concert.singer_id ~ singer.singer_id when both
        # tables are in FROM
        (f"SELECT T1.singer_id {JOIN}", f"SELECT T2.singer_id {JOIN}", True),
        (f"SELECT T1.name {JOIN} WHERE T1.singer_id = 3", f"SELECT T1.name {JOIN} WHERE T2.singer_id = 3", True),
        (f"SELECT T1.name {JOIN} GROUP BY T1.singer_id", f"SELECT T1.name {JOIN} GROUP BY T2.singer_id", True),
        # ... but a different table is still a different FROM
        ("SELECT count(*) FROM singer WHERE singer_id = 1", "SELECT count(*) FROM singer_in_concert WHERE singer_id = 1", False),
        # GROUP BY / HAVING
        (
            "SELECT country, count(*) FROM singer GROUP BY country",
            "SELECT country, count(*) FROM singer GROUP BY country HAVING count(*) > 1",
            False,
        ),
        (
            "SELECT country FROM singer GROUP BY country HAVING count(*) > 1",
            "SELECT country FROM singer GROUP BY country HAVING count(*) > 7",
            True,
        ),
        # nested queries: compared whole, values dropped, DISTINCT and FK columns kept as written
        (
            "SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)",
            "SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer WHERE age > 3)",
            False,
        ),
        (
            "SELECT name FROM singer WHERE singer_id IN (SELECT singer_id FROM singer_in_concert)",
            "SELECT name FROM singer WHERE singer_id IN (SELECT DISTINCT singer_id FROM singer_in_concert)",
            False,
        ),
        (
            "SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM singer_in_concert WHERE concert_id = 1)",
            "SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM singer_in_concert WHERE concert_id = 2)",
            True,
        ),
        # set operations compared recursively
        (
            "SELECT name FROM singer WHERE age > 1 INTERSECT SELECT name FROM singer WHERE age < 9",
            "SELECT name FROM singer WHERE age > 5 INTERSECT SELECT name FROM singer WHERE age < 3",
            True,
        ),
        (
            "SELECT name FROM singer WHERE age > 1 INTERSECT SELECT name FROM singer WHERE age < 9",
            "SELECT name FROM singer WHERE age > 1 UNION SELECT name FROM singer WHERE age < 9",
            False,
        ),
        # case of keywords and identifiers is irrelevant
        ("SELECT Name FROM SINGER WHERE Age > 1", "select name from singer where age > 1", True),
        # as the official tokenizer: spaced comparison operators are one operator ...
        ("SELECT name FROM singer WHERE age >= 1", "SELECT name FROM singer WHERE age > = 1", True),
        ("SELECT name FROM singer WHERE age != 1", "SELECT name FROM singer WHERE age !  = 1", True),
        # ... and only the first statement is parsed
        ("SELECT name FROM singer", "SELECT name FROM singer; SELECT age FROM singer", True),
    ],
)
def test_perturbations(gold: str, pred: str, expected: bool) -> None:
    assert em(gold, pred) is expected


# The official parse_value reads a condition value that is not a number, a string or a (query) as
# a column, and skips what follows it up to the next "," ")" AND, clause or join keyword: OR is not
# one. Verdicts checked against the official evaluator on Spider's concert_singer.
@pytest.mark.parametrize(
    ("gold", "pred", "expected"),
    [
        # JOIN ... ON a = b OR a = c: one ON condition, no OR keyword
        (f"SELECT T1.name {JOIN}", f"SELECT T1.name {JOIN} OR T1.singer_id = T2.concert_id", True),
        (f"SELECT T1.name {JOIN} OR T1.singer_id = T2.concert_id", f"SELECT T1.name {JOIN}", True),
        # ... and in WHERE, up to the next AND; after a number the OR stays
        (
            "SELECT name FROM singer WHERE age > 1 AND country = name",
            "SELECT name FROM singer WHERE age > 1 AND country = name OR age < 5",
            True,
        ),
        ("SELECT name FROM singer WHERE country = name OR age > 1", "SELECT name FROM singer WHERE country = name", True),
        ("SELECT name FROM singer WHERE age = 1 OR country = name", "SELECT name FROM singer WHERE age = 1", False),
        (
            "SELECT name FROM singer WHERE age > song_release_year",
            "SELECT name FROM singer WHERE age > song_release_year + 1 OR age < 3",
            True,
        ),
        (
            "SELECT name FROM singer WHERE age BETWEEN song_release_year AND age",
            "SELECT name FROM singer WHERE age BETWEEN song_release_year OR 1 AND age OR country = 'x'",
            True,
        ),
        # the LEFT of "ON a = b LEFT JOIN" is skipped: a plain JOIN
        (
            f"SELECT T3.concert_name {JOIN} JOIN concert AS T3 ON T2.concert_id = T3.concert_id",
            f"SELECT T3.concert_name {JOIN} LEFT JOIN concert AS T3 ON T2.concert_id = T3.concert_id",
            True,
        ),
        # skipping up to a nested query's SELECT ends the query there: the rest is never read
        (
            "SELECT name FROM singer WHERE country = name",
            "SELECT name FROM singer WHERE country = name OR singer_id IN (SELECT singer_id FROM singer_in_concert) ORDER BY age",
            True,
        ),
    ],
)
def test_column_value_skips_up_to_the_next_and(gold: str, pred: str, expected: bool) -> None:
    assert em(gold, pred) is expected


# The official parse_sql reads FROM, WHERE, GROUP BY, HAVING, ORDER BY, LIMIT, then a set operation,
# in that order: a clause out of order ends the query, and at the top level the rest is never read.
@pytest.mark.parametrize(
    ("gold", "pred", "expected"),
    [
        ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age WHERE age > 20", True),
        (
            "SELECT country FROM singer ORDER BY count(*) DESC LIMIT 1",
            "SELECT country FROM singer ORDER BY count(*) DESC LIMIT 1 GROUP BY country",
            True,
        ),
        (
            "SELECT country FROM singer GROUP BY country ORDER BY count(*) DESC LIMIT 1",
            "SELECT country FROM singer ORDER BY count(*) DESC LIMIT 1 GROUP BY country",
            False,
        ),
        (
            "SELECT country FROM singer GROUP BY country HAVING count(*) > 1",
            "SELECT country FROM singer GROUP BY country HAVING count(*) > 1 WHERE age > 20",
            True,
        ),
        (
            "SELECT country FROM singer WHERE age > 20 GROUP BY country HAVING count(*) > 1",
            "SELECT country FROM singer GROUP BY country HAVING count(*) > 1 WHERE age > 20",
            False,
        ),
        # a set operation after the clause that ends the query is not read either
        ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age WHERE age > 1 UNION SELECT name FROM singer", True),
        ("SELECT name FROM singer WHERE age > 1", "SELECT name FROM singer WHERE age > 1 JOIN concert", True),
    ],
)
def test_clause_out_of_order_ends_the_query(gold: str, pred: str, expected: bool) -> None:
    assert em(gold, pred) is expected


@pytest.mark.parametrize(
    "pred",
    [
        "SELECT FROM WHERE",
        "SELECT nonexistent FROM singer",
        "SELECT name FROM singer WHERE age <> 20",  # the official tokenizer rejects <>
        "SELECT name FROM singer WHERE age IS NULL",
        "SELECT name FROM singer WHERE age IN (1, 2)",
        "SELECT name AS n FROM singer",
        "SELECT T1.name FROM singer T1",  # alias without AS
        "SELECT T1.name FROM singer AS T1 LEFT JOIN singer_in_concert AS T2 ON T1.singer_id = T2.singer_id",
        "SELECT name FROM singer UNION ALL SELECT name FROM singer",
        "SELECT name FROM singer WHERE (age > 1 OR age < 0)",
        "SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS",  # the official reads a token after AS
        # first statement parsed, but a later "singer AS T1" rebinds T1 (the official's whole-text alias map)
        "SELECT T1.stadium_id FROM concert AS T1; SELECT 1 FROM singer AS T1",
        # ... as does one in the text after a clause out of order, which is not parsed either
        "SELECT T1.stadium_id FROM concert AS T1 ORDER BY T1.year WHERE stadium_id IN (SELECT 1 FROM singer AS T1)",
        # a clause out of order inside parentheses: the official expects ")" there
        "SELECT name FROM singer WHERE singer_id IN (SELECT singer_id FROM singer_in_concert ORDER BY concert_id WHERE concert_id > 1)",
        "SELECT name FROM singer WHERE age = (SELECT max(age) FROM singer ORDER BY age LIMIT 1 OFFSET 1)",
        # ... or reached by skipping after a column value
        "SELECT name FROM singer WHERE singer_id IN (SELECT singer_id FROM singer WHERE country = name OR singer_id IN (SELECT singer_id FROM singer_in_concert))",
        # HAVING not right after GROUP BY: the official reads it as a table or column name
        "SELECT name FROM singer HAVING count(*) > 1",
        "SELECT name FROM singer WHERE age > 1 HAVING count(*) > 1",
        "SELECT name FROM singer GROUP BY name HAVING count(*) > 1 HAVING count(*) < 5",
    ],
)
def test_unparsable_prediction_scores_zero(pred: str) -> None:
    match, error = exact_match("SELECT name FROM singer", pred, CONCERT_SINGER)
    assert match is False
    assert error and "\n" not in error


def test_unparsable_gold_raises() -> None:
    with pytest.raises(ValueError):
        exact_match("SELECT FROM", "SELECT name FROM singer", CONCERT_SINGER)


def test_foreign_key_map_groups() -> None:
    kmap = foreign_key_map(CONCERT_SINGER)
    assert kmap["__singer_in_concert.singer_id__"] == "__singer.singer_id__"
    assert kmap["__concert.stadium_id__"] == "__stadium.stadium_id__"
    assert "__singer.name__" not in kmap


def test_parse_structure() -> None:
    sql = parse_spider_sql("SELECT count(*) FROM singer WHERE age BETWEEN 1 AND 5 ORDER BY name DESC LIMIT 3", CONCERT_SINGER)
    assert sql["select"] == (False, [(3, (0, (0, "__all__", False), None))])
    assert sql["from"]["table_units"] == [("table_unit", "__singer__")]
    assert sql["where"] == [(False, 1, (0, (0, "__singer.age__", False), None), 1.0, 5.0)]
    assert sql["orderBy"] == ("desc", [(0, (0, "__singer.name__", False), None)])
    assert sql["limit"] == 1


# --------------------------------------------------------------------------- real Spider dev


@pytest.fixture(scope="module")
def spider_dev(spider_dir: Path):
    return json.loads((spider_dir / "dev.json").read_text()), load_schemas(spider_dir / "tables.json")


def test_gold_as_prediction_scores_one(spider_dev) -> None:
    dev, schemas = spider_dev
    assert len(dev) == 1034
    failures = [ex["query"] for ex in dev if exact_match(ex["query"], ex["query"], schemas[ex["db_id"]]) != (True, None)]
    assert failures == []


def _to_index_form(sql: dict | None, entry: DatabaseSchema):
    """Our parse in dev.json's ``sql`` form (integer ids), values other than nested queries dropped."""
    if sql is None:
        return None
    tables = [t.lower() for t in entry.tables]
    ids = {"__all__": 0} | {f"__{tables[c.table]}.{c.name.lower()}__": i for i, c in enumerate(entry.columns, 1)}

    def col(u):
        return None if u is None else [u[0], ids[u[1]], bool(u[2])]

    def val(u):
        return None if u is None else [u[0], col(u[1]), col(u[2])]

    def cond(c):
        return [
            x
            if i % 2
            else [
                x[0],
                x[1],
                val(x[2]),
                _to_index_form(x[3], entry) if isinstance(x[3], dict) else None,
                _to_index_form(x[4], entry) if isinstance(x[4], dict) else None,
            ]
            for i, x in enumerate(c)
        ]

    return {
        "select": [bool(sql["select"][0]), [[a, val(u)] for a, u in sql["select"][1]]],
        "from": {
            "table_units": [
                [t, tables.index(x[2:-2])] if t == "table_unit" else [t, _to_index_form(x, entry)] for t, x in sql["from"]["table_units"]
            ],
            "conds": cond(sql["from"]["conds"]),
        },
        "where": cond(sql["where"]),
        "groupBy": [col(c) for c in sql["groupBy"]],
        "having": cond(sql["having"]),
        "orderBy": [sql["orderBy"][0], [val(u) for u in sql["orderBy"][1]]] if sql["orderBy"] else [],
        "limit": sql["limit"] is not None,
        **{k: _to_index_form(sql[k], entry) for k in ("intersect", "union", "except")},
    }


def _official_normalised(sql: dict | None):
    if sql is None:
        return None

    def cond(c):
        return [
            x if i % 2 else [x[0], x[1], x[2], *(_official_normalised(v) if isinstance(v, dict) else None for v in x[3:])]
            for i, x in enumerate(c)
        ]

    return {
        "select": sql["select"],
        "from": {
            "table_units": [[t, x if t == "table_unit" else _official_normalised(x)] for t, x in sql["from"]["table_units"]],
            "conds": cond(sql["from"]["conds"]),
        },
        "where": cond(sql["where"]),
        "groupBy": sql["groupBy"],
        "having": cond(sql["having"]),
        "orderBy": sql["orderBy"],
        "limit": sql["limit"] is not None,
        **{k: _official_normalised(sql[k]) for k in ("intersect", "union", "except")},
    }


def test_gold_parse_matches_official_sql_field(spider_dev) -> None:
    """Our parse of each dev gold query equals its official parse (dev.json ``sql``), values aside."""
    dev, schemas = spider_dev
    # Dev 225-228 ("ON a = b OR a = c") included: the official reads "ON a = b" there, as we do.
    mismatched = []
    for i, ex in enumerate(dev):
        entry = schemas[ex["db_id"]]
        ours = json.loads(json.dumps(_to_index_form(parse_spider_sql(ex["query"], entry), entry)))
        if ours != json.loads(json.dumps(_official_normalised(ex["sql"]))):
            mismatched.append(i)
    assert mismatched == []
