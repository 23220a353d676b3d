"""The GPU path in one go: LoRA and QLoRA training steps, batched prediction and export, on a tiny random
model and on SmolLM2-135M; prints tokens/s, peak memory (QLoRA against LoRA) and identical-SQL checks.

Runs the project's own code (sqlora.train.trainer.train, sqlora.infer, sqlora.model.export) on the embedded sample:
  python benchmarks/bench_gpu.py                       # on a CUDA GPU (about 3 minutes on one H200)
  python benchmarks/bench_gpu.py --device cpu          # the same code path on the CPU (what the tests run)
  make bench-gpu [ARGS="--models tiny --steps 4"]
On a machine without the SmolLM2 weights package, pass --smollm2 FOLDER (a checkpoint folder, e.g. the
model stage's models/base) or --models tiny. bitsandbytes missing: the QLoRA rows say so and are skipped.

Checks (exit status 1 if one fails): our engine writes the same SQL as transformers' batched generate()
on the same model, and the exported (merged) model the same SQL as base + adapter.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
parser.add_argument("--smollm2", default="", help="a SmolLM2-135M checkpoint folder (default: the offline alias)")
parser.add_argument("--steps", type=int, default=20, help="training steps per method and model")
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--questions", type=int, default=64, help="sample dev questions predicted")
parser.add_argument("--dtype", default="auto", help="model.dtype (auto: bf16 where native)")
args = parser.parse_args()
if args.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: sqlora.model.loader.device() is then the CPU

import torch  # noqa: E402

from sqlora.config import DataParams, LoraParams, PromptParams, TrainParams  # noqa: E402
from sqlora.data.prepare import prepare_split  # noqa: E402
from sqlora.data.sample import generate_sample  # noqa: E402
from sqlora.infer.engine import generate  # noqa: E402
from sqlora.infer.loading import load_for_inference  # noqa: E402
from sqlora.model.export import export_model  # noqa: E402
from sqlora.model.loader import device, dtype_name, load_tokenizer, materialize, resolve_dtype  # noqa: E402
from sqlora.train.trainer import train  # noqa: E402

if args.device == "cuda" and not torch.cuda.is_available():
    sys.exit("bench_gpu: no CUDA device (use --device cpu)")


def tiny_llama(out: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer Llama with hidden size 64 and a real tokenizer: every code path in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def peak_memory() -> float:
    """MiB: the GPU's peak allocation since the last reset, or this process's peak RSS on the CPU."""
    if device().type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    from sqlora.train.trainer import peak_rss_mb

    return peak_rss_mb()


def reset_peak() -> None:
    if device().type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="sqlora-bench-gpu-"))
    generate_sample(work / "sample", seed=42)
    smollm2 = Path(args.smollm2) if args.smollm2 else work / "smollm2"
    if not args.smollm2 and ("smollm2" in args.models or "tiny" in args.models):
        materialize("smollm2-135m-instruct", smollm2)  # the tiny model borrows its tokenizer
    bases = {"tiny": tiny_llama(work / "tiny", smollm2), "smollm2": smollm2}
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    compute = dtype_name(resolve_dtype(args.dtype))
    print(f"device {device()} ({torch.cuda.get_device_name() if device().type == 'cuda' else 'CPU'}), dtype {args.dtype} -> {compute}, "
          f"torch {torch.__version__}, bitsandbytes {'yes' if has_bnb else 'no'}")  # fmt: skip
    failed = False
    for name in args.models.split(","):
        base = bases[name]
        tokenizer = load_tokenizer(base)
        data = DataParams(dataset="sample", source=str(work / "sample"))
        _, train_set, _ = prepare_split(
            "train", data, PromptParams(), tokenizer=tokenizer, max_length=512, limit=args.steps * args.batch_size
        )
        _, dev_set, _ = prepare_split("dev", data, PromptParams(), tokenizer=tokenizer, max_length=512, reserve=128, limit=args.questions)
        prompts = [r.prompt for r in dev_set.records]
        memory = {}
        for method in ("lora", "qlora"):
            if method == "qlora" and not has_bnb:
                print(f"{name} qlora: skipped (bitsandbytes is not installed)")
                continue
            out = work / f"{name}-{method}"
            reset_peak()
            with contextlib.redirect_stdout(io.StringIO()):
                metrics = train(
                    method=method, base_dir=base, records=train_set.records, out_dir=out, lora=LoraParams(),
                    params=TrainParams(batch_size=args.batch_size, logging_steps=5, max_length=512), seed=42,
                    metrics_path=work / f"{name}-{method}.json", live_dir=work / f"{name}-{method}-live", dtype=args.dtype,
                )  # fmt: skip
            memory[method] = peak_memory()
            print(f"{name} {method}: {metrics['steps']} steps, {metrics['tokens_per_s']:.0f} tokens/s, loss {metrics['final_loss']}, "
                  f"dtype {metrics['dtype']} (weights {metrics['weights_dtype']}), peak memory {memory[method]:.0f} MiB")  # fmt: skip
        if len(memory) == 2:
            print(f"{name}: QLoRA peak memory / LoRA peak memory = {memory['qlora'] / memory['lora']:.2f}")
        # Our engine against generate() on the same model: exact in fp32 (required), and in the precision
        # chosen (reported: bf16 rounding can tip near-ties either way).
        for dtype in dict.fromkeys(["float32", compute]):
            model, tokenizer = load_for_inference(work / f"{name}-lora", base, dtype=dtype)
            results = {}
            for engine in ("auto", "transformers"):
                start = time.perf_counter()
                generations = generate(model, tokenizer, prompts, 64, 128, progress=False, engine=engine)
                results[engine] = [g.sql for g in generations]
                print(
                    f"{name} predict {dtype} ({generations[0].engine} engine): {(time.perf_counter() - start) / len(prompts):.3f} s/question"
                )
            same = sum(a == b for a, b in zip(results["auto"], results["transformers"]))
            print(f"{name} identical SQL {dtype}, our engine vs generate(): {same}/{len(prompts)}")
            failed |= dtype == "float32" and same < len(prompts)
            del model
        export_model(work / f"{name}-lora", base, work / f"{name}-exported", dtype=args.dtype)
        adapter = generate(*load_for_inference(work / f"{name}-lora", base, dtype=args.dtype), prompts, 64, 128, progress=False)
        exported = generate(*load_for_inference(work / f"{name}-exported", dtype=args.dtype), prompts, 64, 128, progress=False)
        merged = sum(a.sql == b.sql for a, b in zip(adapter, exported))
        print(f"{name} identical SQL {compute}, exported model vs base + adapter: {merged}/{len(prompts)}")
        failed |= merged < len(prompts)
    print(json.dumps({"result": "FAILED" if failed else "ok"}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
