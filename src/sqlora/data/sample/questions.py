"""Turn the templates into checked examples for one database, balanced over levels and templates."""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from .templates import TEMPLATES, Db, Slots, Template, with_article

# Share of each Spider hardness level among a database's questions.
LEVEL_SHARES = {"easy": 0.30, "medium": 0.36, "hard": 0.18, "extra": 0.16}


@dataclass(frozen=True)
class Example:
    db_id: str
    query: str
    question: str


# --- checking and sampling -------------------------------------------------------------------

# The top-level ORDER BY ... LIMIT of a gold query (no template orders inside a subquery).
ORDER_LIMIT = re.compile(r"^SELECT (?:DISTINCT )?.+? FROM (?P<rest>.+) ORDER BY (?P<key>.+?)(?: (?P<dir>ASC|DESC))? LIMIT (?P<k>\d+)$")


def ranked_values(conn: sqlite3.Connection, sql: str) -> tuple[int, list] | None:
    """For ``... ORDER BY key LIMIT k``: k and the sort keys of the first k + 1 rows."""
    m = ORDER_LIMIT.match(sql)
    if m is None:
        return None
    k = int(m["k"])
    probe = f"SELECT {m['key']} FROM {m['rest']} ORDER BY {m['key']} {m['dir'] or 'ASC'} LIMIT {k + 1}"
    return k, [row[0] for row in conn.execute(probe)]


def usable(conn: sqlite3.Connection, sql: str, column_names: set[str]) -> bool:
    """Whether a gold query has one clear, non-empty answer on its database."""
    # SQLite reads "x" as a column when one is named x; such a literal would change the query.
    if any(lit.strip("%").lower() in column_names for lit in re.findall(r'"([^"]*)"', sql)):
        return False
    rows = conn.execute(sql).fetchall()  # an error here is a template bug: let it surface
    if not rows or all(value is None for row in rows for value in row):
        return False
    if rows == [(0,)] and "count(" in sql:
        return False
    ranked = ranked_values(conn, sql)
    if ranked is not None:
        # Ties anywhere in the top k + 1 would make the answer (or its order) depend on row order.
        _, keys = ranked
        if len(set(keys)) != len(keys):
            return False
    return True


def _candidates(template: Template, bindings: list[Slots], rng: random.Random) -> Iterator[tuple[str, str]]:
    """Every binding once with a random phrasing, then again with another one if more are needed."""
    count = len(template.phrasings)
    # {a_x} is slot x with its indefinite article: "an age", "a price" (see with_article).
    # Real slots win over these (link templates have their own a_* slots for side a).
    bindings = [{**{"a_" + k: with_article(v) for k, v in slots.items()}, **slots} for slots in bindings]
    first = [rng.randrange(count) for _ in bindings]
    for slots, i in zip(bindings, first):
        yield template.sql.format(**slots), template.phrasings[i].format(**slots)
    for slots, i in zip(bindings, first):
        j = (i + 1 + rng.randrange(count - 1)) % count
        yield template.sql.format(**slots), template.phrasings[j].format(**slots)


def sample_questions(db: Db, conn: sqlite3.Connection, target: int, rng: random.Random) -> list[Example]:
    """About ``target`` checked examples for one database, spread over levels and templates.

    Each hardness level gets its share; within a level the applicable templates take turns,
    so no template dominates however many places it fits in this schema.
    """
    column_names = {c.name.lower() for t in db.domain.tables for c in t.columns}
    pools: dict[str, Iterator[tuple[str, str]]] = {}
    for template in TEMPLATES:
        bindings = list(template.bind(db, rng))
        if bindings:
            rng.shuffle(bindings)
            pools[template.key] = _candidates(template, bindings, rng)
    by_key = {t.key: t for t in TEMPLATES}
    chosen: list[Example] = []
    seen_questions: set[str] = set()
    verdicts: dict[str, bool] = {}

    def take(key: str) -> bool:
        for sql, question in pools[key]:
            if question in seen_questions:
                continue
            if sql not in verdicts:
                verdicts[sql] = usable(conn, sql, column_names)
            if verdicts[sql]:
                seen_questions.add(question)
                chosen.append(Example(db.domain.db_id, sql, question))
                return True
        return False

    def round_robin(keys: list[str], quota: int) -> None:
        keys = list(keys)
        rng.shuffle(keys)
        taken = 0
        while taken < quota and keys:
            for key in list(keys):
                if taken >= quota:
                    break
                if take(key):
                    taken += 1
                else:
                    keys.remove(key)

    for level, share in LEVEL_SHARES.items():
        round_robin([k for k in pools if by_key[k].hardness == level], round(share * target))
    round_robin(list(pools), target - len(chosen))  # a level that ran dry leaves room for others
    return chosen
