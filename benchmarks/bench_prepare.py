"""Time prepare on all of Spider train + dev (8034 questions), tokenizer statistics included.

Target (issue 3): at most 30 s on 2 CPU cores. Usage: make bench-prepare [SPIDER=path] [MODEL=folder]
"""

import argparse
import time

from sqlora.config import DataParams, PromptParams
from sqlora.data.prepare import prepare_split
from sqlora.model.loader import load_tokenizer

TARGET_S = 30.0

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--spider", default="../shared/datasets/spider")
parser.add_argument("--model", default="models/base", help="checkpoint folder whose tokenizer measures lengths")
parser.add_argument("--schema-format", default="natural")
args = parser.parse_args()

start = time.perf_counter()
tokenizer = load_tokenizer(args.model)
data, prompt = DataParams(dataset="spider", source=args.spider), PromptParams(schema_format=args.schema_format)
total = 0
for split, reserve in [("train", None), ("dev", 128)]:
    _, fitted, stats = prepare_split(split, data, prompt, tokenizer=tokenizer, max_length=512, reserve=reserve)
    total += stats["questions"]
    print(f"{split}: {stats}")
elapsed = time.perf_counter() - start
print(
    f"prepare {total} questions ({args.schema_format}): {elapsed:.1f} s; target {TARGET_S:.0f} s; ratio {elapsed / TARGET_S:.2f} of the budget"
)
