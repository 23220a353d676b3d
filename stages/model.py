"""Materialise the base model (offline alias, local folder or hub id) as a checkpoint folder in models/base."""

from sqlora.config import load_params
from sqlora.errors import exit_on_error
from sqlora.model.loader import materialize


@exit_on_error
def main() -> None:
    params = load_params()
    materialize(params.model.name, "models/base")
    print(f"model: {params.model.name} -> models/base")


if __name__ == "__main__":
    main()
