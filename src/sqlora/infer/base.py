"""What both engines share (the base of :mod:`sqlora.infer.engine`'s two): a :class:`Generation` per
prompt, the :class:`Batch` plan and the :class:`Row` being generated, and the :class:`Engine` base class
with its stop tokens and the step that turns a finished row into a Generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from sqlora.infer.plan import DecodingPlan
from sqlora.infer.sql_text import extract_sql, sql_status


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


@dataclass(frozen=True)
class FastPathProblem:
    reason: str  # why our engine does not run this model, for the predict log
    window: int | None = None  # the problem does not arise for rows of at most this many tokens


class Engine:
    """What both engines share: the stop tokens, the padding token, turning rows into Generations."""

    name = ""

    def __init__(self, model, tokenizer, plan: DecodingPlan, seed: int, constraints: list | None = None):
        self.model, self.tokenizer, self.plan, self.seed = model, tokenizer, plan, seed
        self.dev = model.device
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos = {t for t in [*eos, tokenizer.eos_token_id] if t is not None}
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
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
            sql=sql,
            raw=raw,
            new_tokens=len(row.tokens),
            hit_max_new_tokens=row.stop == "max_new_tokens",
            tokens=tuple(row.tokens),
            status=sql_status(sql),
            stop=row.stop,
            decoding=self.plan.decoding,
            constraint=constraint,
            engine=self.name,
            dtype=self.dtype,
            batch_seconds=round(batch_seconds, 4),
            seconds=round(seconds, 4),
        )


# --- which engine -------------------------------------------------------------------------------------


def share_time(rows: list[Row], seconds: float) -> None:
    for row in rows:
        row.seconds += seconds / len(rows)
