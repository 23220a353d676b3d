"""Supervised fine-tuning: LoRA, QLoRA (4-bit NF4) or full, with the loss on the SQL only.

The train stage calls :func:`train`; it writes a *fine-tuned model folder* that the predict
stage loads with :func:`sqlora.generation.load_for_inference`:

- ``sqlora_model.json``: ``{"method": ..., "base": ...}`` — what the folder holds;
- lora/qlora: the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``);
- full: a complete checkpoint; none: nothing else (the base model is used as it is).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sqlora.config import LoraParams, TrainParams
from sqlora.errors import SqloraError
from sqlora.io import atomic_path, write_json
from sqlora.models import compute_dtype, device, load_tokenizer
from sqlora.prompt import Record, encode_prompt, encode_response

MODEL_INFO = "sqlora_model.json"
IGNORE_INDEX = -100  # label value the loss skips: prompt tokens and padding


@dataclass(frozen=True)
class TokenizedSet:
    features: list[dict]  # input_ids, attention_mask, labels
    too_long: int  # examples left out because prompt + SQL exceed max_length

    @property
    def tokens(self) -> int:
        return sum(len(f["input_ids"]) for f in self.features)


def tokenize_records(records: list[Record], tokenizer, max_length: int, chat_template: bool = False) -> TokenizedSet:
    """Prompt + SQL + EOS, with labels masked on the prompt so the loss is on the response only."""
    features, too_long = [], 0
    for record in records:
        prompt = encode_prompt(tokenizer, record.prompt, chat_template)
        response = encode_response(tokenizer, record.output)
        if len(prompt) + len(response) > max_length:
            too_long += 1  # never cut: a truncated SQL target would teach the model wrong SQL
            continue
        ids = prompt + response
        features.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * len(prompt) + response}
        )
    return TokenizedSet(features=features, too_long=too_long)


def predicted_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is a label in some row: the only logits the loss needs."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


class ResponseCollator:
    """Dynamic padding, plus ``logits_to_keep`` so the model projects onto the vocabulary only where
    the loss looks: on the SQL, not on the (much longer) schema prompt. Saves most of the LM-head
    compute and nearly all of the logits memory."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        self.pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

    def __call__(self, features: list[dict]) -> dict:
        batch = self.pad(features)
        batch["logits_to_keep"] = predicted_positions(batch["labels"])
        return batch


def response_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Next-token cross-entropy on the kept positions, summed and divided by the number of label tokens
    (over the whole accumulated batch when the Trainer passes it), as transformers' own causal-LM loss."""
    targets = labels[:, predicted_positions(labels) + 1]
    logits = outputs.logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    return loss / count


def quantization_config():
    """bitsandbytes 4-bit NF4 with double quantisation; bf16 compute on GPU, fp32 on CPU."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )


def load_base_model(base_dir: str | Path, method: str):
    from transformers import AutoModelForCausalLM

    if method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise SqloraError("method 'qlora' needs bitsandbytes: pip install bitsandbytes") from None
        return AutoModelForCausalLM.from_pretrained(
            base_dir, quantization_config=quantization_config(), dtype=compute_dtype(), device_map={"": device()}
        )
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=compute_dtype()).to(device())


def add_lora(model, params: LoraParams, method: str):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=params.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # peft's message for target modules that match nothing
        raise SqloraError(f"params.yaml: 'lora.target_modules' {params.target_modules!r}: {str(exc).splitlines()[0]}") from None


def peak_memory_mb() -> dict:
    if torch.cuda.is_available():
        return {
            "peak_gpu_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        }
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # ru_maxrss is KiB on Linux


def train(
    *,
    method: str,
    base_dir: str | Path,
    records: list[Record],
    out_dir: str | Path,
    lora: LoraParams,
    params: TrainParams,
    seed: int,
    metrics_path: str | Path,
    live_dir: str | Path,
    chat_template: bool = False,
) -> dict:
    """Fine-tune ``base_dir`` on ``records``; write the fine-tuned model folder and training metrics."""
    base_dir = Path(base_dir)
    info = {"method": method, "base": str(base_dir)}
    if method == "none":  # zero-shot: nothing to train, predict uses the base model
        metrics = {"method": method, "device": device().type, "train_examples": 0, "steps": 0}
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            write_json(tmp / MODEL_INFO, info)
        Path(live_dir).mkdir(parents=True, exist_ok=True)  # no curves, but the stage's declared output exists
        write_json(metrics_path, metrics)
        return metrics

    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.integrations import DVCLiveCallback
    from dvclive import Live

    if not records:
        raise SqloraError("train: the training set is empty")
    set_seed(seed)
    tokenizer = load_tokenizer(base_dir)
    data = tokenize_records(records, tokenizer, params.max_length, chat_template)
    if not data.features:
        raise SqloraError(
            f"train: all {len(records)} examples are longer than train.max_length={params.max_length} tokens"
        )
    if data.too_long:
        print(f"train: left out {data.too_long} of {len(records)} examples longer than {params.max_length} tokens")

    model = load_base_model(base_dir, method)
    if method in ("lora", "qlora"):
        model = add_lora(model, lora, method)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    use_bf16 = compute_dtype() == torch.bfloat16
    with atomic_path(out_dir) as tmp:
        args = TrainingArguments(
            output_dir=str(tmp / "checkpoints"),
            num_train_epochs=params.epochs,
            per_device_train_batch_size=params.batch_size,
            gradient_accumulation_steps=params.grad_accum,
            learning_rate=params.learning_rate,
            lr_scheduler_type=params.lr_scheduler,
            warmup_steps=params.warmup_ratio,  # a float < 1 is a ratio of the total steps
            weight_decay=params.weight_decay,
            logging_steps=params.logging_steps,
            save_strategy="no",
            report_to=[],
            seed=seed,
            data_seed=seed,
            bf16=use_bf16,
            # Batches of similar lengths: little compute spent on padding.
            train_sampling_strategy="group_by_length",
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
            remove_unused_columns=False,
            disable_tqdm=not os.isatty(2),
        )
        live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=False)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data.features,
            data_collator=ResponseCollator(tokenizer),
            compute_loss_func=response_loss,
            callbacks=[DVCLiveCallback(live=live)],
        )
        start = time.perf_counter()
        result = trainer.train()
        wall = time.perf_counter() - start
        live.end()

        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if not all(math.isfinite(v) for v in losses + [result.training_loss]):
            raise SqloraError(f"train: the loss diverged (last values {losses[-3:]}); lower train.learning_rate")
        shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MODEL_INFO, info)

    tokens_seen = data.tokens * params.epochs
    metrics = {
        "method": method,
        "device": device().type,
        "train_examples": len(data.features),
        "too_long_examples": data.too_long,
        "epochs": params.epochs,
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 4),
        "final_loss": round(losses[-1], 4) if losses else None,
        "min_loss": round(min(losses), 4) if losses else None,
        "wall_time_s": round(wall, 1),
        "tokens": int(tokens_seen),
        "tokens_per_s": round(tokens_seen / wall, 1),
        "trainable_params": trainable,
        "total_params": total,
        **peak_memory_mb(),
    }
    write_json(metrics_path, metrics)
    print(json.dumps(metrics, indent=2))
    return metrics
