"""train: LoRA, QLoRA or full fine-tuning with transformers and peft, resumable from checkpoints."""
