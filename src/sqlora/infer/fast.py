"""Our generation engine, for greedy decoding, sampling and their mix (execution_guided's candidates): about 4x transformers' batched ``generate()``
on a CPU (``make bench-predict``), and exact: the logits it chooses from are the model's own.

- **shared prefixes**: Text-to-SQL prompts of one database differ only in their last tokens (the
  question); most of the prompt is the instruction and the schema. Prompts are grouped by the tokens
  they share; a group's prefix runs through the model once, its keys/values are kept once, and
  attention reads them in place for every row of the group (:func:`shared_prefix_attention`), so per
  question only its own tail is computed and cached. Positions count as if contiguous, and a sliding
  window is applied over the prefix by those positions.
- **continuous batching**: a row that wrote EOS or a complete SQL statement leaves the batch (and
  the KV cache) at once, and the next questions join in its place, so steps run full batches; on a
  CPU a step of 64 rows costs about what 6 steps of one row cost.
- **KV cache in place** (:class:`_InPlaceKVLayer`: appending a token copies nothing), inference mode, one
  forward pass per step for the whole batch.

It runs a model only where that is exact (:func:`fast_path_problem`): attention that goes through
transformers' AttentionInterface (our attention function replaces the model's sdpa or eager one),
plain per-layer KV caches (full or sliding-window), every sliding window passed to attention, and
a probe forward whose logits match the model's own.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import groupby
from typing import Iterator

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from sqlora.infer.base import Batch, Engine, FastPathProblem, Row, share_time
from sqlora.infer.constrained import RowConstraint
from sqlora.infer.plan import DecodingPlan
from sqlora.infer.sql_text import sql_complete
from sqlora.model.attention import OurAttention, base_of, probe_tolerance, routing_problem, windows_problem

SHARED_PREFIX_ATTENTION = "sqlora_shared_prefix"
NUCLEUS_K = 256  # sampling: top_p is looked for among this many most probable tokens first
PREFILL_ROWS = 8  # questions per prefill pass when rows join: enough rows for efficient matmuls, little padding
PREFIXES = 4  # shared prefixes whose KV caches are kept (a server alternates between a few databases' schemas)
PLAIN_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)
# Keyword arguments models pass to their attention function that do not change what it computes.
_INERT = {
    "position_ids",
    "cache_position",
    "use_cache",
    "past_key_values",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "is_causal",
    "layer_idx",
}


class NotExact(Exception):
    """The model asks its attention for something our attention function does not compute."""


# --- attention to a shared prefix --------------------------------------------------------------------


@dataclass
class Attend:
    """What one forward pass's attention needs beyond the model's own arguments (the ``sqlora_attend``
    keyword, passed down to every layer's attention)."""

    original: str  # sdpa | eager: the implementation the model computes with otherwise
    runs: list[tuple[slice, Cache | None]]  # consecutive rows and the cache of the prefix they share (None: none)
    positions: torch.Tensor | None = None  # [rows, queries]: each query's position (sliding windows over the prefix)
    seen: dict | None = None  # probe: layer index -> the sliding window its attention was given
    _biases: dict = field(default_factory=dict)  # made once per forward pass, not once per layer

    def mask_bias(self, mask: torch.Tensor | None, length: int, keys: int, group: int, dev) -> torch.Tensor | None:
        """The model's attention mask over the rows' own keys as an additive bias for the grouped queries."""
        if mask is None and length == 1:
            return None
        key = ("mask", id(mask), group)
        if key not in self._biases:
            if mask is None:  # SDPA's mask skipped as plain causal: make it explicit
                mask = torch.ones(length, keys, dtype=torch.bool, device=dev).tril(keys - length)[None, None]
            grouped = mask[:, :, None].expand(-1, -1, group, -1, -1).reshape(mask.shape[0], 1, group * length, -1)
            if grouped.dtype == torch.bool:
                grouped = torch.zeros(grouped.shape, device=dev).masked_fill_(~grouped, float("-inf"))
            self._biases[key] = (mask, grouped.float())  # the mask is held so its id is not reused meanwhile
        return self._biases[key][1]

    def window_bias(self, window: int, rows: slice, width: int, group: int) -> torch.Tensor | None:
        """-inf where a prefix key lies outside a query's sliding window (keys 0..width-1 at positions
        0..width-1): key j is visible from position q when q - j < window, as transformers' mask has it."""
        positions = self.positions[rows]
        if int(positions.max()) - window < 0:
            return None  # every prefix key is within every query's window
        key = ("window", window, rows.start, rows.stop, width, group)
        if key not in self._biases:
            keys = torch.arange(width, device=positions.device)
            visible = keys[None, None, :] > positions[:, :, None] - window  # [rows, queries, width]
            n, length = positions.shape
            bias = torch.zeros(visible.shape, device=positions.device).masked_fill_(~visible, float("-inf"))
            self._biases[key] = bias[:, None].expand(n, group, length, width).reshape(n, 1, group * length, width)
        return self._biases[key]


def shared_prefix_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout=0.0,
    scaling=None,
    sliding_window=None,
    softcap=None,
    sqlora_attend: Attend | None = None,
    **kwargs,
):
    """Attention over [a prefix shared by a run of rows][each row's own keys], the prefix stored once.

    Each row's queries meet its prefix in one matmul per key/value head for the whole run, instead of
    every row holding (and reading) its own copy of the prefix; one softmax spans both parts. The own
    keys are masked by the model's mask (causal, padding, sliding window: each row's own keys are
    contiguous, right-aligned); the prefix by the sliding window, if the layer has one. Where no row
    has a prefix and the model runs SDPA, this is transformers' SDPA, unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    extra = sorted(k for k, v in kwargs.items() if v is not None and v is not False and k not in _INERT)
    if extra or dropout or (kwargs.get("is_causal") is False):
        raise NotExact(f"its attention is asked for {', '.join(extra) or 'dropout or bidirectional attention'}")
    attend = sqlora_attend
    if attend.seen is not None:
        attend.seen[module.layer_idx] = sliding_window
    if attend.original == "sdpa" and softcap is None and all(prefix is None for _, prefix in attend.runs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    batch, heads, length, dim = query.shape
    kv_heads, vdim = key.shape[1], value.shape[-1]
    group = heads // kv_heads  # query heads per key/value head (grouped-query attention)
    scale = scaling if scaling is not None else dim**-0.5
    queries = (query * scale).reshape(batch, kv_heads, group * length, dim)
    own = torch.matmul(queries, key.transpose(-1, -2)).float()  # [batch, kv_heads, group*length, own keys]
    if softcap is not None:
        own = torch.tanh(own / softcap) * softcap
    bias = attend.mask_bias(attention_mask, length, key.shape[2], group, query.device)
    if bias is not None:
        own = own + bias
    out = query.new_empty((batch, kv_heads, group * length, vdim))
    for rows, prefix in attend.runs:
        part = own[rows]
        if prefix is None:
            out[rows] = torch.matmul(torch.softmax(part, dim=-1).to(value.dtype), value[rows])
            continue
        shared_keys, shared_values = prefix.layers[module.layer_idx].keys[0], prefix.layers[module.layer_idx].values[0]
        n, width = part.shape[0], shared_keys.shape[1]
        flat = queries[rows].transpose(0, 1).reshape(kv_heads, n * group * length, dim)
        scores = torch.matmul(flat, shared_keys.transpose(-1, -2)).float()
        scores = scores.reshape(kv_heads, n, group * length, width).transpose(0, 1)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if sliding_window is not None:
            outside = attend.window_bias(sliding_window, rows, width, group)
            if outside is not None:
                scores = scores + outside
        probs = torch.softmax(torch.cat([scores, part], dim=-1), dim=-1).to(value.dtype)
        to_prefix = probs[..., :width].transpose(0, 1).reshape(kv_heads, n * group * length, width)
        from_prefix = torch.matmul(to_prefix, shared_values).reshape(kv_heads, n, group * length, vdim).transpose(0, 1)
        out[rows] = from_prefix + torch.matmul(probs[..., width:], value[rows])
    return out.reshape(batch, heads, length, vdim).transpose(1, 2).contiguous(), None


def _our_attention(model) -> OurAttention:
    """While active, the model's attention is :func:`shared_prefix_attention`; its masks are built as SDPA's
    (boolean)."""
    from transformers.masking_utils import sdpa_mask

    return OurAttention(model, SHARED_PREFIX_ATTENTION, shared_prefix_attention, mask=sdpa_mask)


# --- when it is exact ----------------------------------------------------------------------------------


def fast_path_problem(model, tokenizer) -> FastPathProblem | None:
    """None where our engine computes what the model computes; otherwise why not."""
    base = base_of(model)
    name = type(base).__name__
    routing = routing_problem(model)
    if routing is not None:
        return FastPathProblem(routing)
    odd = sorted({type(layer).__name__ for layer in DynamicCache(config=base.config).layers if type(layer) not in PLAIN_LAYERS})
    if odd:
        return FastPathProblem(f"{name} keeps {', '.join(odd)} caches, not plain per-layer keys and values")
    try:
        error, seen = FastEngine(model, tokenizer, DecodingPlan(decoding="greedy", search="greedy", candidates=1), seed=0).probe()
    except NotExact as exc:
        return FastPathProblem(f"{name}: {exc}")
    except Exception as exc:  # noqa: BLE001 - whatever breaks in a model we do not know, the answer is the same
        return FastPathProblem(f"{name}: the probe forward failed ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})")
    tolerance = probe_tolerance(model)
    if error > tolerance:
        return FastPathProblem(f"{name}: the probe's outputs differ from the model's own (relative difference {error:.3g} > {tolerance})")
    windows = windows_problem(model, seen)
    if windows is not None:
        return FastPathProblem(*windows)
    return None


# --- the engine ----------------------------------------------------------------------------------------


@dataclass
class StreamRow(Row):
    generator: torch.Generator | None = None  # its own random stream (sampling)
    prefix: Cache | None = None  # the KV cache of its shared prefix, attended to in place
    constraint: RowConstraint | None = None  # predict.constrained: where its SQL stands
    budget: int = 128  # max_new_tokens
    temperature: float = 0.7  # sampling rows
    top_p: float = 0.95


class Feed:
    """Where the rows of a run come from, and who hears how they go: a fixed plan (predict; this class), or
    requests as they arrive (:class:`sqlora.infer.live.LiveEngine`)."""

    def __init__(self, rows: list[StreamRow]):
        self._rows = rows[::-1]  # pop() from the end: plan order

    def waiting(self) -> int:
        """Rows that could join now."""
        return len(self._rows)

    def take(self, free: int) -> list[StreamRow]:
        """Up to ``free`` rows to join, every candidate of a question together."""
        return [self._rows.pop() for _ in range(min(free, len(self._rows)))]

    def idle(self) -> bool:
        """Nothing runs and nothing waits: True to wait for more rows (a server), False to end the run."""
        return False

    def dropped(self, row: StreamRow) -> bool:
        """Whether ``row`` should leave the batch unfinished (its request was abandoned)."""
        return False

    def abandoned(self, batch: Batch) -> None:
        """The last of ``batch``'s rows has left, some of them dropped: it will not be yielded."""

    def advanced(self, row: StreamRow, text: str) -> None:
        """``row`` has one more token; ``text`` is all it has written (streamed answers)."""


class FastEngine(Engine):
    name = "sqlora"
    pools_small_batches = False  # rows join running batches: small groups cost nothing extra

    def __init__(self, model, tokenizer, plan: DecodingPlan, seed: int, constraints: list | None = None):
        super().__init__(model, tokenizer, plan, seed, constraints)
        self.original = model.config._attn_implementation
        self.layers = len(DynamicCache(config=model.config).layers)
        self.prefixes: OrderedDict[tuple[int, ...], Cache] = OrderedDict()  # the last PREFIXES used

    def _prefix(self, ids: list[int]) -> Cache:
        """The KV cache of a prefix (one row, every position of every layer), computed once while it is
        among the last PREFIXES used. Read-only; rows hold their own reference, so dropping it here frees
        it only once they have left."""
        key = tuple(ids)
        if key not in self.prefixes:
            cache = Cache(layers=[DynamicLayer() for _ in range(self.layers)])
            if ids:
                self.model(
                    input_ids=torch.tensor([ids], device=self.dev),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=torch.tensor([len(ids) - 1], device=self.dev),
                    sqlora_attend=Attend(self.original, runs=[(slice(0, 1), None)]),
                )
            self.prefixes[key] = cache
            while len(self.prefixes) > PREFIXES:
                self.prefixes.popitem(last=False)
        self.prefixes.move_to_end(key)
        return self.prefixes[key]

    def _prefill(self, rows: list[StreamRow], encoded: list[list[int]], samples: int, seen: dict | None = None, hidden: bool = False):
        """Cache, mask, positions and first logits of questions sharing one prefix (``samples`` rows each).
        ``hidden`` (the probe): logits are (hidden states after the first layer, logits) at the last position."""
        prefix = rows[0].batch.prefix
        prompts = [encoded[r.index] for r in rows[::samples]]
        shared = self._prefix(prompts[0][:prefix])
        width = max(len(p) for p in prompts) - prefix
        # Each row: [its own tail, left-padded]; the prefix is read in place. Positions skip the padding.
        ids = torch.tensor([[self.pad] * (width - len(p) + prefix) + p[prefix:] for p in prompts], device=self.dev)
        mask = torch.tensor([[0] * (width - len(p) + prefix) + [1] * (len(p) - prefix) for p in prompts], device=self.dev)
        positions = prefix + (mask.cumsum(-1) - 1).clamp(min=0)
        for row in rows:
            row.prefix = shared if prefix else None
        cache = Cache(layers=[_InPlaceKVLayer() for _ in range(self.layers)])
        attend = Attend(self.original, runs=[(slice(0, len(prompts)), rows[0].prefix)], positions=positions, seen=seen)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=torch.tensor([width - 1], device=self.dev),
            sqlora_attend=attend,
            output_hidden_states=hidden,
        )
        logits = out.logits[:, -1].float()
        last = positions[:, -1]
        if hidden:
            return cache, mask, last, (out.hidden_states[1][:, -1].float(), logits)
        if samples > 1:  # the candidates of a question share its prefill
            cache.batch_repeat_interleave(samples)
            logits, mask, last = (t.repeat_interleave(samples, dim=0) for t in (logits, mask, last))
        return cache, mask, last, logits

    def _step(self, rows: list[StreamRow], tokens, cache, mask, last, hidden: bool = False):
        """One token for every row: the next logits (``hidden``: as in _prefill)."""
        attend = Attend(
            self.original,
            runs=[
                (slice(run[0], run[-1] + 1), rows[run[0]].prefix)
                for run in (list(g) for _, g in groupby(range(len(rows)), key=lambda k: id(rows[k].prefix)))
            ],
            positions=last[:, None],
        )
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=last[:, None],
            past_key_values=cache,
            use_cache=True,
            sqlora_attend=attend,
            output_hidden_states=hidden,
        )
        logits = out.logits[:, -1].float()
        return (out.hidden_states[1][:, -1].float(), logits) if hidden else logits

    @torch.inference_mode()
    def probe(self) -> tuple[float, dict]:
        """Two prompts sharing a prefix, with tails of different lengths, prefilled and stepped once by
        this engine, against the model's own forward of each whole sequence. Returns the largest
        relative difference of the hidden states after the first layer (where only the attention
        plumbing can differ, so bf16 rounding stays small; fp32: of the last logits too), and the
        sliding window each layer's attention was given."""
        vocab = self.model.get_input_embeddings().weight.shape[0]
        prefix = [(97 * i + 13) % vocab for i in range(7)]
        prompts = [prefix + [(31 * i + 5) % vocab for i in range(3)], prefix + [(53 * i + 11) % vocab for i in range(2)]]
        batch = Batch(number=0, indexes=[0, 1], prefix=len(prefix))
        rows = [StreamRow(index=i, sample=0, batch=batch) for i in range(2)]
        seen: dict = {}
        exact = self.model.get_input_embeddings().weight.dtype == torch.float32
        with _our_attention(self.model):
            cache, mask, last, first = self._prefill(rows, prompts, 1, seen, hidden=True)
            tokens = torch.tensor([3 % vocab, 7 % vocab], device=self.dev)
            mask = torch.cat([mask, mask.new_ones((2, 1))], dim=1)
            second = self._step(rows, tokens, cache, mask, last + 1, hidden=True)
        error = 0.0
        for k, prompt in enumerate(prompts):
            for ids, (ours_hidden, ours_logits) in ((prompt, first), (prompt + [int(tokens[k])], second)):
                out = self.model(input_ids=torch.tensor([ids], device=self.dev), output_hidden_states=True)
                pairs = [(ours_hidden[k], out.hidden_states[1][0, -1].float())]
                if exact:
                    pairs.append((ours_logits[k], out.logits[0, -1].float()))
                for ours, own in pairs:
                    error = max(error, float((ours - own).norm() / own.norm().clamp(min=1e-6)))
        return error, seen

    def _choose(self, logits: torch.Tensor, rows: list[StreamRow]) -> torch.Tensor:
        """A greedy row (no random stream): the argmax. A sampling row: one uniform draw from its own random
        stream, through the inverse CDF of the nucleus (:func:`_nucleus`). A constrained row takes the best
        token its schema allows (greedy), or draws from the allowed part of the nucleus (sampling); the
        tests check both against the distributions they mean (tests/helpers.py)."""
        tokens = logits.argmax(dim=-1)
        drawn = [k for k, r in enumerate(rows) if r.generator is not None]
        for k, row in enumerate(rows):
            state = row.constraint.state if row.constraint is not None else None
            if row.generator is None and state is not None and not self.checker.allows(state, int(tokens[k])):
                best = self.checker.first_allowed(state, logits[k], 1)
                if best:
                    tokens[k] = best[0]
        if not drawn:
            return tokens
        draws = {k: float(torch.rand((), generator=rows[k].generator)) for k in drawn}
        # Rows drawn with the same temperature and top_p (all of them in predict; a server's requests differ) together.
        for (temperature, top_p), same in groupby(
            sorted(drawn, key=lambda k: (rows[k].temperature, rows[k].top_p, k)), key=lambda k: (rows[k].temperature, rows[k].top_p)
        ):
            same = list(same)
            chosen = torch.tensor(same, device=self.dev)
            values, indexes = _nucleus(logits[chosen], temperature, top_p)
            cdf = values.cumsum(dim=-1)
            targets = torch.tensor([draws[k] for k in same], device=self.dev) * cdf[:, -1]
            picks = torch.searchsorted(cdf, targets[:, None]).clamp(max=cdf.shape[-1] - 1)
            tokens[chosen] = picks.squeeze(1) if indexes is None else indexes.gather(1, picks).squeeze(1)
        for k, draw in draws.items():
            state = rows[k].constraint.state if rows[k].constraint is not None else None
            if state is not None:
                allowed, masses = self.checker.nucleus(state, logits[k], rows[k].temperature, rows[k].top_p)
                if allowed:
                    cumulative = torch.tensor(masses).cumsum(0)
                    pick = int(torch.searchsorted(cumulative, torch.tensor([draw * float(cumulative[-1])])).clamp(max=len(allowed) - 1))
                    tokens[k] = allowed[pick]
        return tokens

    def run(self, batches: list[Batch], encoded: list[list[int]], samples: int) -> Iterator[tuple[Batch, list[Row]]]:
        """The plan's batches, continuously batched (:meth:`stream`)."""
        rows = [
            StreamRow(
                index=i,
                sample=k,
                batch=b,
                generator=self._generator(i, k) if self.plan.draws(k) else None,
                constraint=RowConstraint(self.constraints[i]) if self.constraints and self.constraints[i] else None,
                budget=self.plan.max_new_tokens,
                temperature=self.plan.temperature,
                top_p=self.plan.top_p,
            )
            for b in batches
            for i in b.indexes
            for k in range(samples)
        ]
        return self.stream(Feed(rows), encoded, samples)

    def stream(self, feed: Feed, encoded, samples: int) -> Iterator[tuple[Batch, list[Row]]]:
        """Continuous batching: up to ``batch_size`` rows generate together; as rows finish, the next
        ones (``feed``'s, in its order) join, so steps keep a full batch instead of trailing off. Yields each
        batch with its finished rows (``samples`` per prompt of ``encoded``) once they all are; a batch whose
        rows the feed drops is never yielded.

        Every row's own keys/values sit right-aligned in one cache, padded and masked on the left;
        joining pads whichever side is shorter, and columns no row uses any more are cropped as rows leave.
        """
        capacity = max(self.plan.batch_size, samples)
        left: dict[int, int] = {}  # batch number -> rows not finished yet
        done: dict[int, list[Row]] = {}
        rows: list[StreamRow] = []
        cache = mask = last = logits = None
        with _our_attention(self.model) as attention:
            while True:
                if not rows and not feed.waiting():
                    attention.__exit__()  # while idle, the model is the caller's
                    more = feed.idle()
                    attention.__enter__()
                    if not more:
                        return
                    continue
                free = capacity - len(rows)
                waiting = feed.waiting()
                # Join when the batch is empty, or when enough room is free to make a prefill pass worth it.
                if waiting and (not rows or free >= max(samples, capacity // 4) or free >= waiting):
                    joining = feed.take(free - free % samples)
                    for row in joining:
                        if row.batch.number not in left:
                            left[row.batch.number], done[row.batch.number] = len(row.batch.indexes) * samples, []
                    groups = [
                        list(g) for _, g in groupby(joining, key=lambda r: (r.batch.prefix, tuple(encoded[r.index][: r.batch.prefix])))
                    ]
                    # Prefill in chunks of PREFILL_ROWS questions (sorted by length in the plan): each chunk
                    # is padded to its own longest tail, not to the group's.
                    size = PREFILL_ROWS * samples
                    parts = [] if cache is None else [(cache, mask, last, logits)]
                    for group in (g[i : i + size] for g in groups for i in range(0, len(g), size)):
                        start = time.perf_counter()
                        parts.append(self._prefill(group, encoded, samples))
                        share_time(group, time.perf_counter() - start)
                        rows += group
                    if not parts:
                        continue
                    cache, mask, last, logits = parts[0] if len(parts) == 1 else _join(parts)
                tokens = self._choose(logits, rows)
                keep = []
                for k, (row, token) in enumerate(zip(rows, tokens.tolist())):
                    number = row.batch.number
                    if feed.dropped(row):  # abandoned: it leaves now, unfinished
                        left[number] -= 1
                        if not left[number]:
                            del left[number], done[number]
                            feed.abandoned(row.batch)
                        continue
                    row.tokens.append(token)
                    text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
                    if row.constraint is not None:
                        row.constraint.advance(text)
                    feed.advanced(row, text)
                    if token in self.eos:
                        row.stop = "eos"
                    elif sql_complete(text):
                        row.stop = "sql_end"
                    elif len(row.tokens) < row.budget:
                        keep.append(k)
                        continue
                    done[number].append(row)
                    left[number] -= 1
                    if not left[number]:
                        del left[number]
                        attention.__exit__()  # the caller may use the model between two batches
                        yield row.batch, done.pop(number)
                        attention.__enter__()
                if len(keep) < len(rows):  # finished rows leave the batch and the cache
                    index = torch.tensor(keep, dtype=torch.long, device=self.dev)
                    cache.batch_select_indices(index)
                    mask, last, tokens = mask[index], last[index], tokens[index]
                    rows = [rows[k] for k in keep]
                    if not rows:
                        cache = mask = last = logits = None
                        continue
                    used = int(mask.any(dim=0).to(torch.int8).argmax())  # leading columns no row attends to
                    if used:
                        for layer in cache.layers:
                            layer.crop_left(used)
                        mask = mask[:, used:]
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                last = last + 1
                start = time.perf_counter()
                logits = self._step(rows, tokens, cache, mask, last)
                share_time(rows, time.perf_counter() - start)

    def _generator(self, index: int, sample: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + index) * 1_009 + sample)


# --- sampling --------------------------------------------------------------------------------------


def _nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Temperature, then the nucleus: the fewest most probable tokens holding ``top_p`` of the mass (as
    transformers' TopPLogitsWarper), as unnormalised masses and their token ids (None: the whole
    vocabulary, in order)."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1:
        return probs, None
    # Sorting the whole vocabulary every step costs a quarter of a step; the nucleus is nearly
    # always within the top NUCLEUS_K tokens: sort all only when it is not.
    values, indexes = probs.topk(min(NUCLEUS_K, probs.shape[-1]), dim=-1)
    if not bool((values.sum(dim=-1) >= top_p).all()):
        values, indexes = probs.sort(dim=-1, descending=True)
    return values * ((values.cumsum(dim=-1) - values) < top_p), indexes


# --- the KV cache --------------------------------------------------------------------------------------


def _join(parts: list[tuple]) -> tuple:
    """Running batches (cache, mask, last positions, logits) as one: each right-aligned to the
    longest, padded and masked on the left, stacked along the batch."""
    width = max(mask.shape[1] for _, mask, _, _ in parts)
    caches = [cache for cache, _, _, _ in parts]
    for layers in zip(*(cache.layers for cache in caches)):
        layers[0].stack(list(layers), width)
    masks = [torch.nn.functional.pad(mask, (width - mask.shape[1], 0)) for _, mask, _, _ in parts]
    return caches[0], torch.cat(masks), torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts])


class _InPlaceKVLayer(DynamicLayer):
    """A cache layer whose keys/values are views of a larger buffer.

    Appending a token and cropping on the left move no data; DynamicLayer concatenates instead,
    copying the whole cache at every step, which at 64 rows costs a quarter of a step on the CPU.
    It keeps every position, for sliding-window layers too (their mask hides what is outside the
    window). Padding is zeros (masked, but it must be finite: 0 x NaN is NaN).
    """

    ROOM = 64  # columns kept free on the right; a full buffer is reallocated with this much more

    def _set(self, keys: torch.Tensor, values: torch.Tensor, room: int = ROOM) -> None:
        """New buffers holding ``keys``/``values``, with ``room`` columns after them (written before read)."""
        length = keys.shape[2]
        self._k = keys.new_empty((*keys.shape[:2], length + room, keys.shape[3]))
        self._v = values.new_empty((*values.shape[:2], length + room, values.shape[3]))
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

    def stack(self, layers: list[_InPlaceKVLayer], width: int) -> None:
        """Become ``layers`` (self among them) stacked along the batch, each right-aligned to ``width``
        columns with zeros on the left."""
        rows = sum(layer.keys.shape[0] for layer in layers)
        keys = self.keys.new_empty((rows, self.keys.shape[1], width + self.ROOM, self.keys.shape[3]))
        values = self.values.new_empty((rows, self.values.shape[1], width + self.ROOM, self.values.shape[3]))
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
