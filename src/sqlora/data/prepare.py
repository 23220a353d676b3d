"""The prepare stage's library: fit records to the length budget, and describe the data.

Length budget: a training record must fit in ``max_length`` tokens with its SQL; a dev prompt
must leave ``reserve`` tokens for generation. A record over budget is never cut mid-text: its
schema shrinks by one stated rule — whole tables leave first, least related to the question first
(fewest words shared with the table's and its columns' names); if one table is left and it is
still too long, its non-key columns leave from the last. A training record that still does not
fit is left out; a dev record is kept with the smallest schema (never dropped), and counted.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sqlora.data.layouts import SCHEMA_SOURCE_LABEL, SOURCE_LABEL, Example, Split
from sqlora.data.prompt import encode_prompt, encode_response
from sqlora.data.records import Record, SchemaRenderer, render_input
from sqlora.errors import SqloraError

if TYPE_CHECKING:
    from pathlib import Path

    from sqlora.config import DataParams, PromptParams


@dataclass
class Fitted:
    records: list[Record]
    prompt_tokens: list[int]  # of each kept record, after fitting
    shrunk: int = 0  # records whose schema was shrunk to fit
    over_budget: int = 0  # dev records that do not fit even with the smallest schema (kept)
    left_out: int = 0  # train records that do not fit even with the smallest schema
    measured: bool = True  # False when no tokenizer was given: no budget, no token statistics


def fit_to_budget(
    split: Split,
    records: list[Record],
    render: SchemaRenderer,
    tokenizer,
    *,
    max_length: int,
    reserve: int | None,
    chat_template: bool = False,
) -> Fitted:
    """``reserve=None``: training, room for each record's own SQL; an int: dev, room to generate."""

    def length(r: Record) -> int:
        return len(encode_prompt(tokenizer, r.prompt, chat_template))

    fitted = Fitted(records=[], prompt_tokens=[])
    for example, record in zip(split.examples, records):
        room = max_length - (len(encode_response(tokenizer, record.output)) if reserve is None else reserve)
        n = length(record)
        if n > room:
            record, n = _shrink(example, record, split, render, length, room)
            if n <= room:
                fitted.shrunk += 1
            elif reserve is None:
                fitted.left_out += 1
                continue
            else:
                fitted.over_budget += 1
        fitted.records.append(record)
        fitted.prompt_tokens.append(n)
    return fitted


def _shrink(example: Example, record: Record, split: Split, render: SchemaRenderer, length, room: int) -> tuple[Record, int]:
    from sqlora.data.schema import shrink_order

    schema = split.schemas[example.db_id]
    kept = list(range(len(schema.tables)))
    candidate, n = record, length(record)
    for table in shrink_order(schema, render_input(example))[:-1]:
        kept.remove(table)
        candidate = replace(record, instruction=render(schema.subset(kept), example.question))
        n = length(candidate)
        if n <= room:
            return candidate, n
    keys = {c for key in schema.primary_keys for c in key} | {c for fk in schema.foreign_keys for c in fk}
    dropped: set[int] = set()
    for column in reversed(schema.table_columns(kept[0])):
        if column in keys:
            continue
        dropped.add(column)
        candidate = replace(record, instruction=render(schema.subset(kept, frozenset(dropped)), example.question))
        n = length(candidate)
        if n <= room:
            break
    return candidate, n


def percentiles(values: list[int]) -> dict:
    if not values:
        return {"mean": 0, "p50": 0, "p90": 0, "p95": 0, "p99": 0, "max": 0}
    ordered = sorted(values)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "mean": round(sum(ordered) / len(ordered), 1),
        "p50": at(0.5),
        "p90": at(0.9),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": ordered[-1],
    }


def split_stats(split: Split, fitted: Fitted, read: int) -> dict:
    """Counts, Spider hardness of the gold SQL, BIRD difficulty, prompt lengths, budget effects."""
    from sqlora.sql.hardness import hardness_or_unparsed

    stats = {
        "questions": read,
        "records": len(fitted.records),
        "databases": len({r.db_id for r in fitted.records}),
        "bad_records_skipped": len(split.problems),
        "hardness": dict(sorted(Counter(hardness_or_unparsed(r.output) for r in fitted.records).items())),
    }
    if fitted.measured:
        stats |= {
            "prompt_tokens": percentiles(fitted.prompt_tokens),
            "schema_shrunk": fitted.shrunk,
            "over_budget": fitted.over_budget,
            "left_out_too_long": fitted.left_out,
        }
    difficulty = Counter(r.difficulty for r in fitted.records if r.difficulty)
    if difficulty:
        stats["difficulty"] = dict(sorted(difficulty.items()))
    interactions = {r.interaction_id for r in fitted.records if r.interaction_id is not None}
    if interactions:
        stats["interactions"] = len(interactions)
    return stats


PORTIONS = ("all", "train", "validation")


def held_out_databases(db_ids: list[str], fraction: float, seed: int) -> frozenset[str]:
    """The databases a validation split holds, whole: a seeded ``fraction`` of ``db_ids``' distinct ones
    (at least one and never all of them when ``fraction`` > 0), so that validation questions are about
    databases training never saw, as Spider dev's are."""
    if fraction <= 0:
        return frozenset()
    distinct = sorted(set(db_ids))
    if len(distinct) < 2:
        raise SqloraError(
            f"data.validation {fraction}: the train split has {len(distinct)} database(s); holding out whole databases needs 2 or more"
        )
    count = min(max(1, round(fraction * len(distinct))), len(distinct) - 1)
    return frozenset(random.Random(seed).sample(distinct, count))


def prepare_split(
    split_name: str,
    data: DataParams,
    prompt: PromptParams,
    *,
    tokenizer=None,
    max_length: int = 0,
    reserve: int | None = None,
    limit: int = 0,
    shuffle: bool = False,
    seed: int = 0,
    work_dir: str | Path | None = None,
    source_label: str = SOURCE_LABEL,
    schema_source_label: str = SCHEMA_SOURCE_LABEL,
    portion: str = "all",
) -> tuple[Split, Fitted, dict]:
    """Read one split, render its records, fit them to the budget (with a tokenizer), describe it.

    ``portion``: "all" of the split's questions, or, for the databases ``data.validation`` holds out
    (:func:`held_out_databases`, drawn with ``seed``), the questions on the other databases ("train")
    or on those ("validation"). ``limit`` applies after.

    ``work_dir``, ``source_label``, ``schema_source_label``: as :func:`sqlora.data.layouts.load_split`.
    """
    from sqlora.data.layouts import load_split
    from sqlora.data.records import subsample, to_record

    split = load_split(
        data.dataset,
        data.source,
        split_name,
        schema_source=data.schema_source or None,
        skip_bad=data.skip_bad,
        work_dir=work_dir,
        source_label=source_label,
        schema_source_label=schema_source_label,
    )
    if portion not in PORTIONS:
        raise ValueError(f"portion must be one of {PORTIONS}, got {portion!r}")
    if portion != "all":
        held_out = held_out_databases([e.db_id for e in split.examples], data.validation, seed)
        split.examples = [e for e in split.examples if (e.db_id in held_out) == (portion == "validation")]
    read = len(split.examples)
    split.examples = subsample(split.examples, limit, seed, shuffle)
    render = SchemaRenderer(split, prompt.schema_format, prompt.sample_rows, prompt.values)
    records = [to_record(e, render(split.schemas[e.db_id], e.question), prompt.history_sql) for e in split.examples]
    if tokenizer is None:
        fitted = Fitted(records=records, prompt_tokens=[], measured=False)
    else:
        fitted = fit_to_budget(
            split, records, render, tokenizer, max_length=max_length, reserve=reserve, chat_template=prompt.chat_template
        )
    stats = split_stats(split, fitted, read)
    if render.without_values:
        stats["value_hints_missing_database"] = render.without_values
    return split, fitted, stats
