"""Atomic writes: an output is either complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlora.errors import SqloraError


def cache_dir(name: str) -> Path:
    """A folder for derived data kept across runs: $SQLORA_CACHE (default ~/.cache/sqlora) / name."""
    return Path(os.environ.get("SQLORA_CACHE", Path.home() / ".cache" / "sqlora")) / name


@contextmanager
def atomic_path(path: str | os.PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path`` (file or folder).

    ``keep_existing``: for a shared cache folder that several processes may fill at once. An
    existing ``path`` is never replaced (another process may be reading it): when one appeared
    while we wrote ours (another process finished first), our copy is discarded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if keep_existing:
            if not path.exists():
                try:
                    os.rename(tmp, path)  # a folder is never renamed onto a non-empty one: the first wins
                except OSError:
                    if not path.exists():
                        raise
        else:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's value; a missing file or invalid JSON is a one-line error naming the file (and line)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SqloraError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise SqloraError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [record for _, record in read_jsonl_lines(path)]


def read_jsonl_lines(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """Each non-blank line's number and JSON object; any other line is an error naming it."""
    records = []
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise SqloraError(f"{path}: file not found") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SqloraError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise SqloraError(f"{path}:{lineno}: expected a JSON object, got {json.dumps(record)[:60]}")
                records.append((lineno, record))
    return records


def run_fingerprint(**inputs) -> str:
    """What makes two runs the same run: checkpoints and partial predictions are resumed only under
    an equal fingerprint."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def folder_stamp(folder: Path) -> list:
    """Names, sizes and SHA-256 of a model folder's files. Contents, not modification times: a
    `dvc checkout` or a copy rewrites mtimes, and a long training must still resume after it."""
    stamp = []
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        with open(path, "rb") as f:
            stamp.append((path.name, path.stat().st_size, hashlib.file_digest(f, "sha256").hexdigest()))
    return stamp
