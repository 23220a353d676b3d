"""Benchmark datasets in their official layouts, read into one :class:`Split` each.

Every dataset is read into the same :class:`Split` — schemas, examples, the folder of its SQLite
databases — and then turned into records by one code path:

- ``spider`` (and the embedded ``sample``): ``tables.json``, ``train_spider.json`` (+ ``train_others.json``)
  or ``train.json``, ``dev.json``, ``database/<db>/<db>.sqlite``;
- ``bird``: ``{split}.json`` (``question``, ``evidence``, ``SQL``, ``difficulty``), ``{split}_tables.json``,
  ``{split}_databases/<db>/<db>.sqlite``;
- ``cosql`` / ``sparc``: interactions (``database_id``, ``interaction``: [{``utterance``, ``query``}]),
  one example per turn; they run on Spider's databases, so ``tables.json`` and ``database/`` come from the
  dataset folder or, when it has none, from ``schema_source``;
- ``wikisql``: converted to the Spider layout first (:mod:`sqlora.data.wikisql`).

A source may also be the official ``.zip``: it is extracted once into a cache keyed by its content.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from sqlora.config import DATASETS
from sqlora.data.schema import Column, DatabaseSchema
from sqlora.data.split import Example, Problems, Split, required_field
from sqlora.errors import SqloraError
from sqlora.io import read_json

# How errors name the dataset folders by default: as the prepare stage gets them, from params.yaml.
SOURCE_LABEL = "params.yaml: 'data.source'"
SCHEMA_SOURCE_LABEL = "params.yaml: 'data.schema_source'"


def _read_list(path: Path) -> list:
    entries = read_json(path)
    if not isinstance(entries, list):
        raise SqloraError(f"{path}: expected a JSON list")
    return entries


def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise SqloraError(f"{where}: {message}")


def _parse_schema(entry: dict, where: str) -> DatabaseSchema:
    _require(isinstance(entry, dict), where, "expected an object")
    for key in ("db_id", "table_names_original", "column_names_original", "column_types", "primary_keys", "foreign_keys"):
        _require(key in entry, where, f"missing key '{key}'")
    tables = entry["table_names_original"]
    raw_columns = entry["column_names_original"]
    types = entry["column_types"]
    _require(
        isinstance(tables, list) and all(isinstance(t, str) for t in tables), f"{where}.table_names_original", "expected a list of names"
    )
    _require(
        isinstance(raw_columns, list) and all(isinstance(c, list) and len(c) == 2 and isinstance(c[1], str) for c in raw_columns),
        f"{where}.column_names_original",
        "expected a list of [table_index, name] pairs",
    )
    _require(
        isinstance(types, list) and len(types) == len(raw_columns),
        f"{where}.column_types",
        f"expected {len(raw_columns)} types, one per column",
    )
    natural = entry.get("column_names")
    natural_ok = (
        isinstance(natural, list) and len(natural) == len(raw_columns) and all(isinstance(c, list) and len(c) == 2 for c in natural)
    )
    natural = natural if natural_ok else raw_columns
    columns = []
    for i, (table, name) in enumerate(raw_columns[1:], 1):  # entry 0 is Spider's [-1, "*"]
        _require(
            isinstance(table, int) and 0 <= table < len(tables),
            f"{where}.column_names_original[{i}]",
            f"table index {table!r} out of range",
        )
        columns.append(Column(table=table, name=name, type=types[i], natural=str(natural[i][1])))

    def column_index(value, key: str) -> int:
        _require(
            isinstance(value, int) and 1 <= value <= len(columns),
            f"{where}.{key}",
            f"column index {value!r} out of range 1..{len(columns)}",
        )
        return value

    _require(isinstance(entry["primary_keys"], list), f"{where}.primary_keys", "expected a list of column indices")
    _require(isinstance(entry["foreign_keys"], list), f"{where}.foreign_keys", "expected a list of [column, referenced_column] pairs")
    primary_keys = []
    for k, key in enumerate(entry["primary_keys"]):
        group = key if isinstance(key, list) else [key]  # newer Spider nests composite keys
        primary_keys.append(tuple(column_index(c, f"primary_keys[{k}]") for c in group))
    foreign_keys = []
    for k, pair in enumerate(entry["foreign_keys"]):
        _require(isinstance(pair, list) and len(pair) == 2, f"{where}.foreign_keys[{k}]", "expected [column, referenced_column]")
        foreign_keys.append((column_index(pair[0], f"foreign_keys[{k}]"), column_index(pair[1], f"foreign_keys[{k}]")))
    table_natural = entry.get("table_names")
    return DatabaseSchema(
        db_id=entry["db_id"],
        tables=tables,
        columns=columns,
        primary_keys=primary_keys,
        foreign_keys=foreign_keys,
        table_natural=table_natural if isinstance(table_natural, list) and len(table_natural) == len(tables) else None,
    )


def load_schemas(tables_json: str | Path, problems: Problems | None = None) -> dict[str, DatabaseSchema]:
    """Schemas of a tables.json; a malformed one stops the run, or is skipped with ``skip_bad``."""
    problems = problems or Problems()
    path = Path(tables_json)
    schemas = {}
    for i, entry in enumerate(_read_list(path)):
        try:
            schema = _parse_schema(entry, f"{path}[{i}]")
        except SqloraError as exc:
            db_id = entry.get("db_id") if isinstance(entry, dict) else None
            problems.skip(f"{exc} (db_id {db_id!r})" if isinstance(db_id, str) else str(exc))
            continue
        schemas[schema.db_id] = schema
    return schemas


def _known_db(db_id, schemas: dict, where: str, problems: Problems) -> bool:
    if db_id in schemas:
        return True
    problems.bad(f"{where}.db_id", f"{db_id!r} is not in tables.json")
    return False


def load_examples(
    path: str | Path, schemas: dict[str, DatabaseSchema], problems: Problems | None = None, sql_key: str = "query"
) -> list[Example]:
    """Questions of a Spider- or BIRD-style file, each checked to have its fields and a known db_id."""
    problems = problems or Problems()
    path = Path(path)
    examples = []
    for i, entry in enumerate(_read_list(path)):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict):
            problems.bad(where, "expected an object")
            continue
        db_id = required_field(entry, "db_id", where, problems)
        question = db_id and required_field(entry, "question", where, problems)
        query = question and required_field(entry, sql_key, where, problems)
        if query and _known_db(db_id, schemas, where, problems):
            examples.append(
                Example(
                    db_id=db_id,
                    question=question,
                    query=query,
                    evidence=str(entry.get("evidence") or "").strip(),
                    difficulty=str(entry.get("difficulty") or ""),
                )
            )
    return examples


def load_interactions(path: Path, schemas: dict[str, DatabaseSchema], problems: Problems) -> list[Example]:
    """CoSQL / SParC: one example per turn, with the interaction's earlier turns as history."""
    examples = []
    for i, entry in enumerate(_read_list(path)):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("interaction"), list):
            problems.bad(where, "expected an object with an 'interaction' list")
            continue
        db_id = entry.get("database_id")
        if not _known_db(db_id, schemas, where, problems):
            continue
        history: list[tuple[str, str]] = []
        for turn, step in enumerate(entry["interaction"]):
            turn_where = f"{where}.interaction[{turn}]"
            if not isinstance(step, dict):
                problems.bad(turn_where, "expected an object")
                continue
            question = required_field(step, "utterance", turn_where, problems)
            query = question and required_field(step, "query", turn_where, problems)
            if not query:
                continue
            examples.append(Example(db_id=db_id, question=question, query=query, interaction_id=str(i), turn=turn, history=tuple(history)))
            history.append((question, query))
    return examples


# --- layouts ---------------------------------------------------------------------------------------


def resolve_source(source: str | Path, label: str = SOURCE_LABEL) -> Path:
    """A dataset folder, or an official .zip extracted once into a cache keyed by its content.

    ``label`` names the source in the error, as the caller got it ("--source", "params.yaml: ...").
    Several processes may extract the same archive at once (``dvc exp run --run-all --jobs 2``):
    each extracts into a private folder, the first renamed into place wins, and a cache folder
    in place is never removed (another process may be reading it).
    """
    path = Path(source)
    if path.is_dir():
        return path
    if path.is_file() and zipfile.is_zipfile(path):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        from sqlora.io import atomic_path, cache_dir

        cache = cache_dir(f"{path.stem}-{digest.hexdigest()[:16]}")
        if not cache.is_dir():
            with atomic_path(cache, keep_existing=True) as tmp, zipfile.ZipFile(path) as archive:
                archive.extractall(tmp)
        # Official archives wrap everything in one top folder (spider/, cosql_dataset/ ...).
        entries = [p for p in cache.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        return entries[0] if len(entries) == 1 and entries[0].is_dir() else cache
    raise SqloraError(f"{label} {str(path)!r} is neither a folder nor a .zip archive")


def _first_existing(folder: Path, names: list[str]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise SqloraError(f"{folder}: none of {', '.join(names)} found")


def _spider(source: Path, split: str, problems: Problems) -> Split:
    schemas = load_schemas(source / "tables.json", problems)
    if split == "train":
        files = [p for p in (source / "train_spider.json", source / "train_others.json") if p.is_file()] or [
            _first_existing(source, ["train.json"])
        ]
    else:
        files = [_first_existing(source, [f"{split}.json"])]
    examples = [e for path in files for e in load_examples(path, schemas, problems)]
    return Split("spider", schemas, examples, source / "database", source / "tables.json", problems.messages)


def _bird(source: Path, split: str, problems: Problems) -> Split:
    schemas = load_schemas(source / f"{split}_tables.json", problems)
    examples = load_examples(source / f"{split}.json", schemas, problems, sql_key="SQL")
    return Split("bird", schemas, examples, source / f"{split}_databases", source / f"{split}_tables.json", problems.messages)


def _multiturn(dataset: str, source: Path, split: str, problems: Problems, schema_source: Path | None) -> Split:
    questions = _first_existing(source, [f"{split}.json", f"sql_state_tracking/cosql_{split}.json"])
    schema_dir = source if (source / "tables.json").is_file() else schema_source
    if schema_dir is None or not (schema_dir / "tables.json").is_file():
        raise SqloraError(
            f"{source}: no tables.json; {dataset} runs on Spider's databases: set data.schema_source (--schema-source) to the Spider folder"
        )
    schemas = load_schemas(schema_dir / "tables.json", problems)
    examples = load_interactions(questions, schemas, problems)
    database_dir = source / "database" if (source / "database").is_dir() else schema_dir / "database"
    return Split(dataset, schemas, examples, database_dir, schema_dir / "tables.json", problems.messages)


def _wikisql(source: Path, split: str, problems: Problems, work_dir: Path) -> Split:
    from sqlora.data.wikisql import convert_wikisql

    converted = work_dir / f"wikisql-{split}"
    counts = convert_wikisql(source, split, converted, skip_bad=problems.skip_bad)
    problems.messages.extend(counts.get("problems", []))
    schemas = load_schemas(converted / "tables.json", problems)
    examples = load_examples(converted / f"{split}.json", schemas, problems)
    return Split("wikisql", schemas, examples, converted / "database", converted / "tables.json", problems.messages)


def load_split(
    dataset: str,
    source: str | Path,
    split: str,
    *,
    schema_source: str | Path | None = None,
    skip_bad: bool = False,
    work_dir: str | Path | None = None,
    source_label: str = SOURCE_LABEL,
    schema_source_label: str = SCHEMA_SOURCE_LABEL,
) -> Split:
    """Read one split of a dataset in its official layout (folder or .zip).

    ``work_dir``: the folder where WikiSQL's Spider-layout conversion is written (``wikisql-<split>``),
    needed for wikisql only; nothing is written anywhere else. ``source_label`` and
    ``schema_source_label`` name the two sources in errors, as the caller got them.
    """
    if dataset not in DATASETS:
        raise SqloraError(f"dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    if dataset in ("wikisql", "custom") and work_dir is None:
        raise TypeError(f"load_split(): dataset {dataset!r} needs work_dir, the folder its Spider-layout view is written to")
    source_dir = resolve_source(source, source_label)
    problems = Problems(skip_bad)
    if dataset in ("sample", "spider"):
        result = _spider(source_dir, split, problems)
        result.dataset = dataset
        return result
    if dataset == "bird":
        return _bird(source_dir, split, problems)
    if dataset in ("cosql", "sparc"):
        return _multiturn(
            dataset, source_dir, split, problems, resolve_source(schema_source, schema_source_label) if schema_source else None
        )
    if dataset == "custom":
        from sqlora.data.custom import load_custom

        return load_custom(source_dir, split, problems, Path(work_dir))
    return _wikisql(source_dir, split, problems, Path(work_dir))


# --- records ---------------------------------------------------------------------------------------
