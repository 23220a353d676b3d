"""Schema-generic question templates: SQL patterns with several phrasings over named slots.

A template's ``bind`` function yields slot values ({plural}, {nword}, {v}, ...) for every
place in a database where it fits: every entity table, numeric column, categorical value,
foreign key or many-to-many link. Templates only look at column kinds, so dev databases (new
domains) get the same kinds of questions as train databases: the split is cross-domain yet
learnable. Every literal a template puts in SQL comes from the rows and is also written into
the question.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

from .database import Rows, table_of
from .tables import Column, Domain, Kind, Table

Slots = dict[str, str]


@dataclass(frozen=True)
class Relation:
    """A many-to-one foreign key between two entity tables: each child row has one parent."""

    child: Table
    fk: Column
    parent: Table

    @property
    def pk(self) -> str:
        return self.fk.references.split(".")[1]


@dataclass(frozen=True)
class Link:
    """A link table seen from side a: b rows relate to a rows through it ("artists ... festivals")."""

    table: Table
    a: Table
    a_fk: Column
    b: Table
    b_fk: Column


@dataclass
class Db:
    """A filled domain, with the structure the templates bind to."""

    domain: Domain
    rows: Rows

    def values(self, table: Table, column: Column | str) -> list:
        name = column if isinstance(column, str) else column.name
        return [row[name] for row in self.rows[table.name]]

    @cached_property
    def entities(self) -> list[Table]:
        return [t for t in self.domain.tables if t.name_column is not None]

    @cached_property
    def relations(self) -> list[Relation]:
        found = []
        for child in self.entities:
            for fk in child.of_kind(Kind.FOREIGN):
                parent = table_of(self.domain, fk.references.split(".")[0])
                if parent.name_column is not None:
                    found.append(Relation(child, fk, parent))
        return found

    @cached_property
    def links(self) -> list[Link]:
        found = []
        for table in self.domain.tables:
            fks = table.of_kind(Kind.FOREIGN)
            if table.name_column is None and len(fks) == 2:
                first, second = (table_of(self.domain, fk.references.split(".")[0]) for fk in fks)
                found.append(Link(table, first, fks[0], second, fks[1]))
                found.append(Link(table, second, fks[1], first, fks[0]))
        return found


@dataclass(frozen=True)
class Template:
    key: str
    hardness: str  # Spider's level for this SQL shape (checked against Spider's rules offline)
    sql: str
    phrasings: tuple[str, ...]
    bind: Callable[[Db, random.Random], Iterator[Slots]]


# --- slot helpers ----------------------------------------------------------------------------


def plural(words: str) -> str:
    if words.endswith(("s", "x", "ch", "sh")):
        return words + "es"
    if words.endswith("y") and words[-2:-1] not in "aeiou":
        return words[:-1] + "ies"
    return words + "s"


def with_article(words: str) -> str:
    """'an age', 'a price'; plural-looking words ('followers', 'bedrooms') take none."""
    if words.endswith("s") and not words.endswith("ss") and not words.startswith("number of"):
        return words
    return ("an " if words[0] in "aeiou" else "a ") + words


def singular_verb(phrase: str) -> str:
    """'were borrowed by' -> 'was borrowed by'; past-tense verbs are the same either way."""
    first, _, rest = phrase.partition(" ")
    first = {"were": "was", "are": "is", "have": "has"}.get(first, first)
    return f"{first} {rest}".strip()


def fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def entity(t: Table, prefix: str = "") -> Slots:
    """Slots naming a table; with a prefix ("child") the table itself is {child}, else {t}."""
    p = prefix + "_" if prefix else ""
    name = t.name_column
    return {
        prefix or "t": t.name,
        p + "singular": t.singular,
        p + "plural": t.plural,
        p + "name": name.name,
        p + "name_word": name.words,
        p + "names": plural(name.words),
        p + "key": t.primary_key[0],
    }


def col(c: Column, slot: str) -> Slots:
    return {slot: c.name, slot + "word": c.words, slot + "words": plural(c.words)}


GREATER = {"op": ">", "cmp": "greater than", "cmp2": "above", "higher": "higher"}
LESS = {"op": "<", "cmp": "less than", "cmp2": "below", "higher": "lower"}
HIGHEST = {"dir": "DESC", "most": "highest", "most_common": "most", "largest": "largest"}
LOWEST = {"dir": "ASC", "most": "lowest", "most_common": "least", "largest": "smallest"}
AGGREGATES = ({"agg": "avg", "aggword": "average"}, {"agg": "max", "aggword": "maximum"}, {"agg": "min", "aggword": "minimum"})


def nice(value: float, spread: float) -> float:
    """Round to two significant digits of the column's spread: 83127 -> 83000, 1957 -> 1957, 3.27 -> 3.3."""
    exponent = max(-2, math.floor(math.log10(spread)) - 1) if spread > 0 else 0
    step = 10.0**exponent
    rounded = round(value / step) * step
    return int(rounded) if exponent >= 0 else round(rounded, -exponent)


def thresholds(values: list, rng: random.Random, count: int = 2) -> list[str]:
    """A few round numbers from the middle of a column, so both > and < select some rows."""
    ordered = sorted(values)
    spread = ordered[-1] - ordered[0]
    found: list[str] = []
    for _ in range(count * 4):
        x = fmt(nice(ordered[int(rng.uniform(0.2, 0.8) * len(ordered))], spread))
        if x not in found:
            found.append(x)
        if len(found) == count:
            break
    return found


def sample(items: list, k: int, rng: random.Random) -> list:
    return rng.sample(items, min(k, len(items)))


# --- bindings: where each template fits ----------------------------------------------------


def each_entity(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        yield entity(t)


def each_number(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        for n in t.of_kind(Kind.NUMBER):
            yield {**entity(t), **col(n, "n")}


def each_number_direction(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_number(db, rng):
        for direction in (HIGHEST, LOWEST):
            yield {**slots, **direction}


def each_number_comparison(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_number(db, rng):
        for comparison in (GREATER, LESS):
            yield {**slots, **comparison}


def each_top_k(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_number_direction(db, rng):
        for k in ("3", "5"):
            yield {**slots, "k": k}


def each_aggregate(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_number(db, rng):
        for agg in AGGREGATES:
            yield {**slots, **agg}


def each_category(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        for c in t.of_kind(Kind.CATEGORY):
            yield {**entity(t), **col(c, "c")}


def each_category_direction(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_category(db, rng):
        for direction in (HIGHEST, LOWEST):
            yield {**slots, **direction}


def each_category_number(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        for c in t.of_kind(Kind.CATEGORY):
            for n in t.of_kind(Kind.NUMBER):
                yield {**entity(t), **col(c, "c"), **col(n, "n")}


def _category_values(db: Db, t: Table, c: Column) -> list[str]:
    return sorted(set(db.values(t, c)))


def each_category_value(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        for c in t.of_kind(Kind.CATEGORY):
            for v in _category_values(db, t, c):
                yield {**entity(t), **col(c, "c"), "v": v}


def each_category_value_pair(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        for c in t.of_kind(Kind.CATEGORY):
            values = _category_values(db, t, c)
            for v1 in values:
                for v2 in values:
                    if v1 < v2:
                        yield {**entity(t), **col(c, "c"), "v1": v1, "v2": v2}


def each_category_value_aggregate(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_category_value(db, rng):
        t = table_of(db.domain, slots["t"])
        for n in t.of_kind(Kind.NUMBER):
            for agg in AGGREGATES:
                yield {**slots, **col(n, "n"), **agg}


def each_category_value_direction(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_category_value(db, rng):
        t = table_of(db.domain, slots["t"])
        for n in t.of_kind(Kind.NUMBER):
            for direction in (HIGHEST, LOWEST):
                yield {**slots, **col(n, "n"), **direction}


def _threshold_slots(db: Db, t: Table, rng: random.Random) -> Iterator[Slots]:
    for n in t.of_kind(Kind.NUMBER):
        for x in thresholds(db.values(t, n), rng):
            for comparison in (GREATER, LESS):
                yield {**col(n, "n"), "x": x, **comparison}


def each_threshold(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        for slots in _threshold_slots(db, t, rng):
            yield {**entity(t), **slots}


def each_category_value_threshold(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        numeric = list(_threshold_slots(db, t, rng))
        for c in t.of_kind(Kind.CATEGORY):
            for v in _category_values(db, t, c):
                for slots in sample(numeric, 4, rng):
                    yield {**entity(t), **col(c, "c"), "v": v, **slots}


def each_category_two_thresholds(db: Db, rng: random.Random) -> Iterator[Slots]:
    """A categorical column and a numeric one with a high and a low bar (for INTERSECT)."""
    for t in db.entities:
        for c in t.of_kind(Kind.CATEGORY):
            for n in t.of_kind(Kind.NUMBER):
                ordered = sorted(db.values(t, n))
                spread = ordered[-1] - ordered[0]
                for _ in range(3):
                    high = nice(ordered[int(rng.uniform(0.55, 0.9) * len(ordered))], spread)
                    low = nice(ordered[int(rng.uniform(0.1, 0.45) * len(ordered))], spread)
                    yield {**entity(t), **col(c, "c"), **col(n, "n"), "x1": fmt(high), "x2": fmt(low)}


def each_range(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        for n in t.of_kind(Kind.NUMBER):
            ordered = sorted(db.values(t, n))
            spread = ordered[-1] - ordered[0]
            for _ in range(3):
                i, j = sorted(rng.sample(range(len(ordered)), 2))
                low, high = nice(ordered[i], spread), nice(ordered[j], spread)
                if low < high:
                    yield {**entity(t), **col(n, "n"), "lo": fmt(low), "hi": fmt(high)}


def each_date_year(db: Db, rng: random.Random) -> Iterator[Slots]:
    # ISO dates compare as text, so `d >= "2010"` means "in 2010 or later" and `d < "2010"` "before 2010".
    for t in db.entities:
        for d in t.of_kind(Kind.DATE):
            years = sorted(int(value[:4]) for value in db.values(t, d))
            for _ in range(2):
                y = str(years[int(rng.uniform(0.2, 0.8) * len(years))])
                yield {**entity(t), **col(d, "d"), "y": y, "op": ">=", "when": f"in {y} or later"}
                yield {**entity(t), **col(d, "d"), "y": y, "op": "<", "when": f"before {y}"}


def each_attribute_of_name(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        names = db.values(t, t.name_column)
        for a in t.of_kind(Kind.NUMBER) + t.of_kind(Kind.CATEGORY) + t.of_kind(Kind.DATE):
            for x in sample(names, 4, rng):
                yield {**entity(t), **col(a, "a"), "X": x}


def each_attribute(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        for a in t.of_kind(Kind.NUMBER) + t.of_kind(Kind.CATEGORY) + t.of_kind(Kind.DATE):
            yield {**entity(t), **col(a, "a")}


def _at_least_bars(counts: list[int]) -> list[str]:
    """Values k for "at least k": met by some groups but not all, and at least 2."""
    return [str(k) for k in sorted(set(counts)) if k >= 2 and k > min(counts)]


def each_category_at_least(db: Db, rng: random.Random) -> Iterator[Slots]:
    for t in db.entities:
        for c in t.of_kind(Kind.CATEGORY):
            counts = list(Counter(db.values(t, c)).values())
            for k in sample(_at_least_bars(counts), 3, rng):
                yield {**entity(t), **col(c, "c"), "k": k}


def each_name_word(db: Db, rng: random.Random) -> Iterator[Slots]:
    """Words shared by a few names, for LIKE "%word%"."""
    for t in db.entities:
        names = db.values(t, t.name_column)
        words = sorted({w for name in names for w in name.split() if w.isalpha() and len(w) >= 4})
        for w in words:
            hits = sum(w.lower() in name.lower() for name in names)
            if 2 <= hits <= len(names) // 2:
                yield {**entity(t), "w": w}


def each_relation(db: Db, rng: random.Random) -> Iterator[Slots]:
    for r in db.relations:
        yield {
            **entity(r.child, "child"),
            **entity(r.parent, "parent"),
            "fk": r.fk.name,
            "pk": r.pk,
            "phrase": r.fk.phrase,
        }


def _relation(db: Db, slots: Slots) -> Relation:
    return next(r for r in db.relations if r.child.name == slots["child"] and r.fk.name == slots["fk"])


def _children_per_parent(db: Db, r: Relation) -> Counter:
    """Parent name -> number of child rows pointing at it."""
    name_of = {row[r.pk]: row[r.parent.name_column.name] for row in db.rows[r.parent.name]}
    return Counter(name_of[key] for key in db.values(r.child, r.fk))


def each_relation_parent(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_relation(db, rng):
        parents = sorted(_children_per_parent(db, _relation(db, slots)))
        for x in sample(parents, 8, rng):
            yield {**slots, "X": x}


def each_relation_parent_child_number(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_relation(db, rng):
        r = _relation(db, slots)
        parents = sorted(name for name, count in _children_per_parent(db, r).items() if count >= 2)
        for n in r.child.of_kind(Kind.NUMBER):
            for x in sample(parents, 4, rng):
                for direction in (HIGHEST, LOWEST):
                    yield {**slots, **col(n, "n"), "X": x, **direction}


def each_relation_parent_category_value(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_relation(db, rng):
        parent = _relation(db, slots).parent
        for c in parent.of_kind(Kind.CATEGORY):
            for v in _category_values(db, parent, c):
                yield {**slots, **col(c, "c"), "v": v}


def each_relation_child_category_value(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_relation(db, rng):
        child = _relation(db, slots).child
        for c in child.of_kind(Kind.CATEGORY):
            for v in _category_values(db, child, c):
                yield {**slots, **col(c, "c"), "v": v}


def each_relation_child_category_pair(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_relation(db, rng):
        child = _relation(db, slots).child
        for c in child.of_kind(Kind.CATEGORY):
            values = _category_values(db, child, c)
            for v1 in values:
                for v2 in values:
                    if v1 < v2:
                        yield {**slots, **col(c, "c"), "v1": v1, "v2": v2}


def each_relation_child_name(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_relation(db, rng):
        child = _relation(db, slots).child
        for x in sample(db.values(child, child.name_column), 8, rng):
            yield {**slots, "X": x}


def each_relation_child_number(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_relation(db, rng):
        for n in _relation(db, slots).child.of_kind(Kind.NUMBER):
            yield {**slots, **col(n, "n")}


def each_relation_child_threshold(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_relation(db, rng):
        for numeric in _threshold_slots(db, _relation(db, slots).child, rng):
            yield {**slots, **numeric}


def each_relation_at_least(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_relation(db, rng):
        counts = list(_children_per_parent(db, _relation(db, slots)).values())
        for k in sample(_at_least_bars(counts), 3, rng):
            yield {**slots, "k": k}


def each_link(db: Db, rng: random.Random) -> Iterator[Slots]:
    for link in db.links:
        yield {
            **entity(link.a, "a"),
            **entity(link.b, "b"),
            "link": link.table.name,
            "a_fk": link.a_fk.name,
            "b_fk": link.b_fk.name,
            "verb": link.a_fk.phrase,  # "<b items> <verb> <a name>"
            "verb_sg": singular_verb(link.a_fk.phrase),
        }


def each_link_a_name(db: Db, rng: random.Random) -> Iterator[Slots]:
    for slots in each_link(db, rng):
        a = table_of(db.domain, slots["a"])
        linked = set(db.values(table_of(db.domain, slots["link"]), slots["a_fk"]))
        names = sorted(row[a.name_column.name] for row in db.rows[a.name] if row[slots["a_key"]] in linked)
        for x in sample(names, 8, rng):
            yield {**slots, "X": x}


# --- the templates ---------------------------------------------------------------------------

JOIN = "{child} AS T1 JOIN {parent} AS T2 ON T1.{fk} = T2.{pk}"

TEMPLATES: tuple[Template, ...] = (
    # easy ------------------------------------------------------------------------------------
    Template("count_rows", "easy", "SELECT count(*) FROM {t}", (
        "How many {plural} are there?",
        "Count the number of {plural}.",
        "What is the total number of {plural}?",
        "Return the number of {plural}.",
    ), each_entity),
    Template("list_names", "easy", "SELECT {name} FROM {t}", (
        "List the {names} of all {plural}.",
        "What are the {names} of the {plural}?",
        "Give the {names} of all {plural}.",
        "Return the {names} of every {singular}.",
    ), each_entity),
    Template("count_where_category", "easy", 'SELECT count(*) FROM {t} WHERE {c} = "{v}"', (
        "How many {plural} have {cword} {v}?",
        "Count the number of {plural} whose {cword} is {v}.",
        "What is the number of {plural} with {cword} {v}?",
        "How many {plural} are there whose {cword} is {v}?",
    ), each_category_value),
    Template("names_where_category", "easy", 'SELECT {name} FROM {t} WHERE {c} = "{v}"', (
        "What are the {names} of {plural} whose {cword} is {v}?",
        "List the {names} of all {plural} with {cword} {v}.",
        "Find the {names} of {plural} that have {cword} {v}.",
        "Show the {names} of the {plural} whose {cword} is {v}.",
    ), each_category_value),
    Template("aggregate", "easy", "SELECT {agg}({n}) FROM {t}", (
        "What is the {aggword} {nword} of all {plural}?",
        "Find the {aggword} {nword} of {plural}.",
        "Return the {aggword} {nword} across all {plural}.",
        "Compute the {aggword} {nword} of the {plural}.",
    ), each_aggregate),
    Template("distinct_category", "easy", "SELECT DISTINCT {c} FROM {t}", (
        "What are the distinct {cwords} of {plural}?",
        "List all the different {cwords} of {plural}.",
        "Show the different {cwords} that {plural} have.",
        "Which distinct {cwords} do the {plural} have?",
    ), each_category),
    Template("count_distinct_category", "easy", "SELECT count(DISTINCT {c}) FROM {t}", (
        "How many different {cwords} are there among {plural}?",
        "Count the number of distinct {cwords} of {plural}.",
        "How many distinct {cwords} do the {plural} have?",
    ), each_category),
    Template("names_compare", "easy", "SELECT {name} FROM {t} WHERE {n} {op} {x}", (
        "What are the {names} of {plural} whose {nword} is {cmp} {x}?",
        "List the {names} of {plural} with {a_nword} {cmp2} {x}.",
        "Find the {names} of {plural} that have {a_nword} {cmp} {x}.",
        "Show the {names} of all {plural} with {nword} {cmp2} {x}.",
    ), each_threshold),
    Template("count_compare", "easy", "SELECT count(*) FROM {t} WHERE {n} {op} {x}", (
        "How many {plural} have {a_nword} {cmp} {x}?",
        "Count the {plural} whose {nword} is {cmp2} {x}.",
        "What is the number of {plural} with {a_nword} {cmp} {x}?",
    ), each_threshold),
    Template("names_by_date", "easy", 'SELECT {name} FROM {t} WHERE {d} {op} "{y}"', (
        "What are the {names} of {plural} whose {dword} is {when}?",
        "List the {names} of {plural} with {a_dword} {when}.",
        "Find the {names} of all {plural} whose {dword} is {when}.",
        "Show the {names} of {plural} that have {a_dword} {when}.",
    ), each_date_year),
    Template("names_between", "easy", "SELECT {name} FROM {t} WHERE {n} BETWEEN {lo} AND {hi}", (
        "What are the {names} of {plural} whose {nword} is between {lo} and {hi}?",
        "List the {names} of {plural} with {a_nword} between {lo} and {hi}.",
        "Show the {names} of {plural} with {a_nword} in the range {lo} to {hi}.",
    ), each_range),
    Template("aggregate_where_category", "easy", 'SELECT {agg}({n}) FROM {t} WHERE {c} = "{v}"', (
        "What is the {aggword} {nword} of {plural} whose {cword} is {v}?",
        "Find the {aggword} {nword} of all {plural} with {cword} {v}.",
        "Return the {aggword} {nword} among {plural} that have {cword} {v}.",
    ), each_category_value_aggregate),
    Template("attribute_of_name", "easy", 'SELECT {a} FROM {t} WHERE {name} = "{X}"', (
        "What is the {aword} of the {singular} with {name_word} {X}?",
        "Find the {aword} of the {singular} {X}.",
        "Give the {aword} of the {singular} whose {name_word} is {X}.",
        "Return the {aword} of {singular} {X}.",
    ), each_attribute_of_name),
    Template("category_at_least", "easy", "SELECT {c} FROM {t} GROUP BY {c} HAVING count(*) >= {k}", (
        "Which {cwords} have at least {k} {plural}?",
        "What are the {cwords} with {k} or more {plural}?",
        "List the {cwords} that at least {k} {plural} have.",
        "Find the {cwords} shared by at least {k} {plural}.",
    ), each_category_at_least),
    # medium ----------------------------------------------------------------------------------
    Template("superlative", "medium", "SELECT {name} FROM {t} ORDER BY {n} {dir} LIMIT 1", (
        "What is the {name_word} of the {singular} with the {most} {nword}?",
        "Find the {name_word} of the {singular} that has the {most} {nword}.",
        "Which {singular} has the {most} {nword}?",
        "Return the {name_word} of the {singular} whose {nword} is the {most}.",
    ), each_number_direction),
    Template("top_k", "medium", "SELECT {name} FROM {t} ORDER BY {n} {dir} LIMIT {k}", (
        "What are the {names} of the {k} {plural} with the {most} {nword}?",
        "Show the {names} of the {k} {plural} that have the {most} {nword}.",
        "Find the {k} {plural} with the {most} {nword} and return their {names}.",
        "List the {names} of the {k} {plural} whose {nword} is the {most}.",
    ), each_top_k),
    Template("name_and_attribute", "medium", "SELECT {name}, {a} FROM {t}", (
        "List the {name_word} and {aword} of every {singular}.",
        "What are the {names} and {awords} of all {plural}?",
        "Show each {singular}'s {name_word} together with its {aword}.",
    ), each_attribute),
    Template("count_per_category", "medium", "SELECT {c}, count(*) FROM {t} GROUP BY {c}", (
        "How many {plural} are there for each {cword}?",
        "Show each {cword} and the number of {plural} with it.",
        "For each {cword}, count the number of {plural}.",
        "List every {cword} along with the number of {plural} that have it.",
    ), each_category),
    Template("max_and_min", "medium", "SELECT max({n}), min({n}) FROM {t}", (
        "What are the maximum and minimum {nword} of all {plural}?",
        "Find the highest and lowest {nword} among {plural}.",
        "Return the largest and smallest {nword} of the {plural}.",
    ), each_number),
    Template("average_per_category", "medium", "SELECT {c}, avg({n}) FROM {t} GROUP BY {c}", (
        "What is the average {nword} of {plural} for each {cword}?",
        "Show each {cword} and the average {nword} of the {plural} with that {cword}.",
        "For each {cword}, find the average {nword} of {plural}.",
    ), each_category_number),
    Template("name_like", "medium", 'SELECT {name} FROM {t} WHERE {name} LIKE "%{w}%"', (
        "Which {plural} have {a_name_word} containing the word {w}?",
        "List the {names} of {plural} that contain the word {w}.",
        "Find all {plural} whose {name_word} includes {w}.",
        "What are the {names} of {plural} with {w} in their {name_word}?",
    ), each_name_word),
    Template("category_and_compare", "medium", 'SELECT {name} FROM {t} WHERE {c} = "{v}" AND {n} {op} {x}', (
        "What are the {names} of {plural} whose {cword} is {v} and whose {nword} is {cmp} {x}?",
        "List the {names} of {plural} with {cword} {v} and {a_nword} {cmp2} {x}.",
        "Show the {names} of all {plural} that have {cword} {v} and {a_nword} {cmp} {x}.",
    ), each_category_value_threshold),
    Template("category_or", "medium", 'SELECT {name} FROM {t} WHERE {c} = "{v1}" OR {c} = "{v2}"', (
        "What are the {names} of {plural} whose {cword} is {v1} or {v2}?",
        "List the {names} of {plural} with {cword} either {v1} or {v2}.",
        "Show the {names} of {plural} that have {cword} {v1} or {v2}.",
    ), each_category_value_pair),
    Template("children_of_parent", "medium", "SELECT T1.{child_name} FROM " + JOIN + ' WHERE T2.{parent_name} = "{X}"', (
        "What are the {child_names} of the {child_plural} {phrase} {X}?",
        "List the {child_names} of all {child_plural} {phrase} {X}.",
        "Find the {child_names} of {child_plural} that are {phrase} {X}.",
        "Show the {child_names} of {child_plural} {phrase} the {parent_singular} {X}.",
    ), each_relation_parent),
    Template("count_children_of_parent", "medium", "SELECT count(*) FROM " + JOIN + ' WHERE T2.{parent_name} = "{X}"', (
        "How many {child_plural} are {phrase} {X}?",
        "Count the number of {child_plural} {phrase} {X}.",
        "What is the number of {child_plural} {phrase} the {parent_singular} {X}?",
    ), each_relation_parent),
    Template("children_by_parent_category", "medium", "SELECT T1.{child_name} FROM " + JOIN + ' WHERE T2.{c} = "{v}"', (
        "What are the {child_names} of {child_plural} {phrase} {a_parent_singular} whose {cword} is {v}?",
        "List the {child_names} of {child_plural} {phrase} {parent_plural} with {cword} {v}.",
        "Find the {child_names} of all {child_plural} whose {parent_singular} has {cword} {v}.",
    ), each_relation_parent_category_value),
    Template("child_parent_pairs", "medium", "SELECT T1.{child_name}, T2.{parent_name} FROM " + JOIN, (
        "List the {child_name_word} of each {child_singular} together with the {parent_name_word} of the {parent_singular} it is {phrase}.",
        "Show the {child_names} of all {child_plural} and the {parent_names} of their {parent_plural}.",
        "For every {child_singular}, give its {child_name_word} and the {parent_name_word} of its {parent_singular}.",
    ), each_relation),
    Template("parent_of_child", "medium", "SELECT T2.{parent_name} FROM " + JOIN + ' WHERE T1.{child_name} = "{X}"', (
        "Which {parent_singular} is the {child_singular} {X} {phrase}?",
        "What is the {parent_name_word} of the {parent_singular} that the {child_singular} {X} is {phrase}?",
        "Find the {parent_name_word} of the {parent_singular} of the {child_singular} {X}.",
    ), each_relation_child_name),
    Template("count_children_per_parent", "medium", "SELECT T2.{parent_name}, count(*) FROM " + JOIN + " GROUP BY T1.{fk}", (
        "For each {parent_singular}, show its {parent_name_word} and the number of {child_plural} {phrase} it.",
        "List the {parent_name_word} of every {parent_singular} and how many {child_plural} are {phrase} it.",
        "How many {child_plural} does each {parent_singular} have? Show the {parent_name_word} and the count.",
    ), each_relation),
    Template("parents_with_at_least", "medium",
        "SELECT T2.{parent_name} FROM " + JOIN + " GROUP BY T1.{fk} HAVING count(*) >= {k}", (
        "Which {parent_plural} have at least {k} {child_plural} {phrase} them?",
        "Find the {parent_names} of {parent_plural} with {k} or more {child_plural}.",
        "List the {parent_names} of the {parent_plural} that have at least {k} {child_plural}.",
    ), each_relation_at_least),
    Template("average_per_parent", "medium", "SELECT T2.{parent_name}, avg(T1.{n}) FROM " + JOIN + " GROUP BY T1.{fk}", (
        "Show the {parent_name_word} of each {parent_singular} and the average {nword} of the {child_plural} {phrase} it.",
        "What is the average {nword} of {child_plural} for each {parent_singular}? List the {parent_name_word} and the average.",
        "For every {parent_singular}, give its {parent_name_word} and the average {nword} of its {child_plural}.",
    ), each_relation_child_number),
    # hard ------------------------------------------------------------------------------------
    Template("names_vs_average", "hard", "SELECT {name} FROM {t} WHERE {n} {op} (SELECT avg({n}) FROM {t})", (
        "What are the {names} of {plural} whose {nword} is {cmp2} the average?",
        "List the {names} of {plural} with {a_nword} {higher} than the average {nword} of all {plural}.",
        "Find the {names} of {plural} whose {nword} is {cmp} the average {nword}.",
    ), each_number_comparison),
    Template("count_vs_average", "hard", "SELECT count(*) FROM {t} WHERE {n} {op} (SELECT avg({n}) FROM {t})", (
        "How many {plural} have {a_nword} {cmp2} the average?",
        "Count the {plural} whose {nword} is {higher} than the average {nword}.",
        "What is the number of {plural} with {a_nword} {cmp} the average?",
    ), each_number_comparison),
    Template("parents_without_children", "hard",
        "SELECT {parent_name} FROM {parent} WHERE {pk} NOT IN (SELECT {fk} FROM {child})", (
        "Which {parent_plural} have no {child_plural} {phrase} them?",
        "List the {parent_names} of {parent_plural} that do not have any {child_plural}.",
        "Find the {parent_names} of all {parent_plural} without any {child_plural}.",
    ), each_relation),
    Template("unlinked", "hard", "SELECT {b_name} FROM {b} WHERE {b_key} NOT IN (SELECT {b_fk} FROM {link})", (
        "Which {b_plural} {verb} no {a_singular}?",
        "List the {b_names} of {b_plural} that {verb} no {a_singular} at all.",
        "Find the {b_names} of all {b_plural} that {verb} no {a_singular}.",
    ), each_link),
    Template("category_intersect", "hard",
        "SELECT {c} FROM {t} WHERE {n} > {x1} INTERSECT SELECT {c} FROM {t} WHERE {n} < {x2}", (
        "Which {cwords} have both {plural} with {a_nword} above {x1} and {plural} with {a_nword} below {x2}?",
        "Find the {cwords} that include {plural} whose {nword} is greater than {x1} as well as {plural} whose {nword} is less than {x2}.",
        "List the {cwords} shared by {plural} with {nword} more than {x1} and {plural} with {nword} less than {x2}.",
    ), each_category_two_thresholds),
    Template("names_union", "hard",
        'SELECT {name} FROM {t} WHERE {c} = "{v}" UNION SELECT {name} FROM {t} WHERE {n} {op} {x}', (
        "What are the {names} of {plural} that either have {cword} {v} or {a_nword} {cmp} {x}?",
        "List the {names} of {plural} whose {cword} is {v} or whose {nword} is {cmp2} {x}.",
        "Find the {names} of all {plural} with {cword} {v}, together with those with {a_nword} {cmp} {x}.",
    ), each_category_value_threshold),
    Template("parents_except", "hard",
        "SELECT {parent_name} FROM {parent} EXCEPT SELECT T2.{parent_name} FROM " + JOIN + ' WHERE T1.{c} = "{v}"', (
        "Which {parent_plural} have no {child_plural} with {cword} {v}?",
        "List the {parent_names} of {parent_plural} that do not have any {child_singular} whose {cword} is {v}.",
        "Find the {parent_names} of all {parent_plural} except those with {a_child_singular} whose {cword} is {v}.",
    ), each_relation_child_category_value),
    Template("superlative_in_category", "hard",
        'SELECT {name} FROM {t} WHERE {c} = "{v}" ORDER BY {n} {dir} LIMIT 1', (
        "What is the {name_word} of the {singular} with the {most} {nword} among those whose {cword} is {v}?",
        "Among {plural} with {cword} {v}, find the {name_word} of the one with the {most} {nword}.",
        "Which {singular} whose {cword} is {v} has the {most} {nword}?",
    ), each_category_value_direction),
    Template("most_common_category", "hard", "SELECT {c} FROM {t} GROUP BY {c} ORDER BY count(*) {dir} LIMIT 1", (
        "Which {cword} is the {most_common} common among {plural}?",
        "What is the {most_common} frequent {cword} of {plural}?",
        "Find the {cword} that the {largest} number of {plural} have.",
    ), each_category_direction),
    Template("linked_names", "hard",
        "SELECT T3.{b_name} FROM {a} AS T1 JOIN {link} AS T2 ON T1.{a_key} = T2.{a_fk} "
        'JOIN {b} AS T3 ON T2.{b_fk} = T3.{b_key} WHERE T1.{a_name} = "{X}"', (
        "Which {b_plural} {verb} {X}?",
        "List the {b_names} of {b_plural} that {verb} {X}.",
        "Find the {b_names} of all {b_plural} that {verb} the {a_singular} {X}.",
    ), each_link_a_name),
    Template("parents_in_subquery", "hard",
        "SELECT {parent_name} FROM {parent} WHERE {pk} IN (SELECT {fk} FROM {child} WHERE {n} {op} {x})", (
        "What are the {parent_names} of {parent_plural} that have at least one {child_singular} with {a_nword} {cmp} {x}?",
        "List the {parent_names} of {parent_plural} with some {child_singular} whose {nword} is {cmp2} {x}.",
        "Find the {parent_names} of {parent_plural} having any {child_singular} with {a_nword} {cmp} {x}.",
    ), each_relation_child_threshold),
    # extra -----------------------------------------------------------------------------------
    Template("parent_with_most_children", "extra",
        "SELECT T2.{parent_name} FROM " + JOIN + " GROUP BY T1.{fk} ORDER BY count(*) DESC LIMIT 1", (
        "Which {parent_singular} has the most {child_plural}?",
        "What is the {parent_name_word} of the {parent_singular} with the largest number of {child_plural}?",
        "Return the {parent_name_word} of the {parent_singular} that has the most {child_plural} {phrase} it.",
    ), each_relation),
    Template("parents_intersect", "extra",
        "SELECT T2.{parent_name} FROM " + JOIN + ' WHERE T1.{c} = "{v1}" INTERSECT '
        "SELECT T2.{parent_name} FROM " + JOIN + ' WHERE T1.{c} = "{v2}"', (
        "Which {parent_plural} have both {child_plural} with {cword} {v1} and {child_plural} with {cword} {v2}?",
        "Find the {parent_names} of {parent_plural} that have {child_plural} whose {cword} is {v1} as well as {child_plural} whose {cword} is {v2}.",
        "List the {parent_names} of {parent_plural} with at least one {child_singular} of {cword} {v1} and at least one of {cword} {v2}.",
    ), each_relation_child_category_pair),
    Template("name_and_value_vs_average", "extra",
        "SELECT {name}, {n} FROM {t} WHERE {n} {op} (SELECT avg({n}) FROM {t})", (
        "List the {names} and {nwords} of {plural} whose {nword} is {cmp2} the average.",
        "What are the {name_word} and {nword} of each {singular} with {a_nword} {higher} than average?",
        "Show the {name_word} and {nword} of all {plural} whose {nword} is {cmp} the average {nword}.",
    ), each_number_comparison),
    Template("superlative_child_of_parent", "extra",
        "SELECT T1.{child_name} FROM " + JOIN + ' WHERE T2.{parent_name} = "{X}" ORDER BY T1.{n} {dir} LIMIT 1', (
        "Among the {child_plural} {phrase} {X}, which one has the {most} {nword}?",
        "What is the {child_name_word} of the {child_singular} {phrase} {X} with the {most} {nword}?",
        "Find the {child_name_word} of the {child_singular} with the {most} {nword} among those {phrase} {X}.",
    ), each_relation_parent_child_number),
    Template("most_linked", "extra",
        "SELECT T2.{b_name} FROM {link} AS T1 JOIN {b} AS T2 ON T1.{b_fk} = T2.{b_key} "
        "GROUP BY T1.{b_fk} ORDER BY count(*) DESC LIMIT 1", (
        "Which {b_singular} {verb_sg} the most {a_plural}?",
        "Find the {b_name_word} of the {b_singular} that {verb_sg} the largest number of {a_plural}.",
        "What is the {b_name_word} of the {b_singular} that {verb_sg} the most {a_plural}?",
    ), each_link),
    Template("parents_in_category_without_children", "extra",
        'SELECT {parent_name} FROM {parent} WHERE {c} = "{v}" AND {pk} NOT IN (SELECT {fk} FROM {child})', (
        "Which {parent_plural} with {cword} {v} have no {child_plural}?",
        "List the {parent_names} of {parent_plural} whose {cword} is {v} and that have no {child_plural} {phrase} them.",
        "Find the {parent_names} of all {parent_plural} with {cword} {v} that do not have any {child_plural}.",
    ), each_relation_parent_category_value),
)  # fmt: skip
