"""Database values in the prompt (``prompt.values``): the question's words matched to the cells of its database.

A question says "singers from France"; the SQL needs ``singer.Country = 'France'``, and a small model
that never sees the data guesses the column and the spelling. BRIDGE (Lin et al., 2020) and CodeS
(Li et al., 2024) show the matching cell values in the prompt; so do we, as ``table.column = 'value'``
hints, the same in training and prediction.

- :class:`ValueIndex`: the distinct text values of each text column of one database (at most
  ``MAX_VALUES_PER_COLUMN`` per column, each at most ``MAX_VALUE_CHARS`` characters), read once through the
  read-only sandbox connection and cached on disk (JSON), keyed by the file's path, size and mtime.
- :meth:`ValueIndex.match`: the question's 1-4 word n-grams against those values, case-insensitive and
  fuzzy (rapidfuzz's ``ratio``): candidate values are those that share a word with the question, a word
  matched fuzzily against the database's vocabulary so that typos still find them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from rapidfuzz import fuzz, process

from sqlora.errors import SqloraError

MAX_VALUES_PER_COLUMN = 5000
MAX_VALUE_CHARS = 60
MAX_HINTS = 6  # hints per question, best first
LOADED_INDEXES = 32  # indexes kept in memory, the most recently used
MIN_SCORE = 85.0  # rapidfuzz ratio (0-100) of an n-gram to a value
MAX_NGRAM = 4
# Words too common to anchor a value on their own ("the", "of" ...); a value made only of them is never hinted.
STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or not no is are was were be been what which who whom whose "
    "how many much show list give find all each every that this these those their its his her there than "
    "as me my name names number count".split()
)
_WORD = re.compile(r"[0-9a-z]+(?:['.\-][0-9a-z]+)*")
INDEX_VERSION = 1


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class ValueHint:
    table: str
    column: str
    value: str
    score: float

    def __str__(self) -> str:
        return f"{self.table}.{self.column} = '" + self.value.replace("'", "''") + "'"


_LOADED: OrderedDict[Path, ValueIndex] = OrderedDict()  # cache file -> its index, this process's


class ValueIndex:
    """The text values of one database, and the question n-grams that match them."""

    def __init__(self, columns: list[tuple[str, str, list[str]]]):
        self.columns = columns  # (table, column, distinct values)
        self._norm: list[str] = []  # one entry per (column, value): the normalised value
        self._where: list[tuple[int, int]] = []  # its (column index, value index)
        by_word: dict[str, set[int]] = {}
        for c, (_, _, values) in enumerate(columns):
            for v, value in enumerate(values):
                norm = " ".join(words(value))
                content = [w for w in norm.split() if w not in STOPWORDS and not w.replace(".", "").isdigit()]
                if not content:  # numbers and stopwords: the question writes those literally
                    continue
                entry = len(self._norm)
                self._norm.append(norm)
                self._where.append((c, v))
                for w in content:
                    by_word.setdefault(w, set()).add(entry)
        self._by_word = by_word
        self._vocabulary = list(by_word)

    # --- building and caching -----------------------------------------------------------------------

    @classmethod
    def read(cls, db_path: str | Path) -> ValueIndex:
        from sqlora.sql.sandbox import connect_read_only

        columns = []
        connection = connect_read_only(db_path)
        connection.text_factory = lambda b: b.decode("utf-8", "ignore")  # as the sandbox reads Spider's bad bytes
        try:
            tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
            for table in tables:
                for _, column, declared, *_ in connection.execute(f"PRAGMA table_info({_quote(table)})"):
                    if not _is_text(declared):
                        continue
                    rows = connection.execute(
                        f"SELECT DISTINCT {_quote(column)} FROM {_quote(table)} WHERE typeof({_quote(column)}) = 'text' "
                        f"AND length({_quote(column)}) BETWEEN 1 AND {MAX_VALUE_CHARS} LIMIT {MAX_VALUES_PER_COLUMN}"
                    )
                    values = [r[0] for r in rows if r[0].strip()]
                    if values:
                        columns.append((table, column, values))
        except Exception as error:  # sqlite3.Error, or a value sqlite cannot decode
            raise SqloraError(f"{db_path}: cannot read its values: {error}") from None
        finally:
            connection.close()
        return cls(columns)

    @classmethod
    def cached(cls, db_path: str | Path, cache_dir: str | Path | None = None) -> ValueIndex:
        """The index of ``db_path``, read from the cache (``cache_dir``, default $SQLORA_CACHE/values)
        when the file is unchanged (path, size, mtime)."""
        from sqlora.io import cache_dir as default_cache_dir
        from sqlora.io import write_text

        path = Path(db_path).resolve()
        if not path.is_file():
            raise SqloraError(f"{db_path}: no such database file")
        stat = path.stat()
        key = hashlib.sha1(f"{INDEX_VERSION}|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        file = Path(cache_dir or default_cache_dir("values")) / f"{path.stem}-{key}.json"
        if file in _LOADED:  # a server asks about the same few databases again and again
            _LOADED.move_to_end(file)
            return _LOADED[file]
        index = None
        if file.is_file():
            try:
                index = cls([tuple(c) for c in json.loads(file.read_text())])
            except (OSError, ValueError, TypeError):
                pass  # a damaged cache entry is rebuilt below
        if index is None:
            index = cls.read(path)
            try:
                write_text(file, json.dumps(index.columns, ensure_ascii=False))
            except OSError:
                pass  # a read-only home: the index still works, uncached
        _LOADED[file] = index
        while len(_LOADED) > LOADED_INDEXES:
            _LOADED.popitem(last=False)
        return index

    # --- matching -----------------------------------------------------------------------------------

    def match(self, question: str, tables: set[str] | None = None, limit: int = MAX_HINTS) -> list[ValueHint]:
        """The values the question names, best first, at most ``limit``, one per (table, column, value);
        ``tables`` (lower-case names): only hints on these tables (a schema shrunk to fit the budget)."""
        tokens = words(question)
        candidates: set[int] = set()
        for token in {t for t in tokens if t not in STOPWORDS and len(t) > 1}:
            candidates |= self._by_word.get(token, set())
            if len(token) >= 4:  # typos: words of the database within one or two edits
                for word, _, _ in process.extract(token, self._vocabulary, scorer=fuzz.ratio, score_cutoff=MIN_SCORE, limit=5):
                    candidates |= self._by_word[word]
        if not candidates:
            return []
        ngrams: dict[int, set[str]] = {}
        for n in range(1, MAX_NGRAM + 1):
            ngrams[n] = {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
        best: dict[tuple[int, int], float] = {}
        for entry in candidates:
            norm = self._norm[entry]
            n = len(norm.split())
            grams = ngrams.get(n, set()) | ngrams.get(n + 1, set()) | ngrams.get(max(n - 1, 1), set())
            score = max((fuzz.ratio(norm, g) for g in grams), default=0.0)
            if score >= MIN_SCORE:
                best[self._where[entry]] = max(score, best.get(self._where[entry], 0.0))
        hints = []
        for (c, v), score in best.items():
            table, column, values = self.columns[c]
            if tables is None or table.lower() in tables:
                hints.append(ValueHint(table, column, values[v], round(score, 1)))
        # Best score first; among equals the longer value (it says more), then a stable order.
        hints.sort(key=lambda h: (-h.score, -len(h.value), h.table, h.column, h.value))
        return hints[:limit]


def describe_hints(hints: list[ValueHint]) -> str:
    """The prompt's lines for the hints ("" when there are none)."""
    if not hints:
        return ""
    return "Database values that the question mentions:\n" + "\n".join(str(h) for h in hints)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_text(declared: str) -> bool:
    """SQLite's text affinity (and an undeclared type, which holds whatever was stored)."""
    t = (declared or "").lower()
    return not t or any(w in t for w in ("char", "clob", "text", "var"))
