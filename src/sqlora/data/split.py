"""What every dataset layout is read into: a :class:`Split` of :class:`Example` questions with their schemas
and databases, and the :class:`Problems` (bad records) met on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlora.data.schema import DatabaseSchema, database_path
from sqlora.errors import SqloraError


@dataclass(frozen=True)
class Example:
    db_id: str
    question: str
    query: str
    evidence: str = ""  # BIRD: the external-knowledge hint
    difficulty: str = ""  # BIRD: simple / moderate / challenging
    interaction_id: str = ""  # CoSQL / SParC
    turn: int = 0  # CoSQL / SParC: 0-based position in the interaction
    history: tuple[tuple[str, str], ...] = ()  # CoSQL / SParC: earlier (question, gold SQL) of the interaction


class Problems:
    """Bad records: the first one stops the run, or, with ``skip_bad``, each is counted and skipped."""

    def __init__(self, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.messages: list[str] = []

    def bad(self, where: str, message: str) -> None:
        self.skip(f"{where}: {message}")

    def skip(self, message: str) -> None:
        if not self.skip_bad:
            raise SqloraError(message)
        self.messages.append(message)


@dataclass
class Split:
    dataset: str
    schemas: dict[str, DatabaseSchema]
    examples: list[Example]
    database_dir: Path  # holds <db_id>/<db_id>.sqlite
    tables_json: Path  # the schemas' file, which exact-set-match reads
    problems: list[str] = field(default_factory=list)  # bad records skipped

    def database_path(self, db_id: str) -> Path:
        return database_path(self.database_dir, db_id)


# --- reading files ---------------------------------------------------------------------------------


def required_field(entry: dict, key: str, where: str, problems: Problems) -> str | None:
    """``entry[key]`` stripped, when it is non-empty text; else a bad record (None when it is skipped)."""
    value = entry.get(key)
    if isinstance(value, str) and value.strip():
        return value.strip()
    problems.bad(where, f"missing or empty '{key}'")
    return None
