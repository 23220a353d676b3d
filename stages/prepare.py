"""Spider-layout questions → data/prepared/{train,dev}.jsonl instruction records."""

from pathlib import Path

from sqlora.config import load_params
from sqlora.datasets import load_examples, load_schemas, record_dicts, subsample, to_records
from sqlora.errors import SqloraError, exit_on_error
from sqlora.io import write_jsonl

OUT = Path("data/prepared")


@exit_on_error
def main() -> None:
    params = load_params()
    source = Path(params.data.source)
    if not source.is_dir():
        raise SqloraError(f"params.yaml: 'data.source' {str(source)!r} is not a folder")
    schemas = load_schemas(source / "tables.json")
    splits = {
        # A seeded random subset of train; the first N of dev, so dev stays in its official order.
        "train": (params.data.train_file, params.data.max_train_examples, True),
        "dev": (params.data.dev_file, params.data.max_dev_examples, False),
    }
    prepared = {}
    for split, (filename, limit, shuffle) in splits.items():
        examples = load_examples(source / filename, schemas)
        examples = subsample(examples, limit, params.seed, shuffle)
        prepared[split] = to_records(examples, schemas, params.prompt.schema_format)
    for split, records in prepared.items():  # written only once every split has been read without error
        write_jsonl(OUT / f"{split}.jsonl", record_dicts(records))
        print(f"prepare: {len(records)} {split} records -> {OUT / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
