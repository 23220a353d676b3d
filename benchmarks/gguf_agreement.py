"""GGUF export against the model it was exported from: the same greedy SQL on the sample dev questions?

Usage: make bench-gguf [ARGS="--questions 50 --quants f16 q8_0"]

- model: a published or trained folder (default: models/published/spider2k-gemma3-lora), merged in fp32
  and decoded greedily by the predict stage's generate(): the reference SQL;
- questions: the embedded sample's dev split, prepared by the project's own code with the model's prompt
  settings and the pipeline's budget (train.max_length, predict.max_new_tokens from params.yaml);
- each quant level: `sqlora export --format gguf` (export_gguf), then the GGUF decoded greedily by
  transformers (AutoModelForCausalLM/AutoTokenizer from the GGUF alone, through the same generate()) and,
  when llama-cpp-python is importable, by llama.cpp (llama_cpp.Llama, temperature 0, its own tokenizer).
Reported: a markdown table of file size, export time, and per consumer the questions whose extracted SQL
equals the reference (n/N) and the decoding time.
"""

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from sqlora.config import DataParams, load_params
from sqlora.data.prepare import prepare_split
from sqlora.data.sample import generate_sample
from sqlora.infer.assistant import ensure_base, trained_prompt
from sqlora.infer.engine import generate
from sqlora.infer.loading import load_for_inference
from sqlora.infer.sql_text import extract_sql
from sqlora.model.gguf import export_gguf

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="models/published/spider2k-gemma3-lora")
parser.add_argument("--base", default=".bench/base-gemma3-270m", help="its base model folder (materialised when missing)")
parser.add_argument("--out-dir", default=".bench/gguf", help="where the GGUF files and the sample are written")
parser.add_argument("--quants", nargs="+", default=["f16", "q8_0"] + (["q4_k_m"] if HAS_LLAMA_CPP else []))
parser.add_argument("--questions", type=int, default=0, help="the first N sample dev questions (0: all)")
parser.add_argument("--batch-size", type=int, default=8)
args = parser.parse_args()

params = load_params()
out_dir = Path(args.out_dir)
sample = out_dir / "sample"
if not (sample / "dev.json").is_file():
    generate_sample(sample, seed=params.seed)
ensure_base(args.model, args.base)
prompt = trained_prompt(args.model)
max_new = params.predict.max_new_tokens

model, tokenizer = load_for_inference(args.model, args.base, dtype="float32")
_, fitted, _ = prepare_split(
    "dev", DataParams(dataset="sample", source=str(sample)), prompt, tokenizer=tokenizer,
    max_length=params.train.max_length, reserve=max_new, limit=args.questions,
)  # fmt: skip
prompts = [r.prompt for r in fitted.records]
n = len(prompts)
print(
    f"{n} sample dev questions, model {args.model}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
    f"load {os.getloadavg()[0]:.2f}, llama-cpp-python {'yes' if HAS_LLAMA_CPP else 'not installed'}",
    file=sys.stderr,
)


def greedy(m, tok) -> tuple[list[str], float]:
    start = time.perf_counter()
    gens = generate(m, tok, prompts, batch_size=args.batch_size, max_new_tokens=max_new, progress=False, chat_template=prompt.chat_template)
    return [g.sql for g in gens], time.perf_counter() - start


def llama_cpp_greedy(path: Path) -> tuple[list[str], float, int]:
    """llama.cpp's own tokenizer and sampler: temperature 0, no repeat penalty, the prompt as text."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=params.train.max_length + max_new, n_threads=os.cpu_count(), verbose=False)
    start, sqls, same_ids = time.perf_counter(), [], 0
    for p in prompts:
        ids = tokenizer(p)["input_ids"]
        same_ids += llm.tokenize(p.encode(), add_bos=True, special=True) == ids
        out = llm.create_completion(p, max_tokens=max_new, temperature=0.0, top_k=1, repeat_penalty=1.0, stop=[";", "###"])
        sqls.append(extract_sql(out["choices"][0]["text"]))
    return sqls, time.perf_counter() - start, same_ids


reference, hf_seconds = greedy(model, tokenizer)
del model
print(f"reference: HF merged fp32, {hf_seconds:.0f} s", file=sys.stderr)

rows = []
for quant in args.quants:
    path = out_dir / f"{Path(args.model).name}-{quant}.gguf"
    result = export_gguf(args.model, args.base, path, quant=quant)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if gguf_tok.pad_token is None:
        gguf_tok.pad_token = gguf_tok.eos_token
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    hf_sqls, hf_s = greedy(gguf_model, gguf_tok)
    del gguf_model
    row = [
        quant,
        f"{result.bytes / 2**20:.0f} MiB",
        f"{result.seconds:.0f} s",
        f"{sum(a == b for a, b in zip(hf_sqls, reference))}/{n}",
        f"{hf_s:.0f} s",
    ]
    if HAS_LLAMA_CPP:
        cpp_sqls, cpp_s, same_ids = llama_cpp_greedy(path)
        row += [f"{sum(a == b for a, b in zip(cpp_sqls, reference))}/{n}", f"{cpp_s:.0f} s", f"{same_ids}/{n}"]
    rows.append(row)
    print(" | ".join(row), file=sys.stderr)

header = ["quant", "file size", "export", "transformers: same SQL", "time"]
if HAS_LLAMA_CPP:
    header += ["llama.cpp: same SQL", "time", "llama.cpp: same prompt tokens"]
print(f"\nGreedy SQL of the GGUF against the HF merged model (fp32, {hf_seconds:.0f} s), {args.model}, {n} sample dev questions:\n")
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for row in rows:
    print("| " + " | ".join(row) + " |")
