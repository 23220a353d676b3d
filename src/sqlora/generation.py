"""SQL generation: load a fine-tuned model folder, generate in length-sorted batches, extract the SQL."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from sqlora.models import device, load_tokenizer, read_model_info
from sqlora.prompt import encode_prompt
from sqlora.training import load_base_model


@dataclass(frozen=True)
class Generation:
    sql: str  # the extracted statement, one line ("" when nothing usable came out)
    raw: str  # what the model wrote after the prompt
    new_tokens: int
    hit_max_new_tokens: bool


def load_for_inference(finetuned_dir: str | Path, base_dir: str | Path):
    """The model described by a train-stage folder: base + adapter, a full checkpoint, or the base alone."""
    finetuned_dir = Path(finetuned_dir)
    method = read_model_info(finetuned_dir)["method"]
    if method == "full":
        model = load_base_model(finetuned_dir, "full")
        tokenizer = load_tokenizer(finetuned_dir)
    else:
        model = load_base_model(base_dir, method)
        tokenizer = load_tokenizer(base_dir)
        if method in ("lora", "qlora"):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, finetuned_dir)
    if method != "qlora":  # a 4-bit model was loaded onto its device
        model = model.to(device())
    model.eval()
    return model, tokenizer


_FENCE = re.compile(r"```(?:sql)?\s*(.*?)(?:```|$)", re.S | re.I)


def extract_sql(text: str) -> str:
    """The first SQL statement of a generation, on one line: code fences, chat residue and trailing text removed."""
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    text = text.split(";")[0]
    # A statement ends at a blank line or at a new "###" section the model starts on its own.
    text = re.split(r"\n\s*\n|###|<\|", text)[0]
    return " ".join(text.split())


@torch.inference_mode()
def generate(
    model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, progress: bool = True, chat_template: bool = False
) -> list[Generation]:
    """Greedy generation in batches of similar prompt lengths (left-padded, KV cache), in input order."""
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    encoded = [encode_prompt(tokenizer, p, chat_template) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: list[Generation | None] = [None] * len(prompts)
    dev = device()
    with tqdm(total=len(prompts), desc="predict", unit="q", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            output = model.generate(
                input_ids=padded["input_ids"].to(dev),
                attention_mask=padded["attention_mask"].to(dev),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = output[:, padded["input_ids"].shape[1] :]
            for row, i in enumerate(batch):
                ids = new[row].tolist()
                # Finished rows are padded with pad = EOS (or pad): cut at the first EOS.
                ended = tokenizer.eos_token_id in ids
                n = ids.index(tokenizer.eos_token_id) + 1 if ended else len(ids)
                raw = tokenizer.decode(ids[:n], skip_special_tokens=True)
                results[i] = Generation(sql=extract_sql(raw), raw=raw, new_tokens=n, hit_max_new_tokens=not ended)
            bar.update(len(batch))
    return results  # type: ignore[return-value]
