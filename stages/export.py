"""Merge the fine-tuned model into its base: models/exported, a standalone Hugging Face checkpoint to deploy."""

from sqlora.config import load_params
from sqlora.errors import exit_on_error
from sqlora.model.export import export_model


@exit_on_error
def main() -> None:
    params = load_params()
    result = export_model("models/finetuned", "models/base", "models/exported", dtype=params.model.dtype)
    print(f"export: {result.method} model -> {result.out_dir} ({result.parameters:,} parameters, {result.dtype}, {result.seconds:.1f} s)")


if __name__ == "__main__":
    main()
