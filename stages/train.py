"""Fine-tune the base model on data/prepared/train.jsonl (method: lora | qlora | full | none).

Runs as it is under `accelerate launch` (train.launch in params.yaml) for several GPUs or nodes.
A run killed mid-way resumes from models/checkpoints when the stage runs again.
"""

from dataclasses import asdict

from sqlora.config import load_params
from sqlora.data.records import load_records
from sqlora.errors import exit_on_error
from sqlora.train.trainer import train


@exit_on_error
def main() -> None:
    params = load_params()
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
        about={"model": params.model.name, "prompt": asdict(params.prompt)},
    )


if __name__ == "__main__":
    main()
