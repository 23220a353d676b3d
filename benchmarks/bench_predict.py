"""Batched prediction against the seed's one-prompt-at-a-time loop: same model, same Spider dev questions.

Target (issue 6): identical greedy SQL, and the batched path at least 8x faster per example on 2 CPU
cores. Usage: make bench-predict [ARGS="--questions 64 --threads 2"]

- prompts: Spider dev prepared by the project's own code (natural schema, 512-token budget with 128
  reserved for generation), the first --questions records;
- model: the fine-tuned folder as the predict stage loads it (LoRA merged into the base in memory, as
  DB-GPT-Hub's inference does too), or any folder --model names (e.g. models/exported, loaded in fp32);
  both paths use the very same model object;
- seed loop (DB-GPT-Hub's predict): for each prompt, model.generate(max_new_tokens) alone, greedy, no
  batching, no stop at the end of the SQL (it runs to EOS or max_new_tokens), then extract_sql;
- ours: sqlora.generation.generate, the predict stage's path (shared prefixes, rows leaving as they end).
Both are timed after one warm-up call each, in the same process, seed loop first.
"""

import argparse
import os
import sys
import time

import torch

from sqlora.config import DataParams, PredictParams, PromptParams
from sqlora.generation import extract_sql, generate, load_for_inference
from sqlora.preparation import prepare_split
from sqlora.prompt import encode_prompt

TARGET = 8.0

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--spider", default="../shared/datasets/spider")
parser.add_argument("--questions", type=int, default=64, help="the first N Spider dev questions")
parser.add_argument("--model", default="models/finetuned", help="a train-stage folder, an export or any checkpoint folder")
parser.add_argument("--base", default="models/base")
parser.add_argument("--batch-size", type=int, default=PredictParams.batch_size)
parser.add_argument("--max-new-tokens", type=int, default=PredictParams.max_new_tokens)
parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
parser.add_argument("--show", type=int, default=3, help="print the first N differing SQL pairs")
args = parser.parse_args()

if args.threads:
    torch.set_num_threads(args.threads)
model, tokenizer = load_for_inference(args.model, args.base)
_, fitted, _ = prepare_split(
    "dev", DataParams(dataset="spider", source=args.spider), PromptParams(), tokenizer=tokenizer,
    max_length=512, reserve=128, limit=args.questions,
)
prompts = [r.prompt for r in fitted.records]
print(
    f"{len(prompts)} Spider dev questions on {len({r.db_id for r in fitted.records})} databases, "
    f"model {args.model} ({model.dtype}), {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
)


@torch.inference_mode()
def seed_loop(prompts: list[str]) -> list[str]:
    sqls = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=model.device)
        output = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens, do_sample=False,
            num_beams=1, pad_token_id=tokenizer.pad_token_id,
        )
        sqls.append(extract_sql(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)))
    return sqls


def ours(prompts: list[str]):
    return generate(model, tokenizer, prompts, args.batch_size, args.max_new_tokens, progress=False)


seed_loop(prompts[:1])  # warm-up: first-call allocations and lazy initialisation, for both
ours(prompts[:2])

start = time.perf_counter()
seed_sqls = seed_loop(prompts)
seed_s = (time.perf_counter() - start) / len(prompts)
start = time.perf_counter()
generations = ours(prompts)
ours_s = (time.perf_counter() - start) / len(prompts)

different = [(i, a, g.sql) for i, (a, g) in enumerate(zip(seed_sqls, generations)) if a != g.sql]
stops = {s: sum(g.stop == s for g in generations) for s in ("eos", "sql_end", "max_new_tokens")}
ratio = seed_s / ours_s
print(f"seed loop (one at a time): {seed_s:.3f} s/example")
print(f"batched (batch_size {args.batch_size}): {ours_s:.3f} s/example; rows ended by {stops}")
print(f"speedup {ratio:.2f}x (target {TARGET:.0f}x: {'met' if ratio >= TARGET else 'NOT met'}); load {os.getloadavg()[0]:.2f}")
print(f"identical SQL: {len(prompts) - len(different)}/{len(prompts)}")
for i, a, b in different[: args.show]:
    print(f"  #{i}\n    seed: {a}\n    ours: {b}")
sys.exit(1 if different else 0)
