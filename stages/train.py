"""Fine-tune the base model on data/prepared/train.jsonl (method: lora | qlora | full | none); with a
validation split (data.validation), score validation EX at the end of every epoch.

Runs as it is under `accelerate launch` (train.launch in params.yaml) for several GPUs or nodes.
A run killed mid-way resumes from models/checkpoints when the stage runs again.
"""

from dataclasses import asdict
from pathlib import Path

from sqlora.config import load_params
from sqlora.data.records import load_records, read_meta
from sqlora.errors import SqloraError, exit_on_error
from sqlora.evaluate.validation import Validator
from sqlora.train.trainer import train

VALIDATION = "data/prepared/validation.jsonl"


@exit_on_error
def main() -> None:
    params = load_params()
    # Written by the prepare stage (empty without data.validation); absent where an older prepare made data/prepared.
    validation = load_records(VALIDATION) if Path(VALIDATION).is_file() else []
    meta = read_meta("data/prepared/meta.json") if validation else {}
    if validation and "validation_database_dir" not in meta:
        raise SqloraError("data/prepared/meta.json: missing key 'validation_database_dir'; rerun the prepare stage")
    validate = Validator(
        validation, Path(meta["validation_database_dir"]), VALIDATION, bird=meta["dataset"] == "bird",
        max_new_tokens=params.predict.max_new_tokens, chat_template=params.prompt.chat_template,
    ) if validation else None  # fmt: skip
    train(
        method=params.method,
        base_dir="models/base",
        records=load_records("data/prepared/train.jsonl"),
        out_dir="models/finetuned",
        lora=params.lora,
        params=params.train,
        seed=params.seed,
        metrics_path="metrics/train.json",
        live_dir="dvclive",
        checkpoint_dir="models/checkpoints",
        chat_template=params.prompt.chat_template,
        dtype=params.model.dtype,
        # What prompting it again needs: the base model, the prompt settings, and the length budget its
        # prompts were fitted to (train.max_length: `make published` prepares dev with it).
        about={"model": params.model.name, "prompt": asdict(params.prompt), "max_length": params.train.max_length},
        validate=validate,
    )


if __name__ == "__main__":
    main()
