"""sqlora: the pipeline's steps as commands, for use outside DVC."""

from __future__ import annotations

import argparse
from pathlib import Path

from sqlora.errors import SqloraError, exit_on_error


def _sample(args: argparse.Namespace) -> None:
    from sqlora.sample import generate_sample

    print(generate_sample(args.out, seed=args.seed))


def _model(args: argparse.Namespace) -> None:
    from sqlora.models import materialize

    materialize(args.name, args.out)
    print(f"{args.name} -> {args.out}")


def _prepare(args: argparse.Namespace) -> None:
    from sqlora.datasets import load_examples, load_schemas, record_dicts, to_records
    from sqlora.io import write_jsonl

    source = Path(args.source)
    if not source.is_dir():
        raise SqloraError(f"--source {str(source)!r} is not a folder")
    schemas = load_schemas(source / "tables.json")
    question_file = args.file or {"train": "train.json", "dev": "dev.json"}[args.split]
    records = to_records(load_examples(source / question_file, schemas), schemas, args.schema_format)
    write_jsonl(args.out, record_dicts(records))
    print(f"{len(records)} records -> {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sqlora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="generate the embedded sample dataset in Spider layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=_sample)

    p = sub.add_parser("model", help="materialise a base model as a Hugging Face checkpoint folder")
    p.add_argument("--name", required=True, help="offline alias, local folder or hub id")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_model)

    p = sub.add_parser("prepare", help="Spider-layout questions -> JSONL instruction records")
    p.add_argument("--source", required=True, help="folder in Spider layout (tables.json, question files)")
    p.add_argument("--split", choices=["train", "dev"], default="dev")
    p.add_argument("--file", help="question file inside --source (default: train.json or dev.json)")
    p.add_argument("--schema-format", choices=["natural"], default="natural")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.set_defaults(func=_prepare)
    return parser


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
