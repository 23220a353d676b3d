"""The embedded sample dataset: a small Text-to-SQL corpus in Spider 1.0's exact layout.

``generate_sample`` writes train/dev questions, gold files, tables.json and one SQLite
database per domain, deterministically from a seed, so the default pipeline runs offline
through the same code path as real Spider. Train and dev use different domains (databases)
but the same schema-generic question templates: cross-domain, yet learnable by a small model.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import tempfile
from pathlib import Path

from . import database
from .domains import DOMAINS
from .questions import Example, sample_questions
from .templates import Db

__all__ = ["generate_sample"]

# Questions per database: 8 train databases x 125 ~ 1000, 3 dev databases x 74 ~ 220.
QUESTIONS_PER_DATABASE = {"train": 125, "dev": 74}


def generate_sample(out_dir: str | os.PathLike, seed: int = 0) -> dict:
    """Write the sample dataset to out_dir in Spider layout; return counts {"train": n, "dev": n, "databases": n, ...}.

    Everything is written into a temporary sibling folder first and then renamed into place,
    replacing any previous out_dir, so a failure never leaves half-written output behind.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would otherwise become out_dir's mode
        counts = _write(staging, seed)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def _write(folder: Path, seed: int) -> dict:
    rng = random.Random(seed)
    splits: dict[str, list[Example]] = {"train": [], "dev": []}
    schemas = []
    for domain in DOMAINS:
        rows = database.fill(domain, rng)
        path = database.write_database(domain, rows, folder / "database")
        schemas.append(database.spider_schema(domain))
        conn = sqlite3.connect(path)
        try:
            examples = sample_questions(Db(domain, rows), conn, QUESTIONS_PER_DATABASE[domain.split], rng)
        finally:
            conn.close()
        splits[domain.split].extend(examples)
    for split, examples in splits.items():
        # Shuffled so that any prefix (e.g. "the first N dev questions") covers every database.
        rng.shuffle(examples)
        records = [{"db_id": e.db_id, "query": e.query, "question": e.question} for e in examples]
        _write_json(folder / f"{split}.json", records)
        gold = "".join(f"{e.query}\t{e.db_id}\n" for e in examples)
        (folder / f"{split}_gold.sql").write_text(gold, encoding="utf-8")
    _write_json(folder / "tables.json", schemas)
    return {
        "train": len(splits["train"]),
        "dev": len(splits["dev"]),
        "databases": len(DOMAINS),
        "train_databases": sum(d.split == "train" for d in DOMAINS),
        "dev_databases": sum(d.split == "dev" for d in DOMAINS),
    }


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _replace(staging: Path, out: Path) -> None:
    """Rename staging to out. A non-empty folder cannot be renamed over, so move the old one aside first."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rename(out, old)  # replaces the empty folder mkdtemp made
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
