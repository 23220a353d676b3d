"""Spider-layout datasets → prepared instruction records.

A Spider-layout folder holds ``tables.json``, question files (``train_spider.json``,
``dev.json``, or the sample's ``train.json``) and ``database/<db_id>/<db_id>.sqlite``.
Both the embedded sample and real Spider go through this module, the same way.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlora.errors import SqloraError
from sqlora.prompt import Record
from sqlora.schema import Column, DatabaseSchema, describe_natural


@dataclass(frozen=True)
class Example:
    db_id: str
    question: str
    query: str


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SqloraError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise SqloraError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None


def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise SqloraError(f"{where}: {message}")


def _parse_schema(entry: dict, where: str) -> DatabaseSchema:
    _require(isinstance(entry, dict), where, "expected an object")
    for key in ("db_id", "table_names_original", "column_names_original", "column_types", "primary_keys", "foreign_keys"):
        _require(key in entry, f"{where}", f"missing key '{key}'")
    db_id = entry["db_id"]
    tables = entry["table_names_original"]
    raw_columns = entry["column_names_original"]
    types = entry["column_types"]
    _require(isinstance(tables, list) and all(isinstance(t, str) for t in tables), f"{where}.table_names_original", "expected a list of names")
    _require(
        isinstance(raw_columns, list) and all(isinstance(c, list) and len(c) == 2 for c in raw_columns),
        f"{where}.column_names_original",
        "expected a list of [table_index, name] pairs",
    )
    _require(isinstance(types, list) and len(types) == len(raw_columns), f"{where}.column_types", f"expected {len(raw_columns)} types, one per column")
    columns = []
    for i, (table, name) in enumerate(raw_columns[1:], 1):  # entry 0 is Spider's [-1, "*"]
        _require(isinstance(table, int) and 0 <= table < len(tables), f"{where}.column_names_original[{i}]", f"table index {table!r} out of range")
        columns.append(Column(table=table, name=name, type=types[i]))

    def column_index(value, key: str) -> int:
        _require(isinstance(value, int) and 1 <= value <= len(columns), f"{where}.{key}", f"column index {value!r} out of range 1..{len(columns)}")
        return value

    primary_keys = []
    for k, key in enumerate(entry["primary_keys"]):
        group = key if isinstance(key, list) else [key]  # newer Spider nests composite keys
        primary_keys.append(tuple(column_index(c, f"primary_keys[{k}]") for c in group))
    foreign_keys = []
    for k, pair in enumerate(entry["foreign_keys"]):
        _require(isinstance(pair, list) and len(pair) == 2, f"{where}.foreign_keys[{k}]", "expected [column, referenced_column]")
        foreign_keys.append((column_index(pair[0], f"foreign_keys[{k}]"), column_index(pair[1], f"foreign_keys[{k}]")))
    return DatabaseSchema(db_id=db_id, tables=tables, columns=columns, primary_keys=primary_keys, foreign_keys=foreign_keys)


def load_schemas(tables_json: str | Path) -> dict[str, DatabaseSchema]:
    path = Path(tables_json)
    entries = _read_json(path)
    _require(isinstance(entries, list), str(path), "expected a list of database schemas")
    schemas = {}
    for i, entry in enumerate(entries):
        schema = _parse_schema(entry, f"{path}[{i}]")
        schemas[schema.db_id] = schema
    return schemas


def load_examples(path: str | Path, schemas: dict[str, DatabaseSchema]) -> list[Example]:
    """Questions of a Spider-layout file, each checked to have its fields and a known db_id."""
    path = Path(path)
    entries = _read_json(path)
    _require(isinstance(entries, list), str(path), "expected a list of examples")
    examples = []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]"
        _require(isinstance(entry, dict), where, "expected an object")
        for key in ("db_id", "question", "query"):
            _require(isinstance(entry.get(key), str) and entry[key].strip(), where, f"missing or empty '{key}'")
        _require(entry["db_id"] in schemas, f"{where}.db_id", f"{entry['db_id']!r} is not in tables.json")
        examples.append(Example(db_id=entry["db_id"], question=entry["question"].strip(), query=entry["query"].strip()))
    return examples


def database_path(source: str | Path, db_id: str) -> Path:
    return Path(source) / "database" / db_id / f"{db_id}.sqlite"


def subsample(examples: list, limit: int, seed: int, shuffle: bool) -> list:
    """``limit`` examples (0 = all): a seeded random subset in original order, or the first ones."""
    if not limit or limit >= len(examples):
        return list(examples)
    if not shuffle:
        return list(examples[:limit])
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def to_records(examples: list[Example], schemas: dict[str, DatabaseSchema], schema_format: str) -> list[Record]:
    if schema_format != "natural":
        raise SqloraError(f"prompt.schema_format {schema_format!r} is not supported")
    described = {db_id: describe_natural(s) for db_id, s in schemas.items()}
    return [Record(db_id=e.db_id, instruction=described[e.db_id], input=e.question, output=e.query) for e in examples]


def record_dicts(records: list[Record]) -> list[dict]:
    return [asdict(r) for r in records]


def load_records(path: str | Path) -> list[Record]:
    from sqlora.io import read_jsonl

    records = []
    for i, raw in enumerate(read_jsonl(path), 1):
        try:
            records.append(Record(**raw))
        except TypeError:
            raise SqloraError(f"{path}:{i}: expected keys db_id, instruction, input, output; got {sorted(raw)}") from None
    return records
