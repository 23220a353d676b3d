"""Export: a fine-tuned model folder -> one standalone Hugging Face checkpoint, adapter merged.

The output (safetensors weights, config, generation config, tokenizer, chat template) loads with
``transformers.AutoModelForCausalLM.from_pretrained`` alone — no peft, no sqlora — so it is what
vLLM, TGI or DB-GPT serve. ``sqlora_export.json`` records where it came from.

- lora: the base loaded in fp32, the adapter applied, ``merge_and_unload()``: W' = W + (alpha/r)·B·A.
- qlora: the adapter was trained against the NF4-quantised base, but it is merged into the
  *unquantised* base weights, as is standard practice (merging into 4-bit weights would need
  re-quantising, and a de-quantised base keeps the NF4 rounding error in every weight). The
  exported model therefore computes with W + ΔW where training saw NF4(W) + ΔW: a small mismatch,
  of the size of the quantisation error, that the adapter never learnt to compensate.
- full: the fine-tuned checkpoint, re-saved; none: the base model, re-saved.

Merging happens on the CPU in fp32 (about 4 bytes of RAM per parameter), then the weights are cast
to ``dtype`` (``model.dtype``; auto: the precision this machine predicts in, see
:func:`sqlora.model.loader.resolve_dtype`), so a bf16/fp16 export is rounded once. The GGUF export
(:mod:`sqlora.model.gguf`) merges through the same :func:`merged_model`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlora.config import DTYPES
from sqlora.errors import SqloraError
from sqlora.io import atomic_path, write_json
from sqlora.model.loader import check_checkpoint_folder, read_model_info

EXPORT_INFO = "sqlora_export.json"


@dataclass(frozen=True)
class Export:
    out_dir: Path
    method: str
    dtype: str
    parameters: int
    seconds: float


def _merged(model, finetuned_dir: Path, base_dir: Path):
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, finetuned_dir)
    except (RuntimeError, ValueError, KeyError) as exc:  # a base of another shape or architecture
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SqloraError(f"{finetuned_dir}: the adapter does not fit the base {base_dir} ({first})") from None
    try:
        # safe_merge checks the merged weights for NaN/inf before replacing the originals.
        return peft_model.merge_and_unload(safe_merge=True)
    except ValueError as exc:
        raise SqloraError(f"{finetuned_dir}: merging the adapter failed ({str(exc).splitlines()[0]})") from None


def check_inputs(finetuned_dir: Path, base_dir: Path, out: Path) -> dict:
    """The fine-tuned folder's ``sqlora_model.json``, once the folders are checked (before any import of torch)."""
    info = read_model_info(finetuned_dir)
    check_checkpoint_folder(base_dir, "base model", "; run the model stage first")
    if out.resolve() in (finetuned_dir.resolve(), base_dir.resolve()):
        raise SqloraError(f"{out}: the output folder must differ from the fine-tuned and base folders")
    return info


def merged_model(finetuned_dir: Path, base_dir: Path, method: str):
    """The model of a train-stage folder in fp32 on the CPU, adapter merged (see the module docstring),
    and its tokenizer: the one merge path of every export format."""
    import torch
    from transformers import AutoModelForCausalLM

    from sqlora.model.loader import load_tokenizer

    # Always the full-precision weights, on the CPU: never 4-bit (not even for qlora, see above), never
    # the GPU's bf16 compute dtype, so the merge itself adds no rounding.
    weights_dir = finetuned_dir if method == "full" else base_dir
    model = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=torch.float32)
    if method in ("lora", "qlora"):
        model = _merged(model, finetuned_dir, base_dir)
    model.eval()
    return model, load_tokenizer(base_dir)  # the same tokenizer and chat template training and prediction used


def export_model(finetuned_dir: str | Path, base_dir: str | Path, out_dir: str | Path, dtype: str = "auto") -> Export:
    """Write the model of a train-stage folder to ``out_dir`` as a standalone checkpoint (atomically)."""
    finetuned_dir, base_dir, out_dir = Path(finetuned_dir), Path(base_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise SqloraError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    info = check_inputs(finetuned_dir, base_dir, out_dir)
    method = info["method"]

    import torch  # only now: bad input above fails without the seconds these imports take

    from sqlora.model.loader import dtype_name, resolve_dtype

    target = dtype_name(resolve_dtype(dtype))

    start = time.perf_counter()
    model, tokenizer = merged_model(finetuned_dir, base_dir, method)
    model = model.to(getattr(torch, target))

    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)  # transformers 5 writes safetensors only (tied weights stored once)
        tokenizer.save_pretrained(tmp)
        # The prompt settings it was trained with: `sqlora ask` prompts an export as it prompted the source.
        write_json(
            tmp / EXPORT_INFO,
            {"method": method, "base": str(base_dir), "source": str(finetuned_dir), "dtype": target, "prompt": info.get("prompt") or {}},
        )
        for file in tmp.iterdir():  # safetensors writes 0600: a server running as another user could not read it
            file.chmod(0o644)
    parameters = sum(p.numel() for p in model.parameters())
    return Export(out_dir=out_dir, method=method, dtype=target, parameters=parameters, seconds=time.perf_counter() - start)
