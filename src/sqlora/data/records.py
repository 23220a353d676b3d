"""Examples to instruction records (the schema as the prompt shows it, the question, the gold SQL), and the
records files the prepare stage writes: ``{instruction, input, output, ...}`` per JSONL line."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlora.data.layouts import Example, Split
from sqlora.data.prompt import render_prompt
from sqlora.data.schema import DatabaseSchema, describe
from sqlora.errors import SqloraError


@dataclass(frozen=True)
class Record:
    """One prepared example: the schema told in words, the question, the gold SQL."""

    db_id: str
    instruction: str
    input: str
    output: str
    # Kept for evaluation, where the dataset has them:
    difficulty: str | None = None  # BIRD
    interaction_id: str | None = None  # CoSQL / SParC
    turn: int | None = None  # CoSQL / SParC

    @property
    def prompt(self) -> str:
        return render_prompt(self.instruction, self.input)


def render_input(example: Example, history_sql: bool = False) -> str:
    """The question as the model sees it: BIRD's evidence as a hint, earlier turns of an interaction."""
    text = example.question
    if example.evidence:
        text += f"\nHint: {example.evidence}"
    if example.history:
        lines = ["Previous questions:"]
        for n, (question, query) in enumerate(example.history, 1):
            lines.append(f"{n}. {question}" + (f"\n   SQL: {query}" if history_sql else ""))
        text = "\n".join(lines) + f"\nCurrent question: {text}"
    return text


def to_record(example: Example, instruction: str, history_sql: bool = False) -> Record:
    return Record(
        db_id=example.db_id,
        instruction=instruction,
        input=render_input(example, history_sql),
        output=example.query,
        difficulty=example.difficulty or None,
        interaction_id=example.interaction_id or None,
        turn=example.turn if example.interaction_id else None,
    )


@dataclass
class SchemaRenderer:
    """A question's instruction: its database's schema (each database rendered once, since reading
    sample rows is I/O) and, with ``values``, the database values the question mentions
    (:mod:`sqlora.data.values`; each database's index read once, and cached on disk)."""

    split: Split
    schema_format: str
    sample_rows: int = 3
    values: bool = False

    def __post_init__(self):
        self._cache: dict[str, str] = {}
        self._indexes: dict = {}

    def __call__(self, schema: DatabaseSchema, question: str = "") -> str:
        whole = schema is self.split.schemas.get(schema.db_id)
        if whole and schema.db_id in self._cache:
            text = self._cache[schema.db_id]
        else:
            text = describe(schema, self.schema_format, self.split.database_path(schema.db_id), self.sample_rows)
            if whole:
                self._cache[schema.db_id] = text
        if not (self.values and question):
            return text
        from sqlora.data.values import describe_hints

        index = self.value_index(schema.db_id)
        if index is None:
            return text
        hints = describe_hints(index.match(question, {t.lower() for t in schema.tables}))
        return text + "\n" + hints if hints else text

    def value_index(self, db_id: str):
        """The database's value index; None where its file is missing (its questions get no value hints,
        as a schema alone can be prompted: listed in ``without_values``)."""
        from sqlora.data.values import ValueIndex

        if db_id not in self._indexes:
            path = self.split.database_path(db_id)
            self._indexes[db_id] = ValueIndex.cached(path) if path.is_file() else None
        return self._indexes[db_id]

    @property
    def without_values(self) -> list[str]:
        """The databases whose questions were prompted without value hints: their file is missing."""
        return sorted(db_id for db_id, index in self._indexes.items() if index is None)


def to_records(
    split: Split, schema_format: str = "natural", sample_rows: int = 3, history_sql: bool = False, values: bool = False
) -> list[Record]:
    render = SchemaRenderer(split, schema_format, sample_rows, values)
    return [to_record(e, render(split.schemas[e.db_id], e.question), history_sql) for e in split.examples]


def record_dicts(records: list[Record]) -> list[dict]:
    """Records as JSON objects; fields a dataset does not have (difficulty, turn ...) are left out."""
    return [{k: v for k, v in asdict(r).items() if v is not None} for r in records]


def load_records(path: str | Path) -> list[Record]:
    from sqlora.io import read_jsonl_lines

    records = []
    for lineno, raw in read_jsonl_lines(path):  # line numbers, blank lines counted
        try:
            records.append(Record(**raw))
        except TypeError:
            raise SqloraError(f"{path}:{lineno}: expected keys db_id, instruction, input, output; got {sorted(raw)}") from None
    return records


META_KEYS = ("dataset", "database_dir", "tables_json")  # what the prepare stage writes to meta.json (and validation_database_dir)


def read_meta(path: str | Path = "data/prepared/meta.json") -> dict:
    """The prepare stage's meta.json, checked: an object with the string values of ``META_KEYS``."""
    from sqlora.io import read_json

    path = Path(path)
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise SqloraError(f"{path}: expected a JSON object, got {type(meta).__name__}; rerun the prepare stage")
    for key in META_KEYS:
        if key not in meta:
            raise SqloraError(f"{path}: missing key '{key}'; rerun the prepare stage")
        if not isinstance(meta[key], str):
            raise SqloraError(f"{path}: '{key}' must be a string, got {meta[key]!r}")
    return meta


def subsample(items: list, limit: int, seed: int, shuffle: bool) -> list:
    """``limit`` items (0 = all): a seeded random subset in original order, or the first ones."""
    if not limit or limit >= len(items):
        return list(items)
    if not shuffle:
        return list(items[:limit])
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]
