"""Generate SQL for every dev question: predictions/dev.sql (one per line) and predictions/dev.jsonl."""

import time
from dataclasses import asdict
from pathlib import Path

from sqlora.config import load_params
from sqlora.datasets import load_records
from sqlora.errors import exit_on_error
from sqlora.generation import generate, load_for_inference
from sqlora.io import write_jsonl, write_text

OUT = Path("predictions")


@exit_on_error
def main() -> None:
    params = load_params()
    records = load_records("data/prepared/dev.jsonl")
    model, tokenizer = load_for_inference("models/finetuned", "models/base")
    start = time.perf_counter()
    generations = generate(
        model, tokenizer, [r.prompt for r in records], params.predict.batch_size, params.predict.max_new_tokens,
        chat_template=params.prompt.chat_template,
    )
    seconds = time.perf_counter() - start
    write_jsonl(OUT / "dev.jsonl", [{"db_id": r.db_id, **asdict(g)} for r, g in zip(records, generations)])
    write_text(OUT / "dev.sql", "".join(g.sql + "\n" for g in generations))
    print(f"predict: {len(records)} questions in {seconds:.1f} s ({seconds / max(len(records), 1):.2f} s/question)")


if __name__ == "__main__":
    main()
