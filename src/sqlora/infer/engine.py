"""Generation for many prompts at once, behind one interface with two engines.

- :class:`sqlora.infer.fast.FastEngine`, ours: shared prefixes attended in place, continuous batching,
  a KV cache appended in place (4-19x transformers' batching on a CPU). It runs only where it is exact
  (:func:`select_engine` says why not): attention through transformers' AttentionInterface, plain
  per-layer KV caches, and a probe forward that gives the model's own logits.
- :class:`sqlora.infer.hf.TransformersEngine`: transformers' batched ``generate()``, left-padded, for
  everything else and for beam search.

Both stop a row at EOS, at ``max_new_tokens``, or once its SQL statement is complete
(:func:`sqlora.infer.sql_text.sql_complete`), and give one :class:`Generation` per prompt.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Callable, Collection, Iterator

import torch
from tqdm import tqdm

from sqlora.config import PredictParams
from sqlora.data.prompt import common_prefix, encode_prompt, prefix_groups
from sqlora.errors import SqloraError
from sqlora.infer.base import Batch, Engine, FastPathProblem, Generation, Row
from sqlora.infer.plan import DecodingPlan, plan_decoding
from sqlora.model.loader import context_limit


@dataclass(frozen=True)
class EngineChoice:
    name: str  # sqlora | transformers
    reason: str  # why, in words, for the predict log


ENGINES = ("auto", "sqlora", "transformers")
_fast_path_checks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> problem (None: exact)


def select_engine(model, tokenizer, plan: DecodingPlan, longest: int = 0, engine: str = "auto") -> EngineChoice:
    """The engine for ``model`` and ``plan``, ``longest`` being the most tokens a row will hold (prompt +
    max_new_tokens). ``engine``: auto (ours where it is exact), or one of them by name (tests, benchmarks)."""
    if engine not in ENGINES:
        raise SqloraError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "transformers":
        return EngineChoice("transformers", "asked for")
    if plan.search == "beam":
        return EngineChoice("transformers", "beam search runs through transformers' generate()")
    if model not in _fast_path_checks:
        _fast_path_checks[model] = _fast_path_problem(model, tokenizer)
    problem = _fast_path_checks[model]
    if problem is not None and problem.window is not None and longest <= problem.window:
        problem = None  # every row fits in the window the model does not tell its attention about
    if problem is None:
        return EngineChoice("sqlora", "exact for this model (shared-prefix attention, continuous batching)")
    if engine == "sqlora":
        raise SqloraError(f"the sqlora engine cannot run this model exactly: {problem.reason}")
    return EngineChoice("transformers", problem.reason)


def _fast_path_problem(model, tokenizer):
    """Why our engine cannot run ``model`` (None: it can), also when the installed transformers no longer
    has the internals it is built on (sqlora pins the version they are checked on; a newer one may move them)."""
    try:
        from sqlora.infer.fast import fast_path_problem
    except ImportError as exc:
        import transformers

        return FastPathProblem(f"our engine cannot use transformers {transformers.__version__}'s internals ({exc})")
    return fast_path_problem(model, tokenizer)


def _engine(choice: EngineChoice, model, tokenizer, plan: DecodingPlan, seed: int, constraints: list | None) -> Engine:
    if choice.name == "sqlora":
        from sqlora.infer.fast import FastEngine

        return FastEngine(model, tokenizer, plan, seed, constraints)
    from sqlora.infer.hf import TransformersEngine

    return TransformersEngine(model, tokenizer, plan, seed, constraints)


# --- batches --------------------------------------------------------------------------------------------


def plan_batches(encoded: list[list[int]], questions_per_batch: int, pool_small: bool = False) -> list[Batch]:
    """Batches of prompts that share long prefixes, in an order fixed by the prompts alone.

    The groups of :func:`sqlora.data.prompt.prefix_groups` (the notion of a shared prefix that training
    uses too), each cut into batches of the longest prompts first. With ``pool_small`` (batches that run
    alone, no rows joining), group tails too small to fill a quarter of a batch are pooled by length
    rather than run as tiny batches, each step of which costs nearly as much as a full one.
    """
    groups = prefix_groups(encoded)
    chunks: list[tuple[list[int], int]] = []  # (indexes, shared prefix)
    pool: list[int] = []
    for group in groups:
        # The group's common prefix (that of its lexicographic extremes) is used by all its batches,
        # so it is computed once for the group.
        shared = common_prefix(encoded[group[0]], encoded[group[-1]])
        group.sort(key=lambda i: (-len(encoded[i]), i))
        for start in range(0, len(group), questions_per_batch):
            chunk = group[start : start + questions_per_batch]
            if not pool_small or len(chunk) >= max(2, questions_per_batch // 4):
                chunks.append((chunk, shared))
            else:
                pool.extend(chunk)
    pool.sort(key=lambda i: (-len(encoded[i]), i))
    for start in range(0, len(pool), questions_per_batch):
        chunk = pool[start : start + questions_per_batch]
        chunks.append((chunk, min(common_prefix(encoded[chunk[0]], encoded[i]) for i in chunk)))
    # Every row keeps at least one token of its own to run (it gives the first logits).
    return [
        Batch(number=n, indexes=chunk, prefix=max(0, min(shared, *(len(encoded[i]) - 1 for i in chunk))))
        for n, (chunk, shared) in enumerate(chunks)
    ]


def shard(batches: list[Batch], rank: int, world: int) -> list[Batch]:
    """This process's share of a plan under ``world`` processes: every world-th batch, so each process
    gets prompts of every length and its own prefixes."""
    return batches[rank::world]


# --- generation -----------------------------------------------------------------------------------------


def encode_all(model, tokenizer, prompts: list[str], max_new_tokens: int, chat_template: bool) -> list[list[int]]:
    """Token ids of every prompt; a prompt that leaves no room for ``max_new_tokens`` is an error naming it."""
    encoded = [encode_prompt(tokenizer, p, chat_template) for p in prompts]
    limit, source = context_limit(model.config, tokenizer)
    for index, ids in enumerate(encoded):
        if len(ids) + max_new_tokens > limit:
            raise SqloraError(
                f"prompt #{index}: {len(ids)} tokens + predict.max_new_tokens {max_new_tokens} exceed the model's "
                f"context of {limit} tokens ({source}); shorten the schema (prepare's length budget) or lower max_new_tokens"
            )
    return encoded


def generate(
    model,
    tokenizer,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int,
    progress: bool = True,
    chat_template: bool = False,
    engine: str = "auto",
    constraints: list | None = None,
    **decoding,
) -> list[Generation]:
    """One Generation per prompt, in input order (greedy unless ``decoding`` says otherwise:
    the other PredictParams fields, e.g. ``decoding="beam", num_beams=4``; ``seed`` for sampling)."""
    seed = decoding.pop("seed", 42)
    plan = plan_decoding(PredictParams(batch_size=batch_size, max_new_tokens=max_new_tokens, **decoding))
    results: dict[int, Generation] = {}
    for batch in iter_generate(
        model,
        tokenizer,
        prompts,
        plan,
        seed=seed,
        chat_template=chat_template,
        progress=progress,
        engine=engine,
        constraints=constraints,
    ):
        results.update(batch)
    return [results[i] for i in range(len(prompts))]


@torch.inference_mode()
def iter_generate(
    model,
    tokenizer,
    prompts: list[str],
    plan: DecodingPlan,
    *,
    seed: int = 42,
    chat_template: bool = False,
    skip: Collection[int] = (),
    progress: bool = True,
    engine: str = "auto",
    rank: int = 0,
    world: int = 1,
    on_engine: Callable[[EngineChoice], None] | None = None,
    constraints: list | None = None,
) -> Iterator[dict[int, Generation]]:
    """Generate, yielding each finished batch's {prompt index: Generation} (in the order batches finish).

    The batches depend on the prompts and ``plan`` only; batches whose prompts are all in ``skip``
    (done by an earlier, interrupted run) are left out, and under ``world`` processes this one runs
    its ``rank``'s share (:func:`shard`). Sampling (our engine) draws from one random stream per
    question and candidate, seeded by ``seed`` and the question's index, so what a question gets does
    not depend on the other questions, on what was skipped or on the number of processes.
    ``on_engine`` is told which engine runs, and why. ``constraints`` (``predict.constrained``): per
    prompt, the :class:`sqlora.infer.constrained.SchemaNames` its identifiers are checked against.
    """
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    encoded = encode_all(model, tokenizer, prompts, plan.max_new_tokens, chat_template)
    if plan.constrained and constraints is None:
        raise SqloraError("predict.constrained needs each prompt's schema (constraints)")
    samples = plan.candidates
    longest = max((len(ids) for ids in encoded), default=0) + plan.max_new_tokens
    choice = select_engine(model, tokenizer, plan, longest, engine)
    if on_engine is not None:
        on_engine(choice)
    runner = _engine(choice, model, tokenizer, plan, seed, constraints if plan.constrained else None)
    batches = plan_batches(encoded, plan.questions_per_batch, pool_small=runner.pools_small_batches)
    skip = set(skip)
    todo = [b for b in shard(batches, rank, world) if not set(b.indexes) <= skip]
    with tqdm(total=sum(len(b.indexes) for b in todo), desc="predict", unit="q", disable=not progress) as bar:
        for batch, rows in runner.run(todo, encoded, samples):
            by_question: dict[int, list[Row]] = {}
            for row in sorted(rows, key=lambda r: (r.index, r.sample)):
                by_question.setdefault(row.index, []).append(row)
            batch_seconds = sum(r.seconds for r in rows)
            out = {}
            for index, mine in by_question.items():
                seconds = sum(r.seconds for r in mine)
                generations = [runner.finish(r, batch_seconds, seconds) for r in mine]
                if samples == 1:
                    out[index] = generations[0]
                elif plan.choose == "first_resolving":  # constrained beams: the best whose aliases resolve
                    out[index] = first_resolving(generations, constraints[index])
                else:
                    out[index] = replace(generations[0], candidates=tuple(generations))
            bar.update(len(batch.indexes))
            yield out


def first_resolving(generations: list[Generation], names) -> Generation:
    """The first generation the constraint held for whose SQL passes the schema check with its aliases
    resolved; else the first it held for; else the first."""
    from sqlora.infer.constrained import sql_resolves

    held = [g for g in generations if g.constraint != "released"] or generations
    return next((g for g in held if names is None or sql_resolves(names, g.sql)), held[0])
