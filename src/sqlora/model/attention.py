"""Our attention functions inside transformers' models: what the generation engine (a prefix's keys and
values read in place, :mod:`sqlora.infer.fast`) and shared-prefix training (:mod:`sqlora.train.shared_prefix`)
have in common.

Both replace the model's attention by a function of ours, registered in transformers' AttentionInterface,
for as long as they run (:class:`OurAttention`). That is exact only for models whose attention goes
through that interface, computing with sdpa or eager (:func:`routing_problem`), and whose layers each
tell their attention the sliding window they have (:func:`layer_windows`, checked by each caller's probe).
"""

from __future__ import annotations

from typing import Callable

REPRODUCED = ("sdpa", "eager")  # the implementations our functions stand in for


def base_of(model):
    """The transformers model under a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def routing_problem(model) -> str | None:
    """None where attention can be ours: routed through AttentionInterface, sdpa or eager; else why not."""
    base = base_of(model)
    name = type(base).__name__
    if not getattr(type(base), "_supports_attention_backend", False):
        return f"{name} does not route its attention through transformers' AttentionInterface"
    original = base.config._attn_implementation
    if original not in REPRODUCED:
        return f"{name} runs {original!r} attention; ours reproduces {' and '.join(REPRODUCED)}"
    return None


def probe_tolerance(model) -> float:
    """The largest relative difference between our attention's outputs and the model's own that is still
    numeric noise, in the precision of the model's weights (bf16 rounds to 3 digits)."""
    import torch

    tolerances = {torch.float32: 1e-4, torch.bfloat16: 0.05, torch.float16: 0.01}
    return tolerances.get(model.get_input_embeddings().weight.dtype, 1e-3)


def layer_windows(config) -> list[int | None]:
    """Each layer's sliding window (None: full attention), as transformers' own cache lays the layers out."""
    from transformers.cache_utils import DynamicCache

    return [getattr(layer, "sliding_window", None) for layer in DynamicCache(config=config).layers]


def windows_problem(model, seen: dict) -> tuple[str, int] | None:
    """None where every layer's attention was given its layer's sliding window (``seen``: layer index ->
    window given, recorded by a probe forward); else why not, and the smaller of the two windows."""
    base = base_of(model)
    for index, window in enumerate(layer_windows(base.config)):
        given = seen.get(index)
        if window != given:
            reason = f"{type(base).__name__}: layer {index} has a sliding window of {window} tokens but its attention is given {given}"
            return reason, min(w for w in (window, given) if w is not None)
    return None


class OurAttention:
    """While active, ``model``'s attention is ``function``, registered as ``name`` (restored on exit, also
    when the caller stops early). ``mask``: the mask function transformers builds the model's mask with
    for it; None: the model builds no mask (the function makes its own)."""

    def __init__(self, model, name: str, function: Callable, mask: Callable | None = None):
        self.model, self.name, self.function, self.mask = model, name, function, mask
        self.before = model.config._attn_implementation

    def __enter__(self):
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(self.name, self.function)
        if self.mask is not None:
            AttentionMaskInterface.register(self.name, self.mask)
        self.model.set_attn_implementation(self.name)
        return self

    def __exit__(self, *exc):
        self.model.set_attn_implementation(self.before)
