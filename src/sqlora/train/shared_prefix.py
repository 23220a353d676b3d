"""Shared-prefix rows: examples that share a prompt prefix, trained in one row that holds the prefix once.

A Spider prompt is the instruction and the schema, then the question: ~50 questions share each schema,
which is most of every prompt's tokens. A *shared-prefix row* is one copy of a prefix followed by the
continuations of several examples (each question + SQL + EOS), in one sequence:

    [prefix without its last token][last prefix token, continuation 1][last prefix token, continuation 2]...

- attention: each continuation sees the prefix and its own earlier tokens, never another continuation
  (:func:`packed_attention`: the model's own sdpa or eager attention with that mask);
- positions: every continuation continues from the prefix, as if its example were alone; sliding
  windows apply by those positions;
- the prefix's last token starts each continuation, so its logit predicts that continuation's first
  token (a completion may be predicted from its first token on, as reinforcement learning needs).

So every example gets the logits it would get alone, and the loss and gradients of a row equal those of
its examples as separate rows; :func:`shared_prefix_problem` checks that for the model at hand, and the
trainer falls back to separate rows where it does not hold. The rows are built from any
(prefix, continuations) lists (:func:`pack_row`); which examples share a row is the caller's choice
(:class:`sqlora.train.prefix_batches.SharedPrefixSampler` for supervised fine-tuning).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

import torch

from sqlora.model.attention import REPRODUCED, OurAttention, probe_tolerance, routing_problem, windows_problem
from sqlora.train.batches import IGNORE_INDEX, predicted_positions, response_loss

PACKED_ATTENTION = "sqlora_packed"
PREFIX, PADDING = 0, -1  # segment ids; continuations are numbered from 1


@dataclass(frozen=True)
class Continuation:
    input_ids: list[int]  # what follows the prefix
    labels: list[int]  # the target of each of those tokens (IGNORE_INDEX: none)


def pack_row(prefix: list[int], continuations: list[Continuation]) -> dict:
    """One row: ``prefix`` once, then each continuation (see the module's docstring). ``segments`` says
    which part each token is (0: the prefix; n: the n-th continuation). Also counts the tokens its
    examples hold as separate rows (``real_tokens``) and how many examples it holds."""
    shared, last = (prefix[:-1], prefix[-1:]) if prefix else ([], [])
    ids, labels = list(shared), [IGNORE_INDEX] * len(shared)
    positions, segments = list(range(len(shared))), [PREFIX] * len(shared)
    for number, continuation in enumerate(continuations, start=1):
        if not continuation.input_ids or len(continuation.labels) != len(continuation.input_ids):
            raise ValueError(f"continuation {number}: empty, or labels not one per token")
        own = last + continuation.input_ids
        ids += own
        labels += [IGNORE_INDEX] * len(last) + continuation.labels
        positions += range(len(shared), len(shared) + len(own))
        segments += [number] * len(own)
    real = sum(len(prefix) + len(c.input_ids) for c in continuations)
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": positions,
        "segments": segments,
        "examples": len(continuations),
        "real_tokens": real,
    }


def collate_rows(rows: list[dict], pad_id: int) -> dict:
    """Rows as one right-padded batch: what the model's forward takes, with ``logits_to_keep`` (the
    positions whose next token is a label in some row: the only logits the loss needs), and the keyword
    arguments that reach :func:`packed_attention`: ``sqlora_mask`` (:func:`packed_mask`) and
    ``sqlora_positions`` (a model need not pass its position ids on to its attention)."""
    width = max(len(row["input_ids"]) for row in rows)

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.tensor([row[key] + [value] * (width - len(row[key])) for row in rows], dtype=torch.long)

    positions = padded("position_ids", 0)
    labels = padded("labels", IGNORE_INDEX)
    return {
        "input_ids": padded("input_ids", pad_id),
        "labels": labels,
        "position_ids": positions,
        "logits_to_keep": predicted_positions(labels),
        "sqlora_mask": packed_mask(padded("segments", PADDING)),
        "sqlora_positions": positions.clone(),
    }


def packed_mask(segments: torch.Tensor) -> torch.Tensor:
    """[rows, 1, tokens, tokens], True where a query sees a key: earlier in the row, and in the prefix or
    in the query's own continuation. Padding sees what it may, itself included: its outputs are never
    used, but must be finite."""
    index = torch.arange(segments.shape[1])
    queries, keys = segments[:, :, None], segments[:, None, :]
    return ((index[:, None] >= index[None, :]) & ((keys == PREFIX) | (keys == queries)))[:, None]


# --- attention ------------------------------------------------------------------------------------------


def packed_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    *,
    original: str,
    sqlora_mask=None,
    sqlora_positions=None,
    sqlora_seen: dict | None = None,
    sliding_window=None,
    **kwargs,
):
    """The model's own ``original`` attention (sdpa, or its module's eager function) with the mask of a
    batch of shared-prefix rows, narrowed to this layer's sliding window by position.

    One mask over each whole row, though it computes the blocks between continuations for nothing (for
    SmolLM2 on the sample, attention is about a quarter of a shared-prefix step). Measured on a 2-core
    CPU, the alternatives did not pay: reading the prefix in place, as prediction's engine does, made a
    training step of SmolLM2 14% slower (gathers and copies); SDPA calls per part (the prefix, then
    groups of continuations against it) saved a fifth to a third of the attention time in isolation,
    5-8% of a step, for much more code."""
    if sqlora_mask is None:
        raise RuntimeError("packed attention without sqlora_mask: a batch that is not shared-prefix rows")
    if sqlora_seen is not None:
        sqlora_seen[module.layer_idx] = sliding_window
    visible = sqlora_mask
    if sliding_window is not None:
        visible = visible & ((sqlora_positions[:, None, :, None] - sqlora_positions[:, None, None, :]) < sliding_window)
    if original == "eager":  # eager attention adds its mask: 0 where visible, the dtype's minimum elsewhere
        visible = torch.zeros(visible.shape, dtype=query.dtype, device=query.device).masked_fill_(~visible, torch.finfo(query.dtype).min)
    return attention_function(module, original)(module, query, key, value, visible, sliding_window=sliding_window, **kwargs)


def attention_function(module, original: str):
    """The function ``module`` computes its attention with under ``original`` (sdpa: transformers'; eager:
    the one its modeling file defines)."""
    if original == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise RuntimeError(f"{type(module).__module__} has no eager_attention_forward")
    return eager


def packed_attention_for(model) -> OurAttention:
    """While active, ``model`` attends as :func:`packed_attention` over its own sdpa or eager attention
    (and builds no mask of its own: the batch carries it)."""
    original = model.config._attn_implementation
    if original not in REPRODUCED:
        raise ValueError(f"packed attention reproduces {' and '.join(REPRODUCED)}, not {original!r}")
    return OurAttention(model, f"{PACKED_ATTENTION}_{original}", partial(packed_attention, original=original))


# --- when it is exact -----------------------------------------------------------------------------------


def shared_prefix_problem(model, longest: int = 0) -> str | None:
    """None where shared-prefix rows give ``model`` what separate rows give it; otherwise why not.

    Beyond the routing (transformers' AttentionInterface, sdpa or eager), a probe: three examples sharing a
    prefix, one of them predicted from its first token on, as one shared-prefix row and as three padded
    rows through the model's own attention; the per-token losses and the gradients of the trained
    parameters must agree within numeric noise (dropout off), and every layer's attention must be told
    its sliding window (unless no example, ``longest`` tokens at most, reaches the smaller window).
    """
    routing = routing_problem(model)
    if routing is not None:
        return routing
    name = type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__
    try:
        (losses, grads), (own_losses, own_grads), seen = _probe(model)
    except Exception as exc:  # noqa: BLE001 - whatever breaks in a model we do not know, the answer is the same
        return f"{name}: the probe failed ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
    tolerance = probe_tolerance(model)
    for what, ours, own in (("losses", losses, own_losses), ("gradients", grads, own_grads)):
        error = float((ours - own).norm() / own.norm().clamp(min=1e-12))
        if not error <= tolerance:  # NaN too
            return f"{name}: the shared-prefix row's {what} differ from separate rows' (relative difference {error:.3g} > {tolerance})"
    windows = windows_problem(model, seen)
    if windows is not None and longest > windows[1]:
        return windows[0]
    return None


def _probe(model):
    vocab = model.get_input_embeddings().weight.shape[0]
    prefix = [(97 * i + 13) % vocab for i in range(7)]
    tails = [[(31 * i + 5) % vocab for i in range(4)], [(53 * i + 11) % vocab for i in range(6)], [(71 * i + 3) % vocab for i in range(2)]]
    labelled = [2, 3, 2]  # the last tokens of each tail are targets; the third from its first token on
    continuations = [Continuation(t, [IGNORE_INDEX] * (len(t) - n) + t[len(t) - n :]) for t, n in zip(tails, labelled)]
    examples = [(prefix + c.input_ids, [IGNORE_INDEX] * len(prefix) + c.labels) for c in continuations]
    width = max(len(ids) for ids, _ in examples)
    own_batch = {
        "input_ids": torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in examples]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in examples]),
        "labels": torch.tensor([labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels in examples]),
    }
    own_batch["logits_to_keep"] = predicted_positions(own_batch["labels"])
    packed = collate_rows([pack_row(prefix, continuations)], pad_id=0)
    seen: dict = {}
    trained = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with packed_attention_for(model):
            ours = losses_and_grads(model, packed, trained, sqlora_seen=seen)
        own = losses_and_grads(model, own_batch, trained)
    finally:
        model.train(was_training)
        for p in trained:
            p.grad = None
    return ours, own, seen


def losses_and_grads(model, batch: dict, trained: list, **passed) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-label-token losses (in the order of the examples' label tokens) and the trained parameters'
    gradients of their mean, as training computes it (:func:`sqlora.train.batches.response_loss`).
    ``batch`` goes to the model's device (as the Trainer moves it); ``passed`` to the model as it is."""
    dev = model.get_input_embeddings().weight.device

    def moved(value):
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        return value.to(dev) if isinstance(value, torch.Tensor) else value

    batch = moved(batch)
    labels = batch.pop("labels")
    for p in trained:
        p.grad = None
    outputs = model(**batch, **passed)
    response_loss(outputs, labels).backward()
    targets = labels[:, batch["logits_to_keep"] + 1]
    per_token = torch.nn.functional.cross_entropy(
        outputs.logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    losses = per_token[targets != IGNORE_INDEX].detach()  # row by row: the same order packed or not
    grads = torch.cat([p.grad.flatten().float() for p in trained if p.grad is not None])
    return losses.cpu(), grads.cpu()
