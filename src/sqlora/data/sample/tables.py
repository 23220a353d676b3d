"""Schema metadata for the embedded sample dataset, and the value generators that fill it.

Each domain declares its tables once; the same declaration drives the SQLite schema, the
Spider ``tables.json`` entry, the rows, and which question templates apply (through the
column kinds). Keeping it in one place is what keeps the three outputs consistent.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    """What a column is for; question templates select columns by kind."""

    KEY = "key"  # surrogate primary key, numbered 1..n
    FOREIGN = "foreign"  # points at another table's key
    NAME = "name"  # the unique human-readable label of a row ("title", "name")
    NUMBER = "number"  # a quantity to compare, sort and aggregate
    CATEGORY = "category"  # a text attribute with a few repeated values, to filter and group by
    DATE = "date"  # an ISO date stored as text ("2011-04-23")


@dataclass(frozen=True)
class Values:
    """How to draw a whole column at once, so a generator can keep values unique or skewed."""

    sql_type: str  # "int", "real" or "text"
    draw: Callable[[random.Random, int], list]


@dataclass(frozen=True)
class Column:
    name: str  # as in the SQLite schema (Spider's column_names_original)
    words: str  # lowercase natural words (Spider's column_names), also used in questions
    kind: Kind
    values: Values | None = None  # None for keys: the filler assigns those
    references: str | None = None  # "table.column" for a foreign key
    # How rows relate to the referenced row, read as "<items> <phrase> <referenced name>".
    # On a plain foreign key it is a participle ("books written by Ann Lee"); on a link table
    # it is a verb describing the *other* side ("artists that performed at Sunset Waves").
    phrase: str = ""

    @property
    def sql_type(self) -> str:
        return "int" if self.values is None else self.values.sql_type

    @property
    def spider_type(self) -> str:
        if self.kind is Kind.DATE:
            return "time"
        return "number" if self.sql_type in ("int", "real") else "text"


@dataclass(frozen=True)
class Table:
    name: str  # as in the SQLite schema (table_names_original)
    words: str  # natural words (table_names)
    singular: str  # entity noun used in questions
    plural: str
    rows: int
    columns: tuple[Column, ...]
    composite_key: tuple[str, ...] = ()  # link tables without a KEY column

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.composite_key or tuple(c.name for c in self.columns if c.kind is Kind.KEY)

    @property
    def name_column(self) -> Column | None:
        return next((c for c in self.columns if c.kind is Kind.NAME), None)

    def of_kind(self, kind: Kind) -> list[Column]:
        return [c for c in self.columns if c.kind is kind]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


@dataclass(frozen=True)
class Domain:
    db_id: str
    split: str  # "train" or "dev": whole databases go to one split, as in Spider
    tables: tuple[Table, ...]  # referenced tables come before the tables that point at them


# --- column constructors: keep the domain declarations short ------------------------------


def key(name: str, words: str) -> Column:
    return Column(name, words, Kind.KEY)


def ref(name: str, words: str, references: str, phrase: str) -> Column:
    return Column(name, words, Kind.FOREIGN, references=references, phrase=phrase)


def label(name: str, words: str, values: Values) -> Column:
    return Column(name, words, Kind.NAME, values)


def number(name: str, words: str, values: Values) -> Column:
    return Column(name, words, Kind.NUMBER, values)


def category(name: str, words: str, values: Values) -> Column:
    return Column(name, words, Kind.CATEGORY, values)


def date(name: str, words: str, first_year: int, last_year: int) -> Column:
    return Column(name, words, Kind.DATE, dates(first_year, last_year))


# --- value generators ------------------------------------------------------------------------


def skewed_weights(rng: random.Random, n: int) -> list[float]:
    """Zipf-like weights over a shuffled order: counts differ, so "the most common" has one answer."""
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(n)]
    rng.shuffle(weights)
    return weights


def _unique(make: Callable[[random.Random], str], capacity: int) -> Values:
    def draw(rng: random.Random, n: int) -> list:
        if n > capacity // 2:  # rejection sampling stays fast only with plenty of room
            raise ValueError(f"{n} unique values requested from a pool of {capacity}")
        seen: dict[str, None] = {}
        while len(seen) < n:
            seen.setdefault(make(rng), None)
        return list(seen)

    return Values("text", draw)


def compose(*parts: Sequence[str] | str) -> Values:
    """Unique labels made of one pick from each part ("The" + "Silent" + "River")."""
    pools = [[p] if isinstance(p, str) else list(p) for p in parts]
    capacity = 1
    for pool in pools:
        capacity *= len(pool)
    return _unique(lambda rng: " ".join(rng.choice(pool) for pool in pools), capacity)


def people() -> Values:
    return compose(FIRST_NAMES, LAST_NAMES)


def codes(pattern: str) -> Values:
    """Unique codes such as flight numbers: 'L' is a capital letter, 'D' a digit."""
    letters, digits = "ABCDEFGHJKLMNPRSTUVWXZ", "0123456789"
    pools = {"L": letters, "D": digits}
    capacity = 1
    for ch in pattern:
        capacity *= len(pools.get(ch, "x"))
    return _unique(lambda rng: "".join(rng.choice(pools[ch]) if ch in pools else ch for ch in pattern), capacity)


def distinct(options: Sequence[str]) -> Values:
    """Each row gets a different one of the options (department names and the like)."""

    def draw(rng: random.Random, n: int) -> list:
        return rng.sample(list(options), n)

    return Values("text", draw)


def choice(options: Sequence[str], k: int | None = None) -> Values:
    """A categorical column: k of the options (all by default), with skewed frequencies."""

    def draw(rng: random.Random, n: int) -> list:
        pool = rng.sample(list(options), k) if k else list(options)
        return rng.choices(pool, weights=skewed_weights(rng, len(pool)), k=n)

    return Values("text", draw)


def integers(low: int, high: int, step: int = 1) -> Values:
    def draw(rng: random.Random, n: int) -> list:
        return [rng.randrange(low, high + 1, step) for _ in range(n)]

    return Values("int", draw)


def decimals(low: float, high: float, places: int = 2) -> Values:
    def draw(rng: random.Random, n: int) -> list:
        return [round(rng.uniform(low, high), places) for _ in range(n)]

    return Values("real", draw)


def dates(first_year: int, last_year: int) -> Values:
    def draw(rng: random.Random, n: int) -> list:
        out = []
        for _ in range(n):
            # Day 1..28 is valid in every month; no need for a calendar.
            out.append(f"{rng.randint(first_year, last_year):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
        return out

    return Values("text", draw)


# --- word lists ------------------------------------------------------------------------------

FIRST_NAMES = (
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
    "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen",
    "Daniel", "Nancy", "Matthew", "Lisa", "Anthony", "Betty", "Mark", "Sandra", "Paul", "Ashley",
    "Steven", "Emily", "Andrew", "Donna", "Kenneth", "Michelle", "Joshua", "Carol", "Kevin", "Amanda",
    "Brian", "Melissa", "George", "Deborah", "Sofia", "Lucas", "Amelia", "Mateo", "Hana", "Omar",
    "Yuki", "Ines", "Pierre", "Chloe", "Lars", "Ingrid", "Ravi", "Priya", "Chen", "Mei",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Taylor", "Moore", "Jackson", "Lee", "Perez",
    "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young",
    "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams",
    "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Dubois", "Schmidt",
    "Rossi", "Tanaka", "Kowalski", "Novak", "Larsen", "Okafor", "Patel", "Silva", "Fischer", "Moreau",
)  # fmt: skip
CITIES = (
    "Lyon", "Boston", "Denver", "Seattle", "Austin", "Madrid", "Berlin", "Toronto", "Sydney", "Osaka",
    "Dublin", "Lisbon", "Chicago", "Portland", "Milan", "Vienna", "Prague", "Oslo", "Melbourne", "Vancouver",
    "Atlanta", "Hamburg", "Porto", "Kyoto",
)  # fmt: skip
COUNTRIES = (
    "France", "Germany", "Japan", "Brazil", "Canada", "Spain", "Italy", "Australia", "Nigeria", "India",
    "Mexico", "Sweden", "Ireland", "Portugal",
)  # fmt: skip
NATIONALITIES = (
    "French", "German", "Japanese", "Brazilian", "Canadian", "Spanish", "Italian", "Australian", "Nigerian",
    "Indian", "Mexican", "Swedish", "American", "British",
)  # fmt: skip
STREETS = ("Oak", "Maple", "Cedar", "Pine", "Elm", "Willow", "Birch", "Chestnut", "Park", "Lake", "Hill", "Sunset")
