import json
from collections import Counter
from pathlib import Path

import pytest

from sqlora.sql.hardness import hardness_level, hardness_or_unparsed, spider_hardness


@pytest.mark.parametrize(
    ("sql", "level"),
    [
        # easy: at most one component, nothing else
        ("SELECT count(*) FROM singer", "easy"),
        ("SELECT name FROM singer WHERE age > 20", "easy"),
        ("SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1", "easy"),
        # A FROM subquery is neither a join nor a nested query in the official count.
        ("SELECT count(*) FROM (SELECT a FROM t GROUP BY a)", "easy"),
        # medium
        ("SELECT name, age FROM singer WHERE age > 20", "medium"),
        ("SELECT T1.name FROM a AS T1 JOIN b AS T2 ON T1.id = T2.id WHERE T2.x = 1", "medium"),
        ("SELECT name FROM singer ORDER BY age DESC LIMIT 1", "medium"),
        ("SELECT avg(age), max(age) FROM singer", "medium"),
        # hard
        ("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)", "hard"),
        ("SELECT country FROM singer WHERE age > 20 GROUP BY country ORDER BY count(*) DESC", "hard"),
        ("SELECT name FROM a INTERSECT SELECT name FROM b", "hard"),
        ("SELECT a FROM t UNION SELECT a FROM u UNION SELECT a FROM v", "hard"),  # counted once
        ("SELECT name FROM t WHERE a LIKE '%x%' OR b = 1", "hard"),  # OR and LIKE are components
        # extra
        ("SELECT name, age FROM a EXCEPT SELECT name, age FROM b", "extra"),
        (
            "SELECT T1.a, T2.b, count(*) FROM x AS T1 JOIN y AS T2 ON T1.id = T2.id "
            "JOIN z AS T3 ON T2.id = T3.id WHERE T3.c = 1 AND T3.d = 2 "
            "GROUP BY T1.a, T2.b ORDER BY count(*) DESC LIMIT 5",
            "extra",
        ),
        ("SELECT a FROM t WHERE b IN (SELECT b FROM u) AND c IN (SELECT c FROM v)", "extra"),
    ],
)
def test_levels(sql: str, level: str) -> None:
    assert spider_hardness(sql) == level


def test_official_quirk_negated_where_predicate_counts_as_aggregate() -> None:
    # count(*) plus NOT IN makes two "aggregates" officially; IN alone leaves one.
    assert spider_hardness("SELECT count(*) FROM s WHERE id IN (SELECT sid FROM c)") == "hard"
    assert spider_hardness("SELECT count(*) FROM s WHERE id NOT IN (SELECT sid FROM c)") == "extra"


def test_official_quirk_having_connective_counts_as_aggregate() -> None:
    assert spider_hardness("SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1") == "easy"
    assert spider_hardness("SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1 AND sum(b) > 2") == "medium"


def test_case_and_whitespace_do_not_matter() -> None:
    assert spider_hardness("select  name ,  age\nfrom singer where age  >  20 ;") == "medium"


# Counted on what the official parser reads (checked against its eval_hardness): a column value
# skips what follows it up to the next AND, and a clause out of order ends the query.
@pytest.mark.parametrize(
    ("sql", "level"),
    [
        (
            "SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.singer_id = T2.singer_id OR T1.singer_id = T2.concert_id",
            "easy",
        ),
        ("SELECT name FROM singer WHERE country = name OR age > 1", "easy"),
        ("SELECT name FROM singer WHERE age = 1 OR country = name", "medium"),
        ("SELECT name FROM singer WHERE country = name OR singer_id IN (SELECT singer_id FROM singer_in_concert)", "easy"),
        ("SELECT name FROM singer ORDER BY age WHERE age > 1 AND country = 'x'", "easy"),
        ("SELECT country FROM singer ORDER BY count(*) DESC LIMIT 1 GROUP BY country", "medium"),
    ],
)
def test_levels_of_what_the_official_reads(sql: str, level: str) -> None:
    assert spider_hardness(sql) == level


@pytest.mark.parametrize("sql", ["", "SELECT FROM WHERE (", "SELECT a FROM t WHERE", "DROP TABLE t", "SELECT 1; SELECT 2"])
def test_unparseable_sql_raises_value_error(sql: str) -> None:
    with pytest.raises(ValueError) as info:
        spider_hardness(sql)
    assert "\n" not in str(info.value)


def test_hardness_or_unparsed() -> None:
    assert hardness_or_unparsed("SELECT name FROM singer") == spider_hardness("SELECT name FROM singer") == "easy"
    assert hardness_or_unparsed("SELECT FROM WHERE (") == "unparsed"


@pytest.fixture(scope="module")
def dev_examples(spider_dir: Path) -> list[dict]:
    return json.loads((spider_dir / "dev.json").read_text(encoding="utf-8"))


def test_spider_dev_distribution_matches_official(dev_examples) -> None:
    counts = Counter(spider_hardness(example["query"]) for example in dev_examples)
    assert counts == {"easy": 248, "medium": 446, "hard": 174, "extra": 166}


def _official_level(sql: dict) -> str:
    """The official eval_hardness formula, applied to the official parse stored in dev.json."""
    conds = sql["from"]["conds"], sql["where"], sql["having"]
    units = [unit for cond in conds for unit in cond[::2]]
    like = 9  # index of "like" in the official WHERE_OPS
    comp1 = (
        sum(bool(sql[key]) for key in ("where", "groupBy", "orderBy"))
        + (sql["limit"] is not None)
        + max(len(sql["from"]["table_units"]) - 1, 0)
        + sum(cond[1::2].count("or") for cond in conds)
        + sum(unit[1] == like for unit in units)
    )
    comp2 = sum(isinstance(v, dict) for unit in units for v in unit[3:5]) + sum(
        sql[key] is not None for key in ("intersect", "except", "union")
    )
    # has_agg(x) is x[0] != 0: select units, WHERE cond units (their not_op), group/order col
    # units, and every element of HAVING including the 'and'/'or' strings.
    order_cols = [col for val in (sql["orderBy"][1] if sql["orderBy"] else []) for col in val[1:] if col]
    aggs = sum(item[0] != 0 for item in [*sql["select"][1], *sql["where"][::2], *sql["groupBy"], *order_cols, *sql["having"]])
    others = (aggs > 1) + (len(sql["select"][1]) > 1) + (len(sql["where"]) > 1) + (len(sql["groupBy"]) > 1)
    return hardness_level(comp1, comp2, others)


def test_spider_dev_each_example_matches_official_parse(dev_examples) -> None:
    mismatches = [
        (i, example["query"])
        for i, example in enumerate(dev_examples)
        if spider_hardness(example["query"]) != _official_level(example["sql"])
    ]
    assert mismatches == []
