"""Generate the embedded sample dataset (Spider layout) into data/sample."""

from sqlora.config import load_params
from sqlora.data.sample import generate_sample
from sqlora.errors import exit_on_error


@exit_on_error
def main() -> None:
    params = load_params()
    counts = generate_sample("data/sample", seed=params.seed)
    print(f"sample: {counts}")


if __name__ == "__main__":
    main()
