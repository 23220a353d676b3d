"""Load a model folder for generation, in the precision ``model.dtype`` resolves to on this machine."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from sqlora.errors import SqloraError
from sqlora.model.loader import device, inference_folders, load_base_model, load_tokenizer, resolve_dtype


def load_for_inference(model_dir: str | Path, base_dir: str | Path | None = None, dtype: str = "auto"):
    """The model a folder holds, with its tokenizer, ready to generate in ``dtype`` (``model.dtype``).

    A train-stage folder (``sqlora_model.json``): base + LoRA adapter (merged into the fp32 weights,
    then cast: the same model without the adapter's extra matmuls at every step, rounded once), base +
    QLoRA adapter (kept apart: merging into 4-bit weights would re-quantise them; the 4-bit matmuls
    compute in ``dtype``), a full checkpoint, or the base alone. Any other folder with a
    ``config.json`` — an export (``sqlora export``), a plain Hugging Face checkpoint — is a standalone model.
    """
    model_dir = Path(model_dir)
    method, weights_dir = inference_folders(model_dir, base_dir)
    compute = resolve_dtype(dtype)
    try:
        tokenizer = load_tokenizer(weights_dir)
    except (OSError, ValueError) as exc:
        raise SqloraError(f"{weights_dir}: no usable tokenizer ({' '.join(str(exc).split())[:200]})") from None
    if method == "qlora":  # loaded onto its device, 4-bit
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_base_model(weights_dir, method, compute), model_dir)
    else:
        model = load_base_model(weights_dir, "full" if method == "full" else method, torch.float32)
        if method == "lora":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
        model = model.to(device=device(), dtype=compute)
    model.eval()
    _pack_linear_layers(model)
    return model, tokenizer


def _pack_linear_layers(module: torch.nn.Module) -> None:
    """On the CPU in float32, every plain ``nn.Linear`` becomes oneDNN's (``MkldnnLinear``), its weight
    reordered once into the layout oneDNN's matmul reads fastest: on the small matrices generation
    multiplies (one to a few hundred rows) it runs 1.4-2x faster than MKL's sgemm on the same float32
    numbers. bf16 layers are left as they are: PyTorch already runs them on oneDNN, and packing them
    measured slower. Training keeps plain layers (it needs their gradients)."""
    with warnings.catch_warnings():  # the module is TorchScript, whose decorators are deprecated in torch 2.13
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from torch.utils.mkldnn import MkldnnLinear
        except ImportError:  # a torch without it: MKL's layers, same results, slower
            return
    if not torch.backends.mkldnn.is_available() or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in module.parameters()):
        return
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear:
                setattr(parent, name, MkldnnLinear(child, torch.float32))
