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
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Iterator

import torch
from tqdm import tqdm

from sqlora.config import PredictParams
from sqlora.errors import SqloraError
from sqlora.infer.sql_text import extract_sql, sql_status
from sqlora.prompt import encode_prompt


@dataclass(frozen=True)
class Generation:
    sql: str  # the extracted statement, one line ("" when nothing usable came out)
    raw: str  # what the model wrote after the prompt (up to where it stopped)
    new_tokens: int
    hit_max_new_tokens: bool  # cut by max_new_tokens before EOS or the end of a statement
    status: str = "ok"  # ok | empty | unparseable (not one SQL query)
    stop: str = "eos"  # eos | sql_end | max_new_tokens
    decoding: str = "greedy"
    # predict.constrained: "held" (every token was one the schema allows), or "released" (at some step no
    # token was admissible, e.g. a schema the prompt does not match: the row went on unconstrained); "": free.
    constraint: str = ""
    # How it was made, and timings (not part of what two generations are compared on):
    tokens: tuple[int, ...] = field(default=(), compare=False, repr=False)  # the ids of `raw` (EOS included)
    engine: str = field(default="", compare=False)  # sqlora | transformers
    dtype: str = field(default="", compare=False)  # the precision the model computed in
    batch_seconds: float = field(default=0.0, compare=False)  # its batch of prompts: the sum of their `seconds`
    seconds: float = field(default=0.0, compare=False)  # its share of the forward passes it took part in
    candidates: tuple[Generation, ...] = field(default=())  # self_consistency: the sampled candidates


@dataclass(frozen=True)
class Batch:
    number: int  # position in the plan
    indexes: list[int]  # prompts in this batch
    prefix: int  # leading tokens all its prompts share, computed once (0: none)


@dataclass
class Row:
    """One sequence being generated: a prompt's (one of its candidates, for self_consistency)."""

    index: int  # the prompt's
    sample: int  # candidate number (self_consistency), else 0
    batch: Batch
    tokens: list[int] = field(default_factory=list)
    stop: str = "max_new_tokens"  # eos | sql_end | max_new_tokens
    seconds: float = 0.0  # its share of the wall time of the forward passes it was part of


class Engine:
    """What both engines share: the stop tokens, the padding token, turning rows into Generations."""

    name = ""

    def __init__(self, model, tokenizer, params: PredictParams, seed: int, constraints: list | None = None):
        self.model, self.tokenizer, self.params, self.seed = model, tokenizer, params, seed
        self.dev = model.device
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos = {t for t in [*eos, tokenizer.eos_token_id] if t is not None}
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.sampling = params.decoding in ("sample", "self_consistency")
        self.dtype = str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")  # 4-bit: the compute dtype
        # Schema-constrained decoding: per prompt, the SchemaNames its identifiers are checked against (None: free).
        self.constraints = constraints if constraints and any(c is not None for c in constraints) else None
        self.checker = None
        if self.constraints:
            from sqlora.infer.constrained import TokenChecker

            self.checker = TokenChecker(tokenizer, self.eos)

    # Batches that run alone (no rows joining them) pool small groups, each step of which costs nearly a full one.
    pools_small_batches = True

    def run(self, batches: list[Batch], encoded: list[list[int]], samples: int) -> Iterator[tuple[Batch, list[Row]]]:
        """Each batch with its finished rows (``samples`` per prompt), in the order batches finish."""
        raise NotImplementedError

    def finish(self, row: Row, batch_seconds: float, seconds: float) -> Generation:
        raw = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        sql = extract_sql(raw)
        constraint = ""
        names = self.constraints[row.index] if self.constraints else None
        if names is not None:
            from sqlora.infer.constrained import state_of

            # What the engines fed their row's state, read again: it fails only where they had to let go.
            constraint = "held" if state_of(names, raw) is not None else "released"
        return Generation(
            sql=sql, raw=raw, new_tokens=len(row.tokens), hit_max_new_tokens=row.stop == "max_new_tokens", tokens=tuple(row.tokens),
            status=sql_status(sql), stop=row.stop, decoding=self.params.decoding, constraint=constraint, engine=self.name, dtype=self.dtype,
            batch_seconds=round(batch_seconds, 4), seconds=round(seconds, 4),
        )  # fmt: skip


# --- which engine -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineChoice:
    name: str  # sqlora | transformers
    reason: str  # why, in words, for the predict log


ENGINES = ("auto", "sqlora", "transformers")
_fast_path_checks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> problem (None: exact)


def select_engine(model, tokenizer, params: PredictParams, longest: int = 0, engine: str = "auto") -> EngineChoice:
    """The engine for ``model`` and ``params``, ``longest`` being the most tokens a row will hold (prompt +
    max_new_tokens). ``engine``: auto (ours where it is exact), or one of them by name (tests, benchmarks)."""
    from sqlora.infer.fast import fast_path_problem

    if engine not in ENGINES:
        raise SqloraError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "transformers":
        return EngineChoice("transformers", "asked for")
    if params.decoding in ("beam", "execution_guided"):
        return EngineChoice("transformers", "beam search runs through transformers' generate()")
    if model not in _fast_path_checks:
        _fast_path_checks[model] = fast_path_problem(model, tokenizer)
    problem = _fast_path_checks[model]
    if problem is not None and problem.window is not None and longest <= problem.window:
        problem = None  # every row fits in the window the model does not tell its attention about
    if problem is None:
        return EngineChoice("sqlora", "exact for this model (shared-prefix attention, continuous batching)")
    if engine == "sqlora":
        raise SqloraError(f"the sqlora engine cannot run this model exactly: {problem.reason}")
    return EngineChoice("transformers", problem.reason)


def _engine(choice: EngineChoice, model, tokenizer, params: PredictParams, seed: int, constraints: list | None) -> Engine:
    if choice.name == "sqlora":
        from sqlora.infer.fast import FastEngine

        return FastEngine(model, tokenizer, params, seed, constraints)
    from sqlora.infer.hf import TransformersEngine

    return TransformersEngine(model, tokenizer, params, seed, constraints)


def candidates_per_prompt(params: PredictParams) -> int:
    """Sequences generated per prompt: self_consistency's samples, execution_guided's beams, and the
    beams of a constrained beam search (the first whose aliases resolve is kept); else one."""
    if params.decoding == "self_consistency":
        return params.num_samples
    if params.decoding == "execution_guided" or (params.decoding == "beam" and params.constrained):
        return params.num_beams
    return 1


# --- batches --------------------------------------------------------------------------------------------


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def plan_batches(encoded: list[list[int]], questions_per_batch: int, pool_small: bool = False) -> list[Batch]:
    """Batches of prompts that share long prefixes, in an order fixed by the prompts alone.

    Sorted by their tokens, prompts with the same instruction and schema are neighbours; a run of
    neighbours sharing at least half of the shorter prompt is a group, cut into batches of the
    longest prompts first. With ``pool_small`` (batches that run alone, no rows joining), group
    tails too small to fill a quarter of a batch are pooled by length rather than run as tiny
    batches, each step of which costs nearly as much as a full one.
    """
    if not encoded:
        return []
    order = sorted(range(len(encoded)), key=lambda i: encoded[i])
    groups = [[order[0]]]
    for a, b in zip(order, order[1:]):
        if common_prefix(encoded[a], encoded[b]) * 2 >= min(len(encoded[a]), len(encoded[b])):
            groups[-1].append(b)
        else:
            groups.append([b])
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


def context_limit(model, tokenizer) -> tuple[int, str]:
    """Tokens the model can attend to, and where that number comes from."""
    limits = []
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "max_position_embeddings", None):
        limits.append((int(config.max_position_embeddings), "max_position_embeddings"))
    if 0 < (getattr(tokenizer, "model_max_length", 0) or 0) < 10**9:  # "no limit" is a huge sentinel
        limits.append((int(tokenizer.model_max_length), "the tokenizer's model_max_length"))
    return min(limits) if limits else (10**9, "no limit known")


def encode_all(model, tokenizer, prompts: list[str], max_new_tokens: int, chat_template: bool) -> list[list[int]]:
    """Token ids of every prompt; a prompt that leaves no room for ``max_new_tokens`` is an error naming it."""
    encoded = [encode_prompt(tokenizer, p, chat_template) for p in prompts]
    limit, source = context_limit(model, tokenizer)
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
    params = PredictParams(batch_size=batch_size, max_new_tokens=max_new_tokens, **decoding)
    results: dict[int, Generation] = {}
    for batch in iter_generate(
        model, tokenizer, prompts, params, seed=seed, chat_template=chat_template, progress=progress, engine=engine,
        constraints=constraints,
    ):
        results.update(batch)
    return [results[i] for i in range(len(prompts))]


@torch.inference_mode()
def iter_generate(
    model,
    tokenizer,
    prompts: list[str],
    params: PredictParams,
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

    The batches depend on the prompts and ``params`` only; batches whose prompts are all in ``skip``
    (done by an earlier, interrupted run) are left out, and under ``world`` processes this one runs
    its ``rank``'s share (:func:`shard`). Sampling (our engine) draws from one random stream per
    question and candidate, seeded by ``seed`` and the question's index, so what a question gets does
    not depend on the other questions, on what was skipped or on the number of processes.
    ``on_engine`` is told which engine runs, and why. ``constraints`` (``predict.constrained``): per
    prompt, the :class:`sqlora.infer.constrained.SchemaNames` its identifiers are checked against.
    """
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    encoded = encode_all(model, tokenizer, prompts, params.max_new_tokens, chat_template)
    if params.constrained and constraints is None:
        raise SqloraError("predict.constrained needs each prompt's schema (constraints)")
    samples = candidates_per_prompt(params)
    longest = max((len(ids) for ids in encoded), default=0) + params.max_new_tokens
    choice = select_engine(model, tokenizer, params, longest, engine)
    if on_engine is not None:
        on_engine(choice)
    runner = _engine(choice, model, tokenizer, params, seed, constraints if params.constrained else None)
    batches = plan_batches(encoded, max(1, params.batch_size // samples), pool_small=runner.pools_small_batches)
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
                elif params.decoding == "beam":  # constrained: the best beam whose aliases resolve
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


def runs(items: list, key) -> list[list]:
    """Consecutive items with equal keys, grouped."""
    grouped: list[list] = []
    for item in items:
        if grouped and key(grouped[-1][-1]) == key(item):
            grouped[-1].append(item)
        else:
            grouped.append([item])
    return grouped


def share_time(rows: list[Row], seconds: float) -> None:
    for row in rows:
        row.seconds += seconds / len(rows)

