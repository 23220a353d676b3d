"""prompt.values: the question's words matched to database cells, as `table.column = 'value'` hints."""

import json
import os
import sqlite3
from pathlib import Path

import pytest

from sqlora.data.values import _LOADED, ValueHint, ValueIndex, describe_hints


@pytest.fixture()
def music_db(tmp_path) -> Path:
    path = tmp_path / "music" / "music.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE singer (id INTEGER PRIMARY KEY, Name TEXT, Country VARCHAR(20), age INT, note);
        CREATE TABLE concert (id INTEGER PRIMARY KEY, city TEXT, year TEXT, singer_id INT);
        INSERT INTO singer VALUES (1, 'Joe Sharp', 'France', 52, 'the'), (2, 'Rose O''Brien', 'United States', 41, NULL),
                                  (3, 'Tim Li', 'France', 30, 'x'), (4, 'Ann Bo', 'Netherlands', 29, 'of the');
        INSERT INTO concert VALUES (1, 'Paris', '2014', 1), (2, 'New York City', '2015', 2), (3, 'France', '2016', 3);
        """
    )
    conn.commit()
    conn.close()
    return path


def hints(index: ValueIndex, question: str, **kw) -> list[str]:
    return [str(h) for h in index.match(question, **kw)]


def test_exact_fuzzy_and_multiword_values(music_db):
    index = ValueIndex.read(music_db)
    # Every text column that holds the value, best first (equal scores: the same value in two tables).
    assert hints(index, "How many singers are from FRANCE?") == ["concert.city = 'France'", "singer.Country = 'France'"]
    # A typo in a multi-word value: "states" anchors it, the n-gram's ratio decides.
    assert hints(index, "Which singers come from the Untied States?") == ["singer.Country = 'United States'"]
    # A plural still finds the singular's value through the vocabulary's fuzzy match.
    assert hints(index, "concerts held in new york city") == ["concert.city = 'New York City'"]
    # Quotes are SQL-escaped.
    assert hints(index, "What is the age of Rose O'Brien?") == ["singer.Name = 'Rose O''Brien'"]


def test_nothing_is_hinted_without_a_match(music_db):
    index = ValueIndex.read(music_db)
    # Numbers, stopword-only values ("the", "of the") and non-text columns are never hints.
    assert hints(index, "Show the singers of the concert in 2014 older than 52") == []
    assert hints(index, "List all singers") == []
    assert describe_hints([]) == ""


def test_tables_and_limit(music_db):
    index = ValueIndex.read(music_db)
    assert hints(index, "singers from France", tables={"singer"}) == ["singer.Country = 'France'"]
    assert hints(index, "singers from France", tables={"concert"}) == ["concert.city = 'France'"]
    assert len(index.match("France, Paris, Netherlands, Joe Sharp", limit=2)) == 2
    text = describe_hints(index.match("Joe Sharp in Paris"))
    assert text == "Database values that the question mentions:\nsinger.Name = 'Joe Sharp'\nconcert.city = 'Paris'"


def test_index_is_cached_and_rebuilt_when_the_file_changes(music_db, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = ValueIndex.cached(music_db, cache)
    [entry] = list(cache.iterdir())
    assert json.loads(entry.read_text()) == [list(c) for c in first.columns]
    calls = []
    real_read = ValueIndex.read.__func__
    monkeypatch.setattr(ValueIndex, "read", classmethod(lambda cls, path: calls.append(path) or real_read(cls, path)))
    again = ValueIndex.cached(music_db, cache)
    assert calls == [] and again is first  # kept in memory: a server reads it once
    _LOADED.clear()
    again = ValueIndex.cached(music_db, cache)
    assert calls == [] and again is not first and hints(again, "singers from France") == hints(first, "singers from France")
    with sqlite3.connect(music_db) as conn:
        conn.execute("INSERT INTO singer VALUES (5, 'Mia Wu', 'Chile', 20, NULL)")
    stat = music_db.stat()
    os.utime(music_db, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = ValueIndex.cached(music_db, cache)
    assert len(calls) == 1 and hints(changed, "singers from Chile") == ["singer.Country = 'Chile'"]
    # A damaged entry is rebuilt, not an error.
    for file in cache.iterdir():
        file.write_text("{not json")
    _LOADED.clear()
    assert hints(ValueIndex.cached(music_db, cache), "singers from Chile") == ["singer.Country = 'Chile'"]


def test_missing_or_bad_database_is_one_line_error(tmp_path):
    from sqlora.errors import SqloraError

    with pytest.raises(SqloraError, match="no such database file"):
        ValueIndex.cached(tmp_path / "nope.sqlite", tmp_path)
    (tmp_path / "bad.sqlite").write_text("not a database")
    with pytest.raises(SqloraError, match=r"bad\.sqlite: cannot read its values"):
        ValueIndex.read(tmp_path / "bad.sqlite")


def test_hint_text():
    assert str(ValueHint("t", "c", "it's", 100.0)) == "t.c = 'it''s'"


def test_prepared_records_carry_the_hints_in_train_and_dev(sample_dir):
    """The same rendering for both splits: a dev question that names a value gets its hint, and a
    training record's hint names a value its own gold SQL uses."""
    from sqlora.config import DataParams, PromptParams
    from sqlora.data.prepare import prepare_split

    data = DataParams(dataset="spider", source=str(sample_dir))
    for split in ("train", "dev"):
        _, plain, _ = prepare_split(split, data, PromptParams())
        _, hinted, _ = prepare_split(split, data, PromptParams(values=True))
        with_hints = [(p, h) for p, h in zip(plain.records, hinted.records) if p.instruction != h.instruction]
        assert with_hints, split
        for p, h in with_hints:
            assert h.instruction.startswith(p.instruction + "\nDatabase values that the question mentions:\n")
            assert h.input == p.input and h.output == p.output
        used = sum(
            any(
                line.split(" = ", 1)[1][1:-1].replace("''", "'") in h.output
                for line in h.instruction.split("question mentions:\n")[1].splitlines()
            )
            for _, h in with_hints
        )
        assert used >= len(with_hints) // 3, (split, used, len(with_hints))


def test_spider_dev_hints_find_the_gold_values(spider_dir):
    """On real Spider dev: most gold string literals that the question spells out are hinted."""
    import re

    from sqlora.data.schema import database_path

    dev = json.loads((spider_dir / "dev.json").read_text())
    indexes: dict[str, ValueIndex] = {}
    found = total = 0
    for example in dev:
        path = database_path(spider_dir / "database", example["db_id"])
        if not path.is_file():
            continue
        literals = [v for v in re.findall(r"'([^']+)'|\"([^\"]+)\"", example["query"]) for v in v if v and "%" not in v]
        literals = [v for v in literals if v.lower() in example["question"].lower() and not v.replace(".", "").isdigit()]
        if not literals:
            continue
        index = indexes.setdefault(example["db_id"], ValueIndex.cached(path))
        hinted = {h.value.lower() for h in index.match(example["question"])}
        found += sum(v.lower() in hinted for v in literals)
        total += len(literals)
    assert total > 200 and found / total > 0.8, (found, total)


def test_a_missing_database_gets_no_hints_and_is_listed(sample_dir, tmp_path):
    """Spider's own download lacks some database files (here: baseball_1, soccer_1, wta_1): their questions
    are prompted with the schema alone, and the split's statistics name them, instead of prepare failing."""
    import shutil

    from sqlora.config import DataParams, PromptParams
    from sqlora.data.prepare import prepare_split

    source = tmp_path / "spider"
    shutil.copytree(sample_dir, source)
    _, plain, _ = prepare_split("dev", DataParams(dataset="spider", source=str(source)), PromptParams())
    gone = plain.records[0].db_id
    shutil.rmtree(source / "database" / gone)
    _, hinted, stats = prepare_split("dev", DataParams(dataset="spider", source=str(source)), PromptParams(values=True))
    assert stats["value_hints_missing_database"] == [gone]
    for p, h in zip(plain.records, hinted.records):
        if h.db_id == gone:
            assert h.instruction == p.instruction
    assert any(h.instruction != p.instruction for p, h in zip(plain.records, hinted.records) if h.db_id != gone)
