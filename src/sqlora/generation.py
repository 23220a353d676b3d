"""SQL generation: load a model folder, generate for many questions at once, extract the SQL.

How the batched path spends less per question than one ``model.generate()`` call per prompt
(``make bench-predict``: about 8x on 2 CPU cores, the same greedy SQL):

- **shared prefixes**: Text-to-SQL prompts of one database differ only in their last few tokens (the
  question); most of the prompt is the instruction and the schema. Prompts are grouped by the tokens
  they share; a group's prefix runs through the model once, and its keys/values are kept once:
  attention reads them in place for every row of the group (``_shared_prefix_attention``), so per
  question only its own tail is computed and cached (positions counted as if contiguous).
- **continuous batching**: a row that wrote EOS or a complete SQL statement (``sql_complete``)
  leaves the batch (and the KV cache) at once, and the next questions join in its place, so steps
  run full batches; on a CPU a step of 64 rows costs about what 6 steps of one row cost. A row that
  never ends stops at ``max_new_tokens`` and says so (``hit_max_new_tokens``).
- **KV cache in place** (``_Columns``: appending a token copies nothing), inference mode, one
  forward pass per step for the whole batch.

greedy, sample and self_consistency (``num_samples`` sampled rows per question, sharing that
question's prefill) run in that loop; beam search runs through transformers' ``generate()``, with
the same end-of-statement criterion (:class:`SqlEnd`) ending each beam. Greedy is the argmax of the
same logits ``generate()`` computes, so it writes what ``generate()`` writes one prompt at a time,
up to floating-point near-ties between different batch shapes (the benchmark checks it).
Models with sliding-window layers (or not on transformers' SDPA attention) get the same batches
without joining rows or attending in place: a batch runs until its last row is done.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Collection, Iterator

import torch
from tqdm import tqdm
from transformers import StoppingCriteria
from transformers.cache_utils import DynamicLayer

from sqlora.config import PredictParams
from sqlora.errors import SqloraError
from sqlora.models import MODEL_INFO, device, load_base_model, load_tokenizer, read_model_info
from sqlora.prompt import encode_prompt

STATUSES = ("ok", "empty", "unparseable")
NUCLEUS_K = 256  # sampling: top_p is looked for among this many most probable tokens first
PREFILL_ROWS = 8  # questions per prefill pass when rows join: enough rows for efficient matmuls, little padding


@dataclass(frozen=True)
class Generation:
    sql: str  # the extracted statement, one line ("" when nothing usable came out)
    raw: str  # what the model wrote after the prompt (up to where it stopped)
    new_tokens: int
    hit_max_new_tokens: bool  # cut by max_new_tokens before EOS or the end of a statement
    status: str = "ok"  # ok | empty | unparseable (not one SQL query)
    stop: str = "eos"  # eos | sql_end | max_new_tokens
    decoding: str = "greedy"
    # Timings (not part of what two generations are compared on):
    batch_seconds: float = field(default=0.0, compare=False)  # its batch of prompts: the sum of their `seconds`
    seconds: float = field(default=0.0, compare=False)  # its share of the forward passes it took part in
    candidates: tuple[Generation, ...] = field(default=())  # self_consistency: the sampled candidates


# --- the model -------------------------------------------------------------------------------


def load_for_inference(finetuned_dir: str | Path, base_dir: str | Path | None = None):
    """The model a folder holds, with its tokenizer, ready to generate.

    A train-stage folder (``sqlora_model.json``): base + LoRA adapter (merged into the weights: the
    same model without the adapter's extra matmuls at every step), base + QLoRA adapter (kept
    apart: merging into 4-bit weights would re-quantise them), a full checkpoint, or the base
    alone. Any other folder with a ``config.json`` — an export (``sqlora export``), a plain Hugging
    Face checkpoint — is a standalone model.
    """
    finetuned_dir = Path(finetuned_dir)
    if not (finetuned_dir / MODEL_INFO).is_file() and (finetuned_dir / "config.json").is_file():
        method, weights_dir, tokenizer_dir = "full", finetuned_dir, finetuned_dir
    else:
        method = read_model_info(finetuned_dir)["method"]
        if method != "full" and base_dir is None:
            raise SqloraError(f"{finetuned_dir}: method {method!r} needs its base model folder")
        weights_dir = finetuned_dir if method == "full" else Path(base_dir)
        tokenizer_dir = weights_dir
    model = load_base_model(weights_dir, "full" if method == "full" else method)
    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except (OSError, ValueError) as exc:
        raise SqloraError(f"{tokenizer_dir}: no usable tokenizer ({' '.join(str(exc).split())[:200]})") from None
    if method in ("lora", "qlora"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, finetuned_dir)
        if method == "lora":
            model = model.merge_and_unload()
    if method != "qlora":  # a 4-bit model was loaded onto its device
        model = model.to(device())
    model.eval()
    _pack_linear_layers(model)
    return model, tokenizer


def _pack_linear_layers(module: torch.nn.Module) -> None:
    """On the CPU in float32, every plain ``nn.Linear`` becomes oneDNN's (``MkldnnLinear``), its weight
    reordered once into the layout oneDNN's matmul reads fastest. Generation multiplies small
    matrices (one to a few hundred rows) by the weights, where this runs 1.4-2x faster than MKL's
    sgemm on the same float32 numbers; training keeps plain layers (it needs their gradients)."""
    import warnings

    with warnings.catch_warnings():  # the module is TorchScript, whose decorators are deprecated in torch 2.13
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from torch.utils.mkldnn import MkldnnLinear
        except ImportError:  # a torch without it: MKL's layers, same results, slower
            return
    if not torch.backends.mkldnn.is_available() or any(
        p.device.type != "cpu" or p.dtype != torch.float32 for p in module.parameters()
    ):
        return
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear:
                setattr(parent, name, MkldnnLinear(child, torch.float32))


def context_limit(model, tokenizer) -> tuple[int, str]:
    """Tokens the model can attend to, and where that number comes from."""
    limits = []
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "max_position_embeddings", None):
        limits.append((int(config.max_position_embeddings), "max_position_embeddings"))
    if 0 < (getattr(tokenizer, "model_max_length", 0) or 0) < 10**9:  # "no limit" is a huge sentinel
        limits.append((int(tokenizer.model_max_length), "the tokenizer's model_max_length"))
    return min(limits) if limits else (10**9, "no limit known")


# --- where the SQL ends ----------------------------------------------------------------------

# A statement ends at ";", at a "###" section the model starts on its own, at chat residue ("<|")…
_HARD_END = re.compile(r";|###|<\|")
# …and at a blank line or a code fence, except in prose before a fenced block ("Here it is:\n\n```sql").
_BLANK_LINE = re.compile(r"\n\s*\n")
_FENCE = "```"
_FENCE_LANGUAGE = re.compile(r"(?:sqlite|sql)?", re.I)
_SQL_START = re.compile(
    r"\(*\s*(?:select|with|values|insert|update|delete|create|drop|alter|pragma|explain|replace)(?=\W)", re.I
)
# In a SELECT statement, a line opening another SELECT outside parentheses, not after UNION/INTERSECT/
# EXCEPT [ALL]: the model starts a second statement without ending the first. (?=\W), not \b: at the
# end of the text "SELECT" may still grow into "SELECTED".
_NEW_STATEMENT = re.compile(r"\n\s*select(?=\W)", re.I)
_STARTS_SELECT = re.compile(r"\s*\(*\s*select\b", re.I)
_CONTINUES = re.compile(r"(?:\b(?:union|intersect|except|all|as)|\()\s*$", re.I)


def _first(text: str, in_sql: bool) -> int | None:
    """Where the statement at the start of ``text`` ends, if it does yet."""
    ends = [m.start() for m in (_HARD_END.search(text), _BLANK_LINE.search(text)) if m]
    if in_sql:
        if _FENCE in text:
            ends.append(text.index(_FENCE))
        for m in _NEW_STATEMENT.finditer(text) if _STARTS_SELECT.match(text) else ():
            before = text[: m.start()]
            if before.count("(") <= before.count(")") and not _CONTINUES.search(before):
                ends.append(m.start())
                break
    return min(ends) if ends else None


def _statement(text: str) -> tuple[str, bool]:
    """The first SQL statement of a generation, and whether it is final: no continuation can change it.

    The rules read the text left to right, so once final the answer stays the same however the
    generation goes on; that is what lets :class:`SqlEnd` stop a row there without changing its SQL:
    - text opening with SQL: the statement runs to the first ";", blank line, "###", "<|", fence, or
      line opening another SELECT outside parentheses;
    - prose followed by a fenced block (no ";", "###", "<|" before it): the block's content, to its
      closing fence or one of those ends;
    - other prose: the text up to those ends (final once a ";", "###" or "<|" rules out a block).
    """
    text = text.lstrip()
    fence = text.find(_FENCE)
    head = text if fence < 0 else text[:fence]
    start = _SQL_START.match(text)
    if start and (fence < 0 or start.end() <= fence):
        end = _first(text, in_sql=True)
        body = text if end is None else text[:end]
        return " ".join(body.split()), end is not None
    if fence >= 0 and not _HARD_END.search(head):
        body = text[fence + len(_FENCE) :]
        body = body[_FENCE_LANGUAGE.match(body).end() :].lstrip()
        end = _first(body, in_sql=True)
        return " ".join((body if end is None else body[:end]).split()), end is not None
    end = _first(head, in_sql=False)
    return " ".join((head if end is None else head[:end]).split()), _HARD_END.search(head) is not None


def extract_sql(text: str) -> str:
    """The first SQL statement of a generation, on one line: code fences, chat residue and trailing text removed."""
    return _statement(text)[0]


def sql_complete(text: str) -> bool:
    """True once more generated text cannot change ``extract_sql(text)``: the row may stop."""
    return _statement(text)[1]


def sql_status(sql: str) -> str:
    """ok: one SQL query sqlglot parses; empty: nothing came out; unparseable: anything else."""
    if not sql:
        return "empty"
    from sqlglot import exp

    from sqlora.hardness import parse_statement

    try:
        return "ok" if isinstance(parse_statement(sql), (exp.Query, exp.Values)) else "unparseable"
    except ValueError:
        return "unparseable"


class SqlEnd(StoppingCriteria):
    """Per row: done once the text generated after the prompt holds a complete statement."""

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor([sql_complete(t) for t in texts], dtype=torch.bool, device=input_ids.device)


# --- attention to a shared prefix --------------------------------------------------------------

SHARED_PREFIX_ATTENTION = "sqlora_shared_prefix"


def _shared_prefix_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, shared_prefix=None, **kwargs
):
    """Attention over [a prefix shared by a run of rows][each row's own keys], the prefix stored once.

    ``shared_prefix``: (rows, prefix cache) pairs covering the batch, rows a slice. Each row's queries
    meet its prefix in one matmul per key/value head for the whole run, instead of every row holding
    (and reading) its own copy of the prefix; one softmax spans both parts. Without ``shared_prefix``
    this is transformers' SDPA attention, unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if shared_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads  # query heads per key/value head (grouped-query attention)
    scale = scaling if scaling is not None else dim**-0.5
    queries = (query * scale).reshape(batch, kv_heads, group * length, dim)
    own = torch.matmul(queries, key.transpose(-1, -2)).float()  # [batch, kv_heads, group*length, own keys]
    bias = _mask_bias(attention_mask, length, key.shape[2], group, query.device)
    if bias is not None:
        own = own + bias
    out = query.new_empty((batch, kv_heads, group * length, dim))
    for rows, prefix in shared_prefix:
        part = own[rows]
        if prefix is None:
            out[rows] = torch.matmul(torch.softmax(part, dim=-1).to(value.dtype), value[rows])
            continue
        shared_keys, shared_values = prefix.layers[module.layer_idx].keys[0], prefix.layers[module.layer_idx].values[0]
        n, width = part.shape[0], shared_keys.shape[1]
        flat = queries[rows].transpose(0, 1).reshape(kv_heads, n * group * length, dim)
        scores = torch.matmul(flat, shared_keys.transpose(-1, -2)).float()
        scores = scores.reshape(kv_heads, n, group * length, width).transpose(0, 1)
        probs = torch.softmax(torch.cat([scores, part], dim=-1), dim=-1).to(value.dtype)
        to_prefix = probs[..., :width].transpose(0, 1).reshape(kv_heads, n * group * length, width)
        from_prefix = torch.matmul(to_prefix, shared_values).reshape(kv_heads, n, group * length, dim).transpose(0, 1)
        out[rows] = from_prefix + torch.matmul(probs[..., width:], value[rows])
    return out.reshape(batch, heads, length, dim).transpose(1, 2).contiguous(), None


_last_mask: list = [None, None]  # (mask, bias) of the last call: every layer of a forward pass gets the same mask


def _mask_bias(attention_mask, length: int, keys: int, group: int, dev) -> torch.Tensor | None:
    """The attention mask as an additive float bias shaped for the grouped queries, made once per
    forward pass (not once per layer)."""
    if attention_mask is None and length == 1:
        return None
    mask, bias = _last_mask
    if mask is not None and mask is attention_mask and bias.shape[-2] == group * length:
        return bias
    if attention_mask is None:  # SDPA's mask skipped as plain causal: make it explicit
        attention_mask = torch.ones(length, keys, dtype=torch.bool, device=dev).tril(keys - length)[None, None]
    expanded = attention_mask[:, :, None].expand(-1, -1, group, -1, -1).reshape(attention_mask.shape[0], 1, group * length, -1)
    if expanded.dtype == torch.bool:
        expanded = torch.zeros(expanded.shape, dtype=torch.float32, device=dev).masked_fill_(~expanded, float("-inf"))
    # Holding the mask keeps its id from being reused by another tensor while the bias is kept.
    _last_mask[:] = [attention_mask, expanded.float()]
    return _last_mask[1]


def _register_shared_prefix_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SHARED_PREFIX_ATTENTION, _shared_prefix_attention)
    AttentionMaskInterface.register(SHARED_PREFIX_ATTENTION, sdpa_mask)


# --- batches ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    number: int  # position in the plan
    indexes: list[int]  # prompts in this batch
    prefix: int  # leading tokens all its prompts share, computed once (0: none)


def _common_prefix(a: list[int], b: list[int]) -> int:
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
        if _common_prefix(encoded[a], encoded[b]) * 2 >= min(len(encoded[a]), len(encoded[b])):
            groups[-1].append(b)
        else:
            groups.append([b])
    chunks: list[tuple[list[int], int]] = []  # (indexes, shared prefix)
    pool: list[int] = []
    for group in groups:
        # The group's common prefix (that of its lexicographic extremes) is used by all its batches,
        # so it is computed once for the group.
        shared = _common_prefix(encoded[group[0]], encoded[group[-1]])
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
        chunks.append((chunk, min(_common_prefix(encoded[chunk[0]], encoded[i]) for i in chunk)))
    # Every row keeps at least one token of its own to run (it gives the first logits).
    return [
        Batch(number=n, indexes=chunk, prefix=max(0, min(shared, *(len(encoded[i]) - 1 for i in chunk))))
        for n, (chunk, shared) in enumerate(chunks)
    ]


# --- generation ------------------------------------------------------------------------------


def generate(
    model,
    tokenizer,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int,
    progress: bool = True,
    chat_template: bool = False,
    **decoding,
) -> list[Generation]:
    """One Generation per prompt, in input order (greedy unless ``decoding`` says otherwise:
    the other PredictParams fields, e.g. ``decoding="beam", num_beams=4``; ``seed`` for sampling)."""
    seed = decoding.pop("seed", 42)
    params = PredictParams(batch_size=batch_size, max_new_tokens=max_new_tokens, **decoding)
    results: dict[int, Generation] = {}
    for batch in iter_generate(model, tokenizer, prompts, params, seed=seed, chat_template=chat_template, progress=progress):
        results.update(batch)
    return [results[i] for i in range(len(prompts))]


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
) -> Iterator[dict[int, Generation]]:
    """Generate, yielding each finished batch's {prompt index: Generation} (in the order batches finish).

    The batches depend on the prompts and ``params`` only; batches whose prompts are all in
    ``skip`` (done by an earlier, interrupted run) are left out. Sampling draws from one random
    stream per question and candidate, seeded by ``seed`` and the question's index, so what a
    question gets does not depend on the other questions or on what was skipped.
    """
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    encoded = encode_all(model, tokenizer, prompts, params.max_new_tokens, chat_template)
    samples = params.num_samples if params.decoding == "self_consistency" else 1
    engine = _Engine(model, tokenizer, params, seed)
    alone = not engine.can_join or params.decoding == "beam"  # batches that run alone: no rows join them
    batches = plan_batches(encoded, max(1, params.batch_size // samples), pool_small=alone)
    skip = set(skip)
    todo = [b for b in batches if not set(b.indexes) <= skip]
    with tqdm(total=sum(len(b.indexes) for b in todo), desc="predict", unit="q", disable=not progress) as bar:
        runs = engine.beam(todo, encoded) if params.decoding == "beam" else engine.stream(todo, encoded, samples)
        for batch, rows in _attention(model, SHARED_PREFIX_ATTENTION if engine.share else None, runs):
            by_question: dict[int, list[_Row]] = {}
            for row in sorted(rows, key=lambda r: (r.index, r.sample)):
                by_question.setdefault(row.index, []).append(row)
            batch_seconds = sum(r.seconds for r in rows)
            out = {}
            for index, mine in by_question.items():
                seconds = sum(r.seconds for r in mine)
                generations = [engine.finish(r, batch_seconds, seconds) for r in mine]
                out[index] = generations[0] if samples == 1 else replace(generations[0], candidates=tuple(generations))
            bar.update(len(batch.indexes))
            yield out


@dataclass
class _Row:
    index: int  # the prompt's
    sample: int  # candidate number (self_consistency), else 0
    batch: Batch
    tokens: list[int] = field(default_factory=list)
    stop: str = "max_new_tokens"  # eos | sql_end | max_new_tokens
    seconds: float = 0.0  # its share of the wall time of the forward passes it was part of
    generator: torch.Generator | None = None  # its own random stream (sampling)
    prefix: object = None  # the KV cache of its shared prefix, when attention reads it in place


class _Engine:
    def __init__(self, model, tokenizer, params: PredictParams, seed: int):
        from transformers import DynamicCache

        self.model, self.tokenizer, self.params, self.seed = model, tokenizer, params, seed
        self.dev = model.device
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos = {t for t in [*eos, tokenizer.eos_token_id] if t is not None}
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.prefix_key: tuple[int, ...] | None = None
        self.prefix_cache = None
        self.sampling = params.decoding in ("sample", "self_consistency")
        # Rows join a running batch by padding keys/values on the left: plain full-attention cache
        # layers only (a sliding-window layer keeps a window, not every position); otherwise a new
        # batch starts when the last one is done.
        self.can_join = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
        # The shared prefix is attended to in place (see _shared_prefix_attention) when the model runs
        # transformers' SDPA attention; otherwise it is copied into every row.
        self.share = (
            self.can_join and getattr(model.config, "_attn_implementation", None) == "sdpa"
            and hasattr(model, "set_attn_implementation")
        )

    def finish(self, row: _Row, batch_seconds: float, seconds: float) -> Generation:
        raw = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        sql = extract_sql(raw)
        return Generation(
            sql=sql,
            raw=raw,
            new_tokens=len(row.tokens),
            hit_max_new_tokens=row.stop == "max_new_tokens",
            status=sql_status(sql),
            stop=row.stop,
            decoding=self.params.decoding,
            batch_seconds=round(batch_seconds, 4),
            seconds=round(seconds, 4),
        )

    def _prefix(self, ids: list[int]):
        """The KV cache of a prefix (one row), computed once while consecutive rows share it. Read-only."""
        from transformers import DynamicCache

        key = tuple(ids)
        if key != self.prefix_key:
            cache = DynamicCache(config=self.model.config)
            if ids:
                ids_tensor = torch.tensor([ids], device=self.dev)
                self.model(input_ids=ids_tensor, past_key_values=cache, use_cache=True, logits_to_keep=1)
            self.prefix_key, self.prefix_cache = key, cache
        return self.prefix_cache

    def _prefill(self, rows: list[_Row], encoded: list[list[int]], samples: int):
        """Cache, mask, positions and first logits of questions sharing one prefix (``samples`` rows each)."""
        from transformers.cache_utils import Cache

        prefix = rows[0].batch.prefix
        prompts = [encoded[r.index] for r in rows[::samples]]
        shared = self._prefix(prompts[0][:prefix])
        width = max(len(p) for p in prompts) - prefix
        ids = torch.tensor([[self.pad] * (width - len(p) + prefix) + p[prefix:] for p in prompts], device=self.dev)
        # Each row: [shared prefix][left padding][own tail]; positions skip the padding.
        mask = torch.tensor(
            [[1] * prefix + [0] * (width - len(p) + prefix) + [1] * (len(p) - prefix) for p in prompts], device=self.dev
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {}
        if self.share:  # the cache and the mask hold the rows' own tokens; attention adds the prefix
            for row in rows:
                row.prefix = shared if prefix else None
            cache = Cache(layers=[_Columns() for _ in shared.layers])
            mask = mask[:, prefix:]
            extra["shared_prefix"] = [(slice(0, len(prompts)), rows[0].prefix)]
        elif self.can_join:
            cache = Cache(layers=[_Columns() for _ in shared.layers])
            if prefix:
                for layer, source in zip(cache.layers, shared.layers):
                    layer.update(source.keys.expand(len(prompts), -1, -1, -1), source.values.expand(len(prompts), -1, -1, -1))
        else:
            cache = copy.deepcopy(shared)
            if len(prompts) > 1 and prefix:
                cache.batch_repeat_interleave(len(prompts))
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions[:, prefix:], past_key_values=cache,
            use_cache=True, logits_to_keep=1, **extra,
        ).logits[:, -1].float()
        last = positions[:, -1]
        if samples > 1:  # the candidates of a question share its prefill
            cache.batch_repeat_interleave(samples)
            logits, mask, last = (t.repeat_interleave(samples, dim=0) for t in (logits, mask, last))
        return cache, mask, last, logits

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """Greedy: the argmax. Sampling: temperature, then the nucleus (the fewest most probable tokens
        holding ``top_p`` of the mass, as transformers' TopPLogitsWarper), then one uniform draw per row
        from the row's own random stream (inverse CDF)."""
        if not self.sampling:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / self.params.temperature, dim=-1)
        top_p = self.params.top_p
        if top_p >= 1:
            values, indexes = probs, None
        else:
            # Sorting the whole vocabulary every step costs a quarter of a step; the nucleus is nearly
            # always within the top NUCLEUS_K tokens: sort all only when it is not.
            values, indexes = probs.topk(min(NUCLEUS_K, probs.shape[-1]), dim=-1)
            if not bool((values.sum(dim=-1) >= top_p).all()):
                values, indexes = probs.sort(dim=-1, descending=True)
            values = values * ((values.cumsum(dim=-1) - values) < top_p)
        cdf = values.cumsum(dim=-1)
        draws = torch.tensor([float(torch.rand((), generator=r.generator)) for r in rows], device=self.dev)
        picks = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None]).clamp(max=cdf.shape[-1] - 1)
        return picks.squeeze(1) if indexes is None else indexes.gather(1, picks).squeeze(1)

    def stream(self, batches: list[Batch], encoded: list[list[int]], samples: int) -> Iterator[tuple[Batch, list[_Row]]]:
        """Continuous batching: up to ``batch_size`` rows generate together; as rows finish, the next
        questions (in plan order) join, so steps keep a full batch instead of trailing off.

        Every row's keys/values sit right-aligned in one cache (its own tokens; its prefix too where
        attention cannot read the shared one in place), padded and masked on the left; joining pads
        whichever side is shorter, and columns no row uses any more are cropped as rows leave.
        """
        capacity = max(self.params.batch_size, samples)
        queue = [
            _Row(index=i, sample=k, batch=b, generator=self._generator(i, k) if self.sampling else None)
            for b in batches for i in b.indexes for k in range(samples)
        ]
        queue.reverse()  # pop() from the end: plan order
        left = {b.number: len(b.indexes) * samples for b in batches}
        done: dict[int, list[_Row]] = {b.number: [] for b in batches}
        rows: list[_Row] = []
        cache = mask = last = logits = None
        while queue or rows:
            free = capacity - len(rows)
            # Join when the batch is empty, or when enough room is free to make a prefill pass worth it.
            if queue and (not rows or (self.can_join and (free >= max(samples, capacity // 4) or free >= len(queue)))):
                joining = [queue.pop() for _ in range(min(free - free % samples, len(queue)))]
                groups = _runs(joining, key=lambda r: (r.batch.prefix, tuple(encoded[r.index][: r.batch.prefix])))
                if self.can_join:
                    # Prefill in chunks of PREFILL_ROWS questions (sorted by length in the plan): each chunk
                    # is padded to its own longest tail, not to the group's.
                    size = PREFILL_ROWS * samples
                    chunks = [g[i : i + size] for g in groups for i in range(0, len(g), size)]
                else:  # one prefill pass, one prefix: this batch runs alone until it is done
                    queue += reversed([row for group in groups[1:] for row in group])
                    chunks = groups[:1]
                parts = [] if cache is None else [(cache, mask, last, logits)]
                for group in chunks:
                    start = time.perf_counter()
                    parts.append(self._prefill(group, encoded, samples))
                    _share(group, time.perf_counter() - start)
                    rows += group
                cache, mask, last, logits = parts[0] if len(parts) == 1 else _join(parts)
            tokens = self._choose(logits, rows)
            keep = []
            for k, (row, token) in enumerate(zip(rows, tokens.tolist())):
                row.tokens.append(token)
                if token in self.eos:
                    row.stop = "eos"
                elif sql_complete(self.tokenizer.decode(row.tokens, skip_special_tokens=True)):
                    row.stop = "sql_end"
                elif len(row.tokens) < self.params.max_new_tokens:
                    keep.append(k)
                    continue
                done[row.batch.number].append(row)
                left[row.batch.number] -= 1
                if not left[row.batch.number]:
                    yield row.batch, done.pop(row.batch.number)
            if len(keep) < len(rows):  # finished rows leave the batch and the cache
                index = torch.tensor(keep, dtype=torch.long, device=self.dev)
                cache.batch_select_indices(index)
                mask, last, tokens = mask[index], last[index], tokens[index]
                rows = [rows[k] for k in keep]
                if not rows:
                    cache = mask = last = logits = None
                    continue
                used = int(mask.any(dim=0).to(torch.int8).argmax())  # leading columns no row attends to
                if used and self.can_join:
                    for layer in cache.layers:
                        layer.crop_left(used)
                    mask = mask[:, used:]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            last = last + 1
            start = time.perf_counter()
            extra = {"shared_prefix": [(slice(run[0], run[-1] + 1), rows[run[0]].prefix) for run in _runs(
                list(range(len(rows))), key=lambda k: id(rows[k].prefix))]} if self.share else {}
            logits = self.model(
                input_ids=tokens[:, None], attention_mask=mask, position_ids=last[:, None], past_key_values=cache,
                use_cache=True, **extra,
            ).logits[:, -1].float()
            _share(rows, time.perf_counter() - start)

    def _generator(self, index: int, sample: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + index) * 1_009 + sample)

    def beam(self, batches: list[Batch], encoded: list[list[int]]) -> Iterator[tuple[Batch, list[_Row]]]:
        """Beam search through transformers' generate(), left-padded, each beam ended by EOS or SqlEnd."""
        from transformers import StoppingCriteriaList

        for batch in batches:
            start = time.perf_counter()
            padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch.indexes]}, return_tensors="pt")
            width = padded["input_ids"].shape[1]
            output = self.model.generate(
                input_ids=padded["input_ids"].to(self.dev),
                attention_mask=padded["attention_mask"].to(self.dev),
                max_new_tokens=self.params.max_new_tokens,
                do_sample=False,
                num_beams=self.params.num_beams,
                num_return_sequences=1,
                pad_token_id=self.pad,
                eos_token_id=sorted(self.eos),
                stopping_criteria=StoppingCriteriaList([SqlEnd(self.tokenizer, width)]),
            )
            rows = []
            for index, ids in zip(batch.indexes, output[:, width:].tolist()):
                end = next((n for n, t in enumerate(ids) if t in self.eos or t == self.pad), len(ids))
                # SqlEnd stops a beam as soon as its statement is complete: an EOS (or pad) after a complete
                # statement is the padding of a stopped beam, not something the model wrote.
                if sql_complete(self.tokenizer.decode(ids[:end], skip_special_tokens=True)):
                    rows.append(_Row(index=index, sample=0, batch=batch, tokens=ids[:end], stop="sql_end"))
                elif end < len(ids) and ids[end] in self.eos:
                    rows.append(_Row(index=index, sample=0, batch=batch, tokens=ids[: end + 1], stop="eos"))
                else:
                    rows.append(_Row(index=index, sample=0, batch=batch, tokens=ids[:end]))
            _share(rows, time.perf_counter() - start)
            yield batch, rows


def _attention(model, implementation: str | None, items: Iterator):
    """``items``, produced while the model runs ``implementation`` (None: as it is); restored after."""
    if implementation is None:
        yield from items
        return
    _register_shared_prefix_attention()
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        for item in items:
            model.set_attn_implementation(before)  # the caller may use the model between two batches
            yield item
            model.set_attn_implementation(implementation)
    finally:
        model.set_attn_implementation(before)


def _runs(items: list, key) -> list[list]:
    """Consecutive items with equal keys, grouped."""
    runs: list[list] = []
    for item in items:
        if runs and key(runs[-1][-1]) == key(item):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _share(rows: list[_Row], seconds: float) -> None:
    for row in rows:
        row.seconds += seconds / len(rows)


def _join(parts: list[tuple]) -> tuple:
    """Running batches (cache, mask, last positions, logits) as one: each right-aligned to the
    longest, padded and masked on the left, stacked along the batch."""
    width = max(mask.shape[1] for _, mask, _, _ in parts)
    caches = [cache for cache, _, _, _ in parts]
    for layers in zip(*(cache.layers for cache in caches)):
        layers[0].stack(list(layers), width)
    masks = [torch.nn.functional.pad(mask, (width - mask.shape[1], 0)) for _, mask, _, _ in parts]
    return caches[0], torch.cat(masks), torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts])


class _Columns(DynamicLayer):
    """A full-attention cache layer whose keys/values are views of a larger buffer.

    Appending a token and cropping on the left move no data; DynamicLayer concatenates instead,
    copying the whole cache at every step, which at 64 rows costs a quarter of a step on the CPU.
    Padding is zeros (masked, but it must be finite: 0 x NaN is NaN).
    """

    ROOM = 64  # columns kept free on the right; a full buffer is reallocated with this much more

    def _set(self, keys: torch.Tensor, values: torch.Tensor, room: int = ROOM) -> None:
        """New buffers holding ``keys``/``values``, with ``room`` columns after them (written before read)."""
        batch, heads, length, dim = keys.shape
        self._k = keys.new_empty((batch, heads, length + room, dim))
        self._v = values.new_empty(self._k.shape)
        self._k[:, :, :length] = keys
        self._v[:, :, :length] = values
        self._start, self._end = 0, length
        self._view()

    def _view(self) -> None:
        self.keys = self._k[:, :, self._start : self._end]
        self.values = self._v[:, :, self._start : self._end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._set(key_states, value_states)
            return self.keys, self.values
        n = key_states.shape[-2]
        if self._end + n > self._k.shape[2]:
            self._set(self.keys, self.values, room=max(self.ROOM, n))
        self._k[:, :, self._end : self._end + n] = key_states
        self._v[:, :, self._end : self._end + n] = value_states
        self._end += n
        self._view()
        return self.keys, self.values

    def crop_left(self, columns: int) -> None:
        self._start += columns
        self._view()

    def stack(self, layers: list["_Columns"], width: int) -> None:
        """Become ``layers`` (self among them) stacked along the batch, each right-aligned to ``width``
        columns with zeros on the left."""
        rows = sum(layer.keys.shape[0] for layer in layers)
        _, heads, _, dim = self.keys.shape
        keys = self.keys.new_empty((rows, heads, width + self.ROOM, dim))
        values = self.values.new_empty(keys.shape)
        row = 0
        for layer in layers:
            n, length = layer.keys.shape[0], layer.keys.shape[2]
            keys[row : row + n, :, : width - length] = 0
            values[row : row + n, :, : width - length] = 0
            keys[row : row + n, :, width - length : width] = layer.keys
            values[row : row + n, :, width - length : width] = layer.values
            row += n
        self._k, self._v, self._start, self._end = keys, values, 0, width
        self._view()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]  # one gather, room included
        self._view()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._set(self.keys.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        self._end -= abs(tokens_to_remove)
        self._view()
