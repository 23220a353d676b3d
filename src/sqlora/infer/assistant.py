"""Ask a trained model a question about your own database (a SQLite or DuckDB file, a PostgreSQL URL):
the schema is read from its catalog, the prompt is exactly the training prompt, the SQL (transpiled
from the SQLite the model writes to the engine's dialect) runs read-only in the sandbox.

Bad input (no database, no model, a prompt the model cannot hold) stops before any model is
loaded; the model's SQL is untrusted, so its failure to run is part of the answer, not an error.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

from sqlora.config import SCHEMA_FORMATS, PromptParams
from sqlora.data.catalog import read_schema
from sqlora.data.schema import DatabaseSchema, cell, describe
from sqlora.errors import SqloraError
from sqlora.infer.base import Generation
from sqlora.infer.live import Busy, Sampling, Ticket
from sqlora.sql.engines import Database, open_database


@dataclass(frozen=True)
class Answer:
    sql: str  # the extracted statement ("" when the model wrote none), in SQLite's dialect as trained
    raw: str  # what the model wrote after the prompt
    columns: list[str] | None  # the result's column names; None when the query failed
    rows: list[tuple] | None  # every row of the result; None when the query failed
    error: str | None  # one line from the sandbox: parse/execution error, refusal, timeout
    seconds: float  # generation and execution, without loading the model
    prompt_tokens: int
    hit_max_new_tokens: bool  # the generation was cut: the SQL may be incomplete
    native_sql: str | None = None  # what ran on a DuckDB or PostgreSQL database (transpiled); None on SQLite
    generate_seconds: float = 0.0  # of ``seconds``, the generation's
    new_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Prepared:
    """Everything checked before a model is loaded: the schema, the prompt and its tokens."""

    schema: DatabaseSchema
    database: Database
    prompt: str
    ids: list[int]  # the prompt's token ids, as the model reads it
    context: int  # the model's context length in tokens
    chat_template: bool = False

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)


def trained_prompt(model_dir: str | Path, **overrides) -> PromptParams:
    """The prompt settings ``model_dir`` was trained with (:func:`recorded_prompt`; the defaults for a
    folder that does not record them), with the ``overrides`` that are not None."""
    recorded = recorded_prompt(Path(model_dir))
    known = {f.name for f in fields(PromptParams)}
    settings = {k: v for k, v in recorded.items() if k in known} | {k: v for k, v in overrides.items() if v is not None}
    return PromptParams(**settings)


def recorded_prompt(model_dir: Path) -> dict:
    """The prompt settings a model folder records: a train-stage folder in its ``sqlora_model.json``,
    an export in its ``sqlora_export.json`` (copied from its source's); a plain checkpoint none."""
    import json

    from sqlora.model.export import EXPORT_INFO
    from sqlora.model.loader import is_standalone, read_model_info

    if not is_standalone(model_dir):
        return read_model_info(model_dir).get("prompt") or {}
    path = model_dir / EXPORT_INFO
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise SqloraError(f"{path}: not a valid {EXPORT_INFO} ({exc})") from None
    prompt = info.get("prompt") if isinstance(info, dict) else None
    if prompt is not None and not isinstance(prompt, dict):
        raise SqloraError(f"{path}: 'prompt' must be an object, got {type(prompt).__name__}")
    return prompt or {}


DEFAULT_BASE = Path("models/base")  # the pipeline's base (the model stage's)
OTHER_BASES = Path("models/bases")  # bases of models that are not the pipeline's, e.g. a published adapter's


def resolve_base(model_dir: str | Path, base_dir: str | Path | None = None) -> Path:
    """The base model folder ``model_dir``'s adapter loads on, materialised when missing, decided once for
    ask, serve and export from the model its ``sqlora_model.json`` names (``"model"``).

    ``base_dir`` given: that folder, refused in one line when it holds another model. None: the pipeline's
    ``models/base`` when it holds that model, else ``models/bases/<model>``. Standalone checkpoints and
    full fine-tunes load no base: ``base_dir`` (or ``models/base``) is returned as it is."""
    from sqlora.model.loader import base_model_name, is_standalone, materialize, read_model_info

    model_dir = Path(model_dir)
    if is_standalone(model_dir):  # an export or a plain checkpoint: no base to load
        return Path(base_dir or DEFAULT_BASE)
    info = read_model_info(model_dir)
    wanted = info.get("model")
    if info["method"] == "full" or not isinstance(wanted, str) or not wanted:
        return Path(base_dir or DEFAULT_BASE)
    if base_dir is None:
        base_dir = DEFAULT_BASE if base_model_name(DEFAULT_BASE) == wanted else OTHER_BASES / _folder_name(wanted)
    base_dir = Path(base_dir)
    held = base_model_name(base_dir) if base_dir.exists() else None
    if held is not None and held != wanted:
        raise SqloraError(
            f"{model_dir} was trained on {wanted!r}, but {base_dir} holds {held!r}: "
            f"leave out --base, or pass a folder that holds {wanted!r} (or none yet, to materialise it there)"
        )
    if not base_dir.exists():
        print(f"sqlora: materialising {model_dir}'s base model {wanted!r} in {base_dir}", file=sys.stderr)
        materialize(wanted, base_dir)
    return base_dir


def _folder_name(model: str) -> str:
    """A folder name for a model.name: an alias as it is, a hub id or a path with its separators replaced."""
    return "".join(c if c.isalnum() or c in "-_." else "--" for c in model.strip("/")).lstrip(".") or "model"


def prepare(
    db: str | Path | Database,
    question: str,
    model_dir: str | Path,
    base_dir: str | Path | None = None,
    *,
    prompt: PromptParams | None = None,
    max_new_tokens: int = 128,
) -> Prepared:
    """Check the input and build the training prompt (``prompt``: by default as the model was
    trained, :func:`trained_prompt`); the tokenizer is loaded, the model is not."""
    from sqlora.model.loader import load_tokenizer

    _check_question(question)
    if prompt is not None and prompt.schema_format not in SCHEMA_FORMATS:
        raise SqloraError(f"schema format {prompt.schema_format!r}: expected one of {', '.join(SCHEMA_FORMATS)}")
    if max_new_tokens < 1:
        raise SqloraError(f"max_new_tokens is {max_new_tokens}; expected at least 1")
    database = db if isinstance(db, Database) else open_database(db)
    schema = read_schema(database)  # SqloraError when it has no tables
    prompt = prompt or trained_prompt(model_dir)
    weights_dir = _weights_dir(Path(model_dir), resolve_base(model_dir, base_dir))
    tokenizer = load_tokenizer(weights_dir)
    return _render(database, schema, question, prompt, tokenizer, _context(weights_dir, tokenizer), max_new_tokens)


def _check_question(question: str) -> None:
    if not question.strip():
        raise SqloraError("the question is empty")


def _weights_dir(model_dir: Path, base_dir: Path) -> Path:
    """The folder load_for_inference loads weights and tokenizer from, checked: the model's own for
    full fine-tuning, an export or a plain checkpoint, else the base's."""
    from sqlora.model.loader import check_checkpoint_folder, inference_folders

    _, weights_dir = inference_folders(model_dir, base_dir)
    if weights_dir == model_dir:
        check_checkpoint_folder(weights_dir)
    else:
        check_checkpoint_folder(weights_dir, "base model", "; run the model stage or pass --base")
    return weights_dir


def _context(weights_dir: Path, tokenizer) -> tuple[int, str]:
    from transformers import AutoConfig

    from sqlora.model.loader import context_limit

    return context_limit(AutoConfig.from_pretrained(weights_dir), tokenizer, weights_dir)


def _render(
    database: Database,
    schema: DatabaseSchema,
    question: str,
    prompt: PromptParams,
    tokenizer,
    context: tuple[int, str],
    max_new_tokens: int,
) -> Prepared:
    """The training prompt for ``question`` on ``database``; SqloraError when it does not fit the context."""
    from sqlora.data.prompt import encode_prompt, render_prompt

    instruction = describe(schema, prompt.schema_format, database, prompt.sample_rows)
    # Value hints read SQLite files; elsewhere the question gets the schema alone, as prepare prompts a
    # question whose database file is missing.
    if prompt.values and database.engine == "sqlite":
        from sqlora.data.values import ValueIndex, describe_hints

        hints = describe_hints(ValueIndex.cached(database.location).match(question))
        instruction += "\n" + hints if hints else ""
    text = render_prompt(instruction, question.strip())
    ids = encode_prompt(tokenizer, text, prompt.chat_template)
    n = len(ids)
    limit, source = context
    if n + max_new_tokens > limit:
        raise SqloraError(
            f"the prompt is {n} tokens and max_new_tokens is {max_new_tokens}: {n + max_new_tokens} tokens, "
            f"more than the model's context of {limit} ({source}); ask with fewer --max-new-tokens"
            + (" or --schema-format natural" if prompt.schema_format != "natural" else "")
        )
    return Prepared(schema=schema, database=database, prompt=text, ids=ids, context=limit, chat_template=prompt.chat_template)


def ask(
    db: str | Path | Database,
    question: str,
    model_dir: str | Path = "models/finetuned",
    base_dir: str | Path | None = None,
    *,
    prompt: PromptParams | None = None,
    max_new_tokens: int = 128,
    timeout_s: float = 30.0,
    dtype: str = "auto",
    constrained: bool = False,
) -> Answer:
    """Generate the SQL for ``question`` on the database ``db`` (a path, URL or Database) greedily (in ``dtype``, as
    ``model.dtype``; with ``constrained``, only the schema's tables and columns), and run it read-only.
    ``prompt``: by default as the model was trained; ``base_dir``: see :func:`resolve_base`."""
    base_dir = resolve_base(model_dir, base_dir)
    prepared = prepare(db, question, model_dir, base_dir, prompt=prompt, max_new_tokens=max_new_tokens)
    from sqlora.infer.loading import load_for_inference

    model, tokenizer = load_for_inference(model_dir, base_dir, dtype=dtype)
    return _answer(model, tokenizer, prepared, max_new_tokens, constrained, timeout_s)


def _answer(model, tokenizer, prepared: Prepared, max_new_tokens: int, constrained: bool, timeout_s: float) -> Answer:
    """Generate the SQL of one prepared question and run it."""
    from sqlora.infer.constrained import SchemaNames
    from sqlora.infer.engine import generate

    start = time.perf_counter()
    [generation] = generate(
        model=model,
        tokenizer=tokenizer,
        prompts=[prepared.prompt],
        batch_size=1,
        max_new_tokens=max_new_tokens,
        progress=False,
        chat_template=prepared.chat_template,
        constrained=constrained,
        constraints=[SchemaNames.of(prepared.schema)] if constrained else None,
    )
    return _execute(prepared, generation, timeout_s, start, time.perf_counter() - start)


def _execute(prepared: Prepared, generation: Generation, timeout_s: float, start: float, generate_seconds: float) -> Answer:
    """Run a generation's SQL read-only in the sandbox: the Answer (``start``: when the question came)."""
    database = prepared.database
    result = database.run(generation.sql, timeout_s=timeout_s, names=prepared.schema.names())
    return Answer(
        sql=generation.sql,
        raw=generation.raw,
        columns=result.columns,
        rows=result.rows,
        error=result.error,
        seconds=time.perf_counter() - start,
        prompt_tokens=prepared.prompt_tokens,
        hit_max_new_tokens=generation.hit_max_new_tokens,
        native_sql=None if database.engine == "sqlite" else to_dialect_or_none(generation.sql, database, prepared.schema),
        generate_seconds=generate_seconds,
        new_tokens=generation.new_tokens,
    )


@dataclass(frozen=True)
class Pending:
    """A question submitted to an :class:`Assistant`: its prompt, and the ticket its Generations come on."""

    prepared: Prepared
    ticket: Ticket
    start: float  # perf_counter() when it was submitted


class Assistant:
    """One model, loaded once, answering questions about any database (``sqlora serve``).

    Where our engine runs the model exactly, questions are batched across callers: each joins the running
    batch at its next step (:class:`sqlora.infer.live.LiveEngine`), at most ``max_waiting`` wait for a place,
    and a cancelled one leaves. Otherwise (transformers' generate()) generations take turns, as many
    waiting. ``engine``: as predict.engine (auto: ours where it is exact). Queries run in the caller's
    thread, side by side."""

    def __init__(
        self,
        model_dir: str | Path,
        base_dir: str | Path | None = None,
        *,
        prompt: PromptParams | None = None,
        max_new_tokens: int = 128,
        dtype: str = "auto",
        constrained: bool = False,
        batch_size: int = 16,
        max_waiting: int = 64,
        engine: str = "auto",
    ) -> None:
        from sqlora.infer.engine import select_engine
        from sqlora.infer.live import LiveEngine
        from sqlora.infer.loading import load_for_inference
        from sqlora.infer.plan import DecodingPlan

        if max_new_tokens < 1:
            raise SqloraError(f"max_new_tokens is {max_new_tokens}; expected at least 1")
        base_dir = resolve_base(model_dir, base_dir)
        self.prompt = prompt or trained_prompt(model_dir)
        self.max_new_tokens, self.constrained = max_new_tokens, constrained
        self.batch_size, self.max_waiting = batch_size, max_waiting
        weights_dir = _weights_dir(Path(model_dir), Path(base_dir))
        self.model, self.tokenizer = load_for_inference(model_dir, base_dir, dtype=dtype)
        self.context = _context(weights_dir, self.tokenizer)
        plan = DecodingPlan(decoding="greedy", search="greedy", candidates=1, max_new_tokens=max_new_tokens, batch_size=batch_size)
        self.engine = select_engine(self.model, self.tokenizer, plan, longest=self.context[0], engine=engine)
        self.live = None
        if self.engine.name == "sqlora":
            self.live = LiveEngine(
                self.model,
                self.tokenizer,
                batch_size=batch_size,
                max_waiting=max_waiting,
                max_new_tokens=max_new_tokens,
                constrained=constrained,
            )
        else:
            print(f"sqlora: generations take turns on transformers' generate(): {self.engine.reason}", file=sys.stderr)
        self._turns = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlora-generate")  # the fallback's
        self._queued, self._queued_lock = 0, threading.Lock()  # requests waiting for a turn
        self._references: dict[Database, list[int]] = {}

    def submit(
        self,
        database: Database,
        schema: DatabaseSchema,
        question: str,
        sampling: Sampling | None = None,
        on_text: Callable[[int, str], None] | None = None,
    ) -> Pending:
        """Queue the question (``schema``: ``database``'s, read once by the caller): its Pending, whose
        ticket gives one Generation per choice. ``sampling``: greedy with the assistant's max_new_tokens by
        default; its max_new_tokens is capped by the assistant's. SqloraError for an empty question or a
        prompt longer than the model's context, Busy when the waiting line is full."""
        from sqlora.infer.constrained import SchemaNames

        start = time.perf_counter()
        _check_question(question)
        sampling = sampling or Sampling(max_new_tokens=self.max_new_tokens)
        sampling = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, self.max_new_tokens))
        prepared = _render(database, schema, question, self.prompt, self.tokenizer, self.context, sampling.max_new_tokens)
        names = SchemaNames.of(schema) if self.constrained else None
        if self.live is None:
            return Pending(prepared, self._take_turn(prepared, sampling, names, on_text), start)
        ids = prepared.ids  # encoded once, by _render
        return Pending(prepared, self.live.submit(ids, self._prefix(database, schema, ids), sampling, names, on_text), start)

    def _prefix(self, database: Database, schema: DatabaseSchema, ids: list[int]) -> int:
        """How many of ``ids``' leading tokens every question about ``database`` shares (its schema's)."""
        from sqlora.data.prompt import common_prefix, encode_prompt, render_prompt

        if database not in self._references:
            text = render_prompt(describe(schema, self.prompt.schema_format, database, self.prompt.sample_rows), "")
            self._references[database] = encode_prompt(self.tokenizer, text, self.prompt.chat_template)
        return common_prefix(ids, self._references[database])

    def _take_turn(self, prepared: Prepared, sampling: Sampling, names, on_text) -> Ticket:
        """The fallback: transformers' generate(), one request at a time, at most max_waiting waiting."""
        from sqlora.infer.engine import generate

        with self._queued_lock:
            if self._queued >= self.max_waiting:
                raise Busy(f"{self._queued} requests are waiting already", retry_after=max(1, self.max_new_tokens // 32))
            self._queued += 1
        ticket = Ticket(-1, on_text)
        decoding = {"decoding": "sample", "temperature": sampling.temperature, "top_p": sampling.top_p} if sampling.temperature > 0 else {}
        if sampling.seed is not None:
            decoding["seed"] = sampling.seed

        def work() -> None:
            with self._queued_lock:
                self._queued -= 1
            if ticket.cancelled:
                return
            try:
                generations = generate(
                    model=self.model,
                    tokenizer=self.tokenizer,
                    prompts=[prepared.prompt] * sampling.n,
                    batch_size=sampling.n,
                    max_new_tokens=sampling.max_new_tokens,
                    progress=False,
                    chat_template=prepared.chat_template,
                    constrained=self.constrained,
                    constraints=[names] * sampling.n if self.constrained else None,
                    **decoding,
                )
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who answers for it
                if not ticket.future.done():
                    ticket.future.set_exception(exc)
                return
            if ticket.on_text is not None:
                for k, generation in enumerate(generations):
                    ticket.on_text(k, generation.raw)
            if not ticket.future.done():
                ticket.future.set_result(generations)

        self._turns.submit(work)
        return ticket

    def execute(self, pending: Pending, generations: list[Generation], timeout_s: float = 30.0) -> list[Answer]:
        """Run each generation's SQL read-only: one Answer per choice."""
        generate_seconds = time.perf_counter() - pending.start
        return [_execute(pending.prepared, g, timeout_s, pending.start, generate_seconds) for g in generations]

    def answer(
        self, database: Database, schema: DatabaseSchema, question: str, timeout_s: float = 30.0, max_new_tokens: int | None = None
    ) -> Answer:
        """The greedy SQL for ``question`` on ``database`` and its result, waiting for it (see :meth:`submit`)."""
        pending = self.submit(database, schema, question, Sampling(max_new_tokens=max_new_tokens or self.max_new_tokens))
        return self.execute(pending, pending.ticket.future.result(), timeout_s)[0]

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
        self._turns.shutdown(wait=False, cancel_futures=True)


def to_dialect_or_none(sql: str, database: Database, schema: DatabaseSchema) -> str | None:
    """``sql`` as it runs on ``database``; None when sqlglot cannot read it (the run's error says why)."""
    from sqlora.sql.engines import to_dialect

    try:
        return to_dialect(sql, database.dialect, schema.names())
    except ValueError:
        return None


def format_table(columns: list[str], rows: list[tuple], max_width: int = 40) -> str:
    """A plain-text table (tabulate's presto format): header, rule, rows; numbers right-aligned, long
    cells cut to ``max_width``, NULL for None."""
    from tabulate import tabulate

    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(columns))]
    cells = [[cell(v, max_width) for v in row] for row in rows]
    align = ["right" if n else "left" for n in numeric] if columns else None
    return tabulate(cells, headers=columns, tablefmt="presto", colalign=align, disable_numparse=True)
