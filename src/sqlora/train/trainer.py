"""Supervised fine-tuning: LoRA, QLoRA (4-bit NF4) or full, with the loss on the SQL only.

The train stage calls :func:`train`; it writes a *fine-tuned model folder* that the predict
stage loads with :func:`sqlora.infer.loading.load_for_inference`:

- ``sqlora_model.json``: ``{"method": ..., "base": ...}`` — what the folder holds;
- lora/qlora: the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``);
- full: a complete checkpoint; none: nothing else (the base model is used as it is).

The same code runs on one CPU or GPU and under ``accelerate launch`` (DDP, DeepSpeed, FSDP;
configs in ``configs/accelerate/``): the HF Trainer handles the distribution, and only the main
process writes the model folder, the metrics and the dvclive logs. Checkpoints go to
``checkpoint_dir`` every ``save_steps``; a run that was killed resumes from the last one when
started again with the same inputs (a fingerprint of them is kept beside the checkpoints).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import resource
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from sqlora.config import LoraParams, TrainParams
from sqlora.data.records import Record
from sqlora.errors import SqloraError
from sqlora.io import atomic_path, folder_stamp, run_fingerprint, write_json, write_text
from sqlora.model.loader import MODEL_INFO, device, dtype_name, load_base_model, load_tokenizer, machine, resolve_dtype, sharded_training
from sqlora.train.batches import response_loss, tokenize_records
from sqlora.train.prefix_batches import SharedPrefixSampler, choose_batching


def add_lora(model, params: LoraParams, method: str, gradient_checkpointing: bool = False, announce: bool = False):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    targets = params.target_modules
    experts = fused_experts(model)
    if targets == "all-linear" and experts and params.dropout:
        # peft adapts fused MoE expert weights (3-D parameters) only without dropout: keep the dropout,
        # adapt the linear layers (attention, shared MLPs) and leave the experts as they are.
        output = model.get_output_embeddings()
        targets = sorted({name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not output})
        if announce:
            print(
                f"train: lora.dropout {params.dropout}: peft cannot drop out on the fused MoE experts "
                f"({experts[0]}, ...), so LoRA adapts the {len(targets)} linear layers only; set lora.dropout: 0 "
                "to adapt the experts too"
            )
    config = LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # peft's message for target modules that match nothing
        raise SqloraError(f"params.yaml: 'lora.target_modules' {params.target_modules!r}: {str(exc).splitlines()[0]}") from None


def fused_experts(model) -> list[str]:
    """Modules holding MoE experts fused into 3-D weight tensors (transformers 5's Mixtral, Qwen3-MoE...)."""
    return [name for name, m in model.named_modules() if any(p.ndim == 3 for p in m.parameters(recurse=False))]


def training_weights_dtype(method: str, compute: torch.dtype) -> torch.dtype:
    """The dtype the base weights load in for training, ``compute`` being the matmuls' (autocast) dtype.

    - full: every weight is trained: fp32 master weights, always;
    - qlora: 4-bit weights whose matmuls run in ``compute`` (peft keeps the norms in fp32);
    - lora: fp32 adapters (peft keeps them in fp32) on frozen base weights, which on a GPU load in the
      compute dtype (half the memory) and on a CPU in fp32: its elementwise ops (norms, residual adds)
      run faster in fp32 than in bf16 and keep the residual stream exact, while the matmuls still run
      in bf16 under autocast.
    """
    if method == "qlora":
        return compute
    if method == "full" or device().type == "cpu":
        return torch.float32
    return compute


def peak_memory_mb() -> dict:
    if torch.cuda.is_available():
        return {
            "peak_gpu_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        }
    return {"peak_rss_mb": round(peak_rss_mb(), 1)}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB. Linux's VmHWM, not ru_maxrss: ru_maxrss is inherited
    across exec, so a stage started by a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; elsewhere the best there is


def step_logger(live, collator, world_size: int):
    """A Trainer callback logging each logged step's loss, learning rate, grad norm and tokens/s to
    dvclive at the Trainer's global step, so a resumed run continues the same curve. Main process
    only (``live`` is None elsewhere): otherwise every curve would be written once per process.

    It also counts the training time of a run across resumes: each checkpoint stores the seconds
    trained up to it (the Trainer's stateful callbacks, in trainer_state.json), and a run resumed
    from it starts from them (``earlier_seconds``)."""
    from transformers import TrainerCallback  # here: importing the Trainer costs seconds
    from transformers.trainer_callback import ExportableState

    class StepLogger(TrainerCallback, ExportableState):
        keys = ("loss", "learning_rate", "grad_norm", "tokens_per_s")

        def __init__(self):
            self.tokens, self.time = 0, time.perf_counter()
            self.started = self.time
            self.earlier_seconds = 0.0  # trained by the runs this one resumes, up to its checkpoint

        def seconds(self) -> float:
            """Training time up to now, earlier runs included."""
            return self.earlier_seconds + time.perf_counter() - self.started

        def state(self) -> dict:
            return {"args": {}, "attributes": {"earlier_seconds": round(self.seconds(), 3)}}

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = self.time = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if live is None or not logs or "loss" not in logs:
                return
            now, tokens = time.perf_counter(), collator.real_tokens
            # Real (unpadded) tokens since the last log; the other processes batch as many.
            logs["tokens_per_s"] = round((tokens - self.tokens) * world_size / max(now - self.time, 1e-9), 1)
            self.tokens, self.time = tokens, now
            live.step = state.global_step
            for key in self.keys:
                if key in logs:
                    live.log_metric(key, logs[key])
            live.make_summary()

    return StepLogger()


def epoch_validator(validate, live, tokenizer, attention):
    """A Trainer callback scoring the model on the validation split at the end of every epoch (main process;
    the others wait for it at their next step): ``validate(model, tokenizer)`` gives {"ex", ...}, logged to
    dvclive as ``validation_ex`` at the epoch's last step and kept per epoch, across resumes, in ``results``.
    ``attention``: the training attention (packed rows), left while the model generates."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class EpochValidator(TrainerCallback, ExportableState):
        def __init__(self):
            self.results: list[dict] = []

        def state(self) -> dict:
            return {"args": {}, "attributes": {"results": self.results}}

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            if live is None:
                return
            attention.__exit__(None, None, None)
            model.eval()
            try:
                result = {"epoch": round(state.epoch), "step": state.global_step, **validate(model, tokenizer)}
            finally:
                model.train()
                attention.__enter__()
            self.results.append(result)
            print(
                f"train: epoch {result['epoch']} validation EX {result['ex']:.4f} ({result['questions']} questions, {result['seconds']} s)"
            )
            live.step = state.global_step
            live.log_metric("validation_ex", result["ex"])
            live.make_summary()

    return EpochValidator()


def _drop_logged_steps_after(live_dir: Path, step: int) -> None:
    """Before resuming from the checkpoint at ``step``: forget what the killed run logged later, and
    a row it was killed while writing (fewer fields than the header). Rewritten atomically: a kill
    now must not cut the plots the resumed run appends to."""
    # Listed first: each atomic write makes and removes a temporary folder inside the tree walked.
    for tsv in sorted((live_dir / "plots" / "metrics").rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        header, rows = lines[0], lines[1:]
        write_text(tsv, "\n".join([header] + [r for r in rows if _logged_at_or_before(r, header, step)]) + "\n")


def _logged_at_or_before(row: str, header: str, step: int) -> bool:
    fields = row.split("\t")
    return len(fields) == len(header.split("\t")) and fields[0].isdigit() and int(fields[0]) <= step


def last_checkpoint(checkpoint_dir: Path, fingerprint: str) -> str | None:
    """The newest complete checkpoint written by a run with this fingerprint, if any.

    Complete: it holds ``trainer_state.json``, which the Trainer writes last. A run killed while
    saving leaves a newer ``checkpoint-N`` without it, which transformers' ``get_last_checkpoint``
    would pick and fail to resume from; such a folder is ignored here.
    """
    stamp = checkpoint_dir / "fingerprint.txt"
    if not checkpoint_dir.is_dir() or not stamp.is_file() or stamp.read_text().strip() != fingerprint:
        return None
    steps = {
        int(match.group(1)): path
        for path in checkpoint_dir.iterdir()
        if (match := re.fullmatch(r"checkpoint-(\d+)", path.name)) and (path / "trainer_state.json").is_file()
    }
    return str(steps[max(steps)]) if steps else None


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
    checkpoint_dir: str | Path | None = None,
    chat_template: bool = False,
    dtype: str = "auto",
    about: dict | None = None,
    validate: Callable[..., dict] | None = None,
) -> dict:
    """Fine-tune ``base_dir`` on ``records``; write the fine-tuned model folder and training metrics.

    ``about`` goes into ``sqlora_model.json`` too: the base model's name and the prompt settings the
    model was trained with, so that ``sqlora ask`` prompts it the same way, wherever the folder goes.

    With ``checkpoint_dir``, checkpoints are kept there every ``params.save_steps`` steps and a
    previous run with the same inputs that did not finish is resumed from its last one. ``dtype``
    (``model.dtype``) is the precision of the matmuls: see :func:`training_weights_dtype`.
    ``validate(model, tokenizer)`` (e.g. :class:`sqlora.evaluate.validation.Validator`): run at the end of
    every epoch, its results logged (``validation_ex``) and kept in the metrics.
    """
    from accelerate import PartialState

    # Joins the process group when started by accelerate launch / torchrun (gloo on CPU).
    state = PartialState(cpu=device().type == "cpu")
    base_dir = Path(base_dir)
    info = {"method": method, "base": str(base_dir), **(about or {})}
    if method == "none":  # zero-shot: nothing to train, predict uses the base model
        return _zero_shot(info, state, out_dir, metrics_path, live_dir, checkpoint_dir)

    from transformers import set_seed

    if not records:
        raise SqloraError("train: the training set is empty")
    set_seed(seed)
    tokenizer = load_tokenizer(base_dir)
    data = _training_data(records, tokenizer, params.max_length, chat_template, announce=state.is_main_process)

    compute = resolve_dtype(dtype)
    if compute == torch.float16 and device().type != "cuda":
        raise SqloraError("model.dtype float16: fp16 training (with loss scaling) runs on CUDA GPUs only; use bfloat16 or float32")
    fingerprint = run_fingerprint(
        method=method,
        base=folder_stamp(base_dir),
        lora=asdict(lora),
        dtype=dtype_name(compute),
        train={k: v for k, v in asdict(params).items() if k not in ("launch", "logging_steps")},
        seed=seed,
        chat_template=chat_template,
        world_size=state.num_processes,
        data=hashlib.sha256(json.dumps(data.features).encode()).hexdigest(),
    )
    checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resume = _resume_point(checkpoints, fingerprint, params.save_steps, state)
    saving = Path(out_dir).with_name(f".{Path(out_dir).name}.saving")  # the model folder, until complete
    # Before the model is loaded: under DeepSpeed ZeRO-3 the arguments set up zero.Init, which then
    # loads each process's shard of the weights instead of a whole copy per process.
    args = training_arguments(
        params, seed, compute, checkpoints if checkpoints is not None else saving, saving_checkpoints=checkpoints is not None
    )
    weights = training_weights_dtype(method, compute)
    model = _trainable_model(base_dir, method, lora, weights, params.gradient_checkpointing, announce=state.is_main_process)
    # Counted before the Trainer wraps the model (FSDP and ZeRO-3 shard the weights then).
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    # Under FSDP / ZeRO-3 the weights are shards until the Trainer wraps the model: no probe forward then.
    batching = choose_batching(
        model,
        data.features,
        params.shared_prefix,
        params.batch_size,
        seed,
        probe=not sharded_training(),
        data_parallel=args.n_gpu > 1,
    )
    if state.is_main_process:
        print(batching.describe(params.shared_prefix))
    collator = batching.collator(tokenizer)
    live = _curves(Path(live_dir), resume) if state.is_main_process else None
    logger = step_logger(live, collator, state.num_processes)
    attention = batching.attention(model)
    validator = epoch_validator(validate, live, tokenizer, attention) if validate is not None else None
    trainer = trainer_class(batching.sampler)(
        model=model,
        args=args,
        train_dataset=batching.dataset(data.features),
        data_collator=collator,
        compute_loss_func=response_loss,
        callbacks=[logger] + [validator] * (validator is not None),
    )
    start = time.perf_counter()
    with attention:
        result = trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - start
    # A resume replaces the callbacks with copies restored from the checkpoint (earlier_seconds, results).
    logger = next(cb for cb in trainer.callback_handler.callbacks if type(cb) is type(logger))
    if validator is not None:
        validator = next(cb for cb in trainer.callback_handler.callbacks if type(cb) is type(validator))
    if live is not None:
        live.end()

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if not all(math.isfinite(v) for v in losses + [result.training_loss]):
        raise SqloraError(f"train: the loss diverged (last values {losses[-3:]}); lower train.learning_rate")
    metrics = {
        "method": method,
        "device": device().type,
        "machine": machine(),
        "dtype": dtype_name(compute),  # the matmuls' precision (autocast); trained weights are fp32
        "weights_dtype": dtype_name(weights),  # the base weights' (frozen for lora; 4-bit storage for qlora)
        "processes": state.num_processes,
        "train_examples": len(data.features),
        "too_long_examples": data.too_long,
        "epochs": params.epochs,
        "steps": trainer.state.global_step,
        "resumed_from_step": int(Path(resume).name.split("-")[-1]) if resume else 0,
        "train_loss": round(result.training_loss, 4),
        "final_loss": round(losses[-1], 4) if losses else None,
        "min_loss": round(min(losses), 4) if losses else None,
        "wall_time_s": round(wall, 1),  # this run's (after a resume: since the resume)
        "total_wall_time_s": round(logger.earlier_seconds + wall, 1),  # every run of this training, resumes included
        # Questions per shared-prefix row (1: separate rows), and why fewer than train.shared_prefix asks.
        "shared_prefix": batching.per_row,
        "shared_prefix_reason": batching.reason,
        **_throughput(collator, wall),
        **(_validation_metrics(validator.results) if validator is not None else {}),
        "trainable_params": trainable,
        "total_params": total,
        **peak_memory_mb(),
    }
    _save(trainer, tokenizer, info, Path(out_dir), saving, state)
    if state.is_main_process:
        write_json(metrics_path, metrics)
        print(json.dumps(metrics, indent=2))
        if checkpoints is not None:  # finished: nothing to resume
            for old in checkpoints.glob("checkpoint-*"):
                shutil.rmtree(old)
    state.wait_for_everyone()
    return metrics


def _training_data(records: list[Record], tokenizer, max_length: int, chat_template: bool, announce: bool):
    """The records tokenised for training; those over ``max_length`` left out (said), none left an error."""
    data = tokenize_records(records, tokenizer, max_length, chat_template)
    if not data.features:
        raise SqloraError(f"train: all {len(records)} examples are longer than train.max_length={max_length} tokens")
    if data.too_long and announce:
        print(f"train: left out {data.too_long} of {len(records)} examples longer than {max_length} tokens")
    return data


def _trainable_model(base_dir: Path, method: str, lora: LoraParams, weights: torch.dtype, checkpointing: bool, announce: bool):
    """The base model in ``weights``, with LoRA adapters for lora and qlora (full: every weight trains)."""
    model = load_base_model(base_dir, method, weights)
    if method in ("lora", "qlora"):
        model = add_lora(model, lora, method, checkpointing, announce=announce)
    return model


def _curves(live_dir: Path, resume: str | None):
    """dvclive's logger; a resumed run first forgets what the killed one logged after its checkpoint."""
    from dvclive import Live

    if resume:
        _drop_logged_steps_after(live_dir, int(Path(resume).name.split("-")[-1]))
    return Live(str(live_dir), save_dvc_exp=False, dvcyaml=False, resume=resume is not None)


def _zero_shot(info: dict, state, out_dir, metrics_path, live_dir, checkpoint_dir) -> dict:
    """method none: the model folder names the base model alone, and the stage's outputs exist."""
    metrics = {"method": info["method"], "device": device().type, "train_examples": 0, "steps": 0}
    if state.is_main_process:
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            write_json(tmp / MODEL_INFO, info)
        # No curves, no checkpoints: but the stage's declared outputs exist (DVC fails on a missing one).
        # The curves folder is persisted for resumes: empty it, or `dvc plots` would show an
        # earlier run's curves as this run's.
        shutil.rmtree(live_dir, ignore_errors=True)
        Path(live_dir).mkdir(parents=True)
        if checkpoint_dir is not None:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        write_json(metrics_path, metrics)
    return metrics


def _resume_point(checkpoints: Path | None, fingerprint: str, save_steps: int, state) -> str | None:
    """The checkpoint an interrupted run with the same inputs left, if any; otherwise the checkpoint
    folder is emptied and stamped with this run's fingerprint (by the main process)."""
    resume = last_checkpoint(checkpoints, fingerprint) if checkpoints is not None and save_steps else None
    if checkpoints is not None and state.is_main_process and resume is None:
        shutil.rmtree(checkpoints, ignore_errors=True)  # another run's checkpoints, or none: start afresh
        checkpoints.mkdir(parents=True)
        write_text(checkpoints / "fingerprint.txt", fingerprint + "\n")  # whole or absent: what resuming trusts
    state.wait_for_everyone()
    if resume and state.is_main_process:
        print(f"train: resuming from {resume}")
    return resume


def training_arguments(params: TrainParams, seed: int, compute: torch.dtype, output_dir: Path, saving_checkpoints: bool):
    """transformers' TrainingArguments for ``params`` (train.*), matmuls in ``compute``."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum,
        activation_checkpointing=params.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=params.weight_decay,
        logging_steps=params.logging_steps,
        save_strategy="steps" if saving_checkpoints and params.save_steps else "no",
        save_steps=params.save_steps or 1,
        save_total_limit=2,
        restore_callback_states_from_checkpoint=True,  # the training time of earlier runs (StepLogger)
        report_to=[],
        seed=seed,
        data_seed=seed,
        # Mixed precision: the matmuls under autocast in bf16 (fp16 with loss scaling), the weights
        # being trained kept in fp32.
        bf16=compute == torch.bfloat16,
        fp16=compute == torch.float16,
        # Batches of similar lengths: little compute spent on padding.
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # LoRA leaves most parameters frozen, not unused
        use_cpu=device().type == "cpu",
        disable_tqdm=not os.isatty(2),
    )


def _throughput(collator, wall: float) -> dict:
    """This run's tokens (after a resume: since the resume), over every process. tokens: the examples' own
    (prompt + SQL, as separate rows would hold them); tokens_computed: what the forward passes ran, padding included."""
    real_tokens, row_tokens, padded_tokens, examples = (
        _sum_over_processes(n) for n in (collator.real_tokens, collator.row_tokens, collator.padded_tokens, collator.examples)
    )
    return {
        "tokens": real_tokens,
        "tokens_computed": padded_tokens,
        "tokens_per_s": round(real_tokens / wall, 1),
        "questions_per_s": round(examples / wall, 3),
        "padding_fraction": round(1 - row_tokens / padded_tokens, 4) if padded_tokens else 0.0,
    }


def _save(trainer, tokenizer, info: dict, out_dir: Path, saving: Path, state) -> None:
    """The fine-tuned model folder: written whole beside ``out_dir``, then renamed into place."""
    # Every process takes part in saving (DeepSpeed ZeRO-3 and FSDP gather the weights); the
    # main one writes, then renames the finished folder into place.
    if state.is_main_process:
        shutil.rmtree(saving, ignore_errors=True)
    state.wait_for_everyone()
    if trainer.is_fsdp_enabled:  # one full state dict, not one shard per process
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(saving))  # the adapter only for LoRA/QLoRA
    if state.is_main_process:
        tokenizer.save_pretrained(saving)
        write_json(saving / MODEL_INFO, info)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(saving, out_dir)


def _validation_metrics(results: list[dict]) -> dict:
    """Each epoch's validation result, the last EX and the epoch with the best (the first of equals)."""
    if not results:
        return {"validation": []}
    best = max(results, key=lambda r: r["ex"])
    return {
        "validation": results,
        "validation_ex": results[-1]["ex"],
        "best_validation_epoch": best["epoch"],
        "validation_seconds": round(sum(r["seconds"] for r in results), 1),  # inside wall_time_s
    }


def trainer_class(sampler: SharedPrefixSampler | None):
    """transformers' Trainer, or for shared-prefix rows one that draws its steps from ``sampler`` and tells
    it each epoch (also the epoch a resumed run starts in: its order is replayed, then skipped through)."""
    from transformers import Trainer

    if sampler is None:
        return Trainer

    class SharedPrefixTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return sampler

        def _run_epoch(self, *args, **kwargs):
            sampler.set_epoch(inspect.signature(super()._run_epoch).bind(*args, **kwargs).arguments["epoch"])
            return super()._run_epoch(*args, **kwargs)

    return SharedPrefixTrainer


def _sum_over_processes(value: int) -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = torch.tensor([value], dtype=torch.long)
        if torch.distributed.get_backend() == "nccl":
            tensor = tensor.to(device())
        torch.distributed.all_reduce(tensor)
        return int(tensor.item())
    return value
