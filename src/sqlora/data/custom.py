"""Your own dataset (``data.dataset: custom``): a folder of SQLite databases and questions about them.

``data.source`` holds the databases, ``<db_id>.sqlite`` or ``database/<db_id>/<db_id>.sqlite``, and the
questions, ``train.jsonl`` / ``dev.jsonl`` (or ``.csv``), each record a ``question``, its ``sql`` and the
``db_id`` it runs on. No tables.json is needed: every schema (tables, typed columns, primary and foreign
keys) is read from its database, and a Spider-style ``tables.json`` is written beside a Spider-layout
view of the databases, so exact match and hardness work as on Spider. Every gold query is run once
(read-only, in the sandbox): one that fails is an error naming its file and line, or with
``data.skip_bad`` a counted skip.

Without a dev file, dev is held out of the train file with a fixed seed (:data:`SPLIT_SEED`, so the two
splits, prepared apart, never overlap): whole databases (a fifth of them, at least one) when there
are several, else a fifth of the questions.
"""

from __future__ import annotations

import csv
import os
import random
import sys
from pathlib import Path

from sqlora.data.schema import database_path, read_sqlite_schema, spider_entry
from sqlora.data.split import Example, Problems, Split, required_field
from sqlora.errors import SqloraError
from sqlora.io import atomic_path, read_jsonl_lines, write_json
from sqlora.sql.pool import run_tasks
from sqlora.sql.sandbox import QueryResult, run_query

SPLIT_SEED = 42
DEV_FRACTION = 0.2
FIELDS = ("question", "sql", "db_id")
GOLD_WORKERS = 2  # processes running the gold queries


def find_databases(source: Path) -> dict[str, Path]:
    """{db_id: SQLite file} of the folder: ``<db_id>.sqlite`` and ``database/<db_id>/<db_id>.sqlite``."""
    found: dict[str, Path] = {}
    nested = [p for p in sorted((source / "database").glob("*/*.sqlite")) if p.stem == p.parent.name]
    for path in sorted(source.glob("*.sqlite")) + nested:
        if path.stem in found:
            raise SqloraError(f"{source}: two databases named {path.stem!r} ({found[path.stem]}, {path})")
        found[path.stem] = path
    if not found:
        raise SqloraError(f"{source}: no SQLite databases (<db_id>.sqlite or database/<db_id>/<db_id>.sqlite)")
    return found


def questions_file(source: Path, split: str) -> Path | None:
    found = [source / f"{split}{ext}" for ext in (".jsonl", ".csv") if (source / f"{split}{ext}").is_file()]
    if len(found) > 1:
        raise SqloraError(f"{source}: both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def read_questions(path: Path) -> list[tuple[str, dict]]:
    """(where, record) per question of a .jsonl or .csv file; ``where`` is ``file:line``."""
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [k for k in FIELDS if k not in (reader.fieldnames or [])]
            if missing:
                raise SqloraError(f"{path}:1: the header lacks {', '.join(missing)} (expected columns {', '.join(FIELDS)})")
            return [(f"{path}:{reader.line_num}", row) for row in reader]
    return [(f"{path}:{line}", record) for line, record in read_jsonl_lines(path)]


def checked_examples(path: Path, databases: dict[str, Path], problems: Problems) -> list[Example]:
    """The questions of ``path`` whose fields are there, whose database exists and whose gold query runs
    (read-only, in worker processes a crash cannot take down, as evaluation runs gold queries)."""
    candidates: list[tuple[str, Example]] = []
    for where, record in read_questions(path):
        values = {}
        for key in FIELDS:  # the first missing one names the record's problem (one skip per record)
            values[key] = required_field(record, key, where, problems)
            if values[key] is None:
                break
        if None in values.values():
            continue
        if values["db_id"] not in databases:
            problems.bad(where, f"db_id {values['db_id']!r} has no database in the folder (have: {', '.join(sorted(databases)[:5])})")
            continue
        candidates.append((where, Example(db_id=values["db_id"], question=values["question"], query=values["sql"])))
    tasks = [(databases[e.db_id], e.query) for _, e in candidates]
    results = run_tasks(run_query, tasks, workers=GOLD_WORKERS, crashed=QueryResult(rows=None, error="its worker process crashed"))
    examples = []
    for (where, example), result in zip(candidates, results):
        if result.ok:
            examples.append(example)
        else:
            problems.bad(where, f"the gold query fails on {example.db_id}: {result.error}")
    return examples


def held_out(examples: list[Example]) -> tuple[set[int], str]:
    """Indexes of the train file's questions that form dev when there is no dev file, and how."""
    rng = random.Random(SPLIT_SEED)
    dbs = sorted({e.db_id for e in examples})
    if len(dbs) >= 2:
        chosen = set(rng.sample(dbs, max(1, round(len(dbs) * DEV_FRACTION))))
        return {i for i, e in enumerate(examples) if e.db_id in chosen}, f"the databases {', '.join(sorted(chosen))}"
    k = max(1, round(len(examples) * DEV_FRACTION)) if len(examples) > 1 else 0
    return set(rng.sample(range(len(examples)), k)), f"{k} of the {len(examples)} questions"


def load_custom(source: Path, split: str, problems: Problems, work_dir: Path) -> Split:
    databases = find_databases(source)

    train, dev = questions_file(source, "train"), questions_file(source, "dev")
    if dev is not None or (split == "train" and train is None):
        path = dev if split == "dev" else train
        if path is None:
            raise SqloraError(f"{source}: no {split}.jsonl or {split}.csv")
        examples = checked_examples(path, databases, problems)
    else:  # no dev file: dev is held out of the train file, train is the rest
        if train is None:
            raise SqloraError(f"{source}: no dev.jsonl or dev.csv, and no train.jsonl or train.csv to hold dev out of")
        examples = checked_examples(train, databases, problems)
        held, how = held_out(examples)
        examples = [e for i, e in enumerate(examples) if (i in held) == (split == "dev")]
        print(f"{source}: no dev file; dev holds out {how} of {train.name} (seed {SPLIT_SEED})", file=sys.stderr)
    out = work_dir / f"custom-{split}"
    db_ids = sorted(databases)
    with atomic_path(out) as tmp:
        schemas = {db_id: read_sqlite_schema(databases[db_id], db_id) for db_id in db_ids}
        write_json(tmp / "tables.json", [spider_entry(schemas[db_id]) for db_id in db_ids])
        for db_id in db_ids:  # the Spider layout the evaluator and the sandbox read: links, not copies
            link = database_path(tmp / "database", db_id)
            link.parent.mkdir(parents=True)
            os.symlink(databases[db_id].resolve(), link)
    return Split("custom", schemas, examples, out / "database", out / "tables.json", problems.messages)
