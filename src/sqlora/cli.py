"""sqlora: the pipeline's steps as commands, for use outside DVC."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from sqlora.config import DATASETS, DTYPES, SCHEMA_FORMATS
from sqlora.data.schema import database_path
from sqlora.errors import SqloraError, exit_on_error
from sqlora.evaluate.execution import ETYPES
from sqlora.report.runs import REPORT_FILE


def _gate(args: argparse.Namespace) -> None:
    from sqlora.config import load_params
    from sqlora.report.gate import check, diff_table

    max_drop = load_params(args.params).gate.max_drop
    checks = check(max_drop, args.rev)
    print(f"dvc metrics diff {args.rev} (committed baseline -> this run):\n")
    print(diff_table(args.rev))
    for c in checks:
        print(c.line())
    failed = [c.metric for c in checks if not c.passed]
    if failed:
        print(f"gate: FAILED: {', '.join(failed)} fell more than {max_drop * 100:.1f} points below {args.rev}", file=sys.stderr)
        sys.exit(1)
    print(f"gate: passed ({', '.join(c.metric for c in checks)} within {max_drop * 100:.1f} points of {args.rev})")


def _sample(args: argparse.Namespace) -> None:
    from sqlora.data.sample import generate_sample

    print(generate_sample(args.out, seed=args.seed))


def _model(args: argparse.Namespace) -> None:
    from sqlora.model.loader import materialize

    materialize(args.name, args.out)
    print(f"{args.name} -> {args.out}")


def _prepare(args: argparse.Namespace) -> None:
    from sqlora.config import DataParams, PromptParams
    from sqlora.data.prepare import prepare_split
    from sqlora.data.records import record_dicts
    from sqlora.io import write_jsonl
    from sqlora.model.loader import load_tokenizer

    for flag, path in (("--source", args.source), ("--schema-source", args.schema_source)):
        if path and not Path(path).exists():
            raise SqloraError(f"{flag} {path!r}: no such folder or file")
    data = DataParams(dataset=args.dataset, source=args.source, schema_source=args.schema_source or "", skip_bad=args.skip_bad)
    prompt = PromptParams(schema_format=args.schema_format, sample_rows=args.sample_rows, history_sql=args.history_sql, values=args.values)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    reserve = None if args.split == "train" else args.reserve
    with tempfile.TemporaryDirectory() as work_dir:  # WikiSQL's Spider-layout conversion
        split, fitted, stats = prepare_split(
            args.split,
            data,
            prompt,
            tokenizer=tokenizer,
            max_length=args.max_length,
            reserve=reserve,
            work_dir=work_dir,
            source_label="--source",
            schema_source_label="--schema-source",
        )
    write_jsonl(args.out, record_dicts(fitted.records))
    for problem in split.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    print(json.dumps({"out": args.out, **stats}))


def _evaluate(args: argparse.Namespace) -> None:
    from sqlora.evaluate.execution import default_gold_cache, evaluate
    from sqlora.evaluate.files import format_summary, read_gold_file, read_pred_file
    from sqlora.io import write_json

    golds = read_gold_file(args.gold)
    preds = read_pred_file(args.pred, len(golds))
    report = evaluate(
        golds,
        preds,
        args.db,
        etype=args.etype,
        tables_json=args.table,
        timeout_s=args.timeout,
        workers=args.workers,
        skip_missing_databases=args.skip_missing_databases,
        skip_bad_gold=args.skip_bad_gold,
        gold_cache=None if args.no_gold_cache else default_gold_cache(),
        suite_dir=args.test_suite,
    )
    titles = {"exec": "EXECUTION ACCURACY", "exact": "EXACT MATCHING ACCURACY", "ts": "TEST-SUITE ACCURACY"}
    print(format_summary(report.summary, [(key, title) for key, title in titles.items() if key in report.summary["all"]]))
    if report.skipped_missing_database:
        print(f"skipped {len(report.skipped_missing_database)} questions whose database file is missing")
    for skip in report.skipped_bad_gold:
        print(f"skipped {skip['where']}: {skip['error']}")
    if report.skipped_bad_gold:
        print(f"skipped {len(report.skipped_bad_gold)} questions whose gold query fails")
    if args.out:
        write_json(args.out, report.to_json())


def _testsuite(args: argparse.Namespace) -> None:
    from sqlora.evaluate.files import read_gold_file
    from sqlora.testsuite.distill import SuiteSettings, build_suite

    golds = read_gold_file(args.gold)
    settings = SuiteSettings(seed=args.seed, candidates=args.candidates, max_rows=args.max_rows, bird=args.bird, timeout_s=args.timeout)
    report = build_suite([(g.sql, g.db_id) for g in golds], args.db, args.out, settings, workers=args.workers)
    for db_id in report.missing:
        print(f"skipped {db_id}: no database file {database_path(args.db, db_id)}", file=sys.stderr)
    for suite in report.databases:
        print(
            f"{suite.db_id}: {suite.kept} fuzzed instances kept of {suite.tried}; {suite.neighbours} near misses, "
            f"{suite.undistinguished} not told apart; {suite.seconds} s" + (f" ({suite.error})" if suite.error else "")
        )
    print(json.dumps({"out": args.out, **report.totals()}))


def _export(args: argparse.Namespace) -> None:
    from sqlora.infer.assistant import resolve_base

    if args.format == "hf" and args.quant is not None:
        raise SqloraError("--quant applies to --format gguf only; an hf export's precision is --dtype")
    if args.format == "gguf" and args.dtype != "auto":
        raise SqloraError("--dtype applies to --format hf only; a GGUF export's precision is --quant")
    if args.format == "gguf":
        from sqlora.model.gguf import check_architecture, check_request, export_gguf
        from sqlora.model.loader import is_standalone, read_model_info

        check_request(Path(args.out), args.quant or "f16")
        model = Path(args.model)
        if not is_standalone(model) and read_model_info(model)["method"] == "full":
            check_architecture(model / "config.json")  # refused before a base is materialised for nothing
    base = resolve_base(args.model, args.base)  # the adapter's own base model, materialised when missing
    if args.format == "gguf":
        result = export_gguf(args.model, base, args.out, quant=args.quant or "f16")
        print(
            f"export: {result.architecture} -> {result.path} ({result.quant}, {result.bytes / 2**20:.1f} MiB, "
            f"{result.tensors} tensors, {result.seconds:.1f} s) and {result.modelfile}"
        )
        return
    from sqlora.model.export import export_model

    result = export_model(args.model, base, args.out, dtype=args.dtype)
    print(f"export: {result.method} model -> {result.out_dir} ({result.parameters:,} parameters, {result.dtype}, {result.seconds:.1f} s)")


def _ask(args: argparse.Namespace) -> None:
    from sqlora.infer.assistant import ask, format_table

    if args.rows < 0:
        raise SqloraError(f"--rows {args.rows}: expected 0 or more")
    prompt = _trained_prompt(args)
    answer = ask(
        args.db,
        args.question,
        args.model,
        args.base,
        prompt=prompt,
        max_new_tokens=args.max_new_tokens,
        timeout_s=args.timeout,
        dtype=args.dtype,
        constrained=args.constrained,
    )
    print(answer.sql or f"-- no SQL in the model's output: {answer.raw[:200]!r}")
    if answer.native_sql is not None:
        print(f"-- as run: {answer.native_sql}")
    if not answer.ok:
        cut = f" (the generation stopped at --max-new-tokens {args.max_new_tokens})" if answer.hit_max_new_tokens else ""
        print(f"failed: {answer.error}{cut}")
        sys.exit(1)  # the model's SQL did not run: not bad input (2), but not an answer either
    if args.rows > 0:
        print(format_table(answer.columns, answer.rows[: args.rows]))
    n = len(answer.rows)
    shown = f", first {args.rows} shown" if 0 < args.rows < n else ""
    print(f"({n} row{'' if n == 1 else 's'}{shown}, {answer.seconds:.1f} s)")


def _trained_prompt(args: argparse.Namespace):
    """The prompt settings ``--model`` was trained with, with the ones ask's and serve's flags override."""
    from sqlora.infer.assistant import trained_prompt

    return trained_prompt(
        args.model,
        schema_format=args.schema_format,
        sample_rows=args.sample_rows,
        chat_template=args.chat_template or None,
        values=args.values or None,
    )


def _serve(args: argparse.Namespace) -> None:
    import os

    import uvicorn

    from sqlora.infer.assistant import Assistant
    from sqlora.serve.app import ServeLimits, create_app, open_databases

    if args.max_rows < 0 or args.timeout <= 0 or args.request_timeout <= 0:
        raise SqloraError("--max-rows must be 0 or more, --timeout and --request-timeout more than 0")
    if args.batch_size < 1 or args.max_waiting < 1:
        raise SqloraError("--batch-size and --max-waiting must be 1 or more")
    databases = open_databases(args.db)  # bad input first: before the seconds a model takes to load
    prompt = _trained_prompt(args)
    assistant = Assistant(
        args.model,
        args.base,
        prompt=prompt,
        max_new_tokens=args.max_new_tokens,
        dtype=args.dtype,
        constrained=args.constrained,
        batch_size=args.batch_size,
        max_waiting=args.max_waiting,
    )
    limits = ServeLimits(max_rows=args.max_rows, timeout_s=args.timeout, request_timeout_s=args.request_timeout)
    token = args.token or os.environ.get("SQLORA_TOKEN") or None
    app = create_app(assistant, databases, model_name=args.name, token=token, limits=limits)
    print(
        f"serve: {args.model} over {', '.join(databases)} on http://{args.host}:{args.port}/"
        + (" (bearer token required)" if token else ""),
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _report(args: argparse.Namespace) -> None:
    from sqlora.report.report import write_report
    from sqlora.report.runs import runs_dir_of

    command = "sqlora report" + (f" --out {args.out}" if args.out != REPORT_FILE else "")
    command += f" --repo {args.repo}" if args.repo != "." else ""
    command += " --all-commits" if args.all_commits else ""
    report = write_report(args.out, args.repo, all_commits=args.all_commits, command=command)
    runs = len(report.rows)
    print(f"report: {runs} run{'s' * (runs != 1)}, {len(report.left_out)} left out -> {args.out}, {runs_dir_of(args.out)}/")


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

    p = sub.add_parser("prepare", help="a dataset in its official layout -> JSONL instruction records")
    p.add_argument("--dataset", choices=DATASETS, default="spider")
    p.add_argument("--source", required=True, help="the dataset's folder or .zip, in its official layout")
    p.add_argument("--split", choices=["train", "dev"], default="dev")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--schema-format", choices=SCHEMA_FORMATS, default="natural")
    p.add_argument("--sample-rows", type=int, default=3, help="ddl_rows: rows shown per table")
    p.add_argument("--schema-source", help="cosql/sparc without tables.json: the Spider folder")
    p.add_argument("--history-sql", action="store_true", help="cosql/sparc: show earlier turns' gold SQL")
    p.add_argument("--values", action="store_true", help="hint the database values each question mentions (prompt.values)")
    p.add_argument("--skip-bad", action="store_true", help="count and skip bad records instead of failing")
    p.add_argument("--tokenizer", help="model folder whose tokenizer measures lengths (enables the length budget)")
    p.add_argument("--max-length", type=int, default=512, help="length budget in tokens (with --tokenizer)")
    p.add_argument("--reserve", type=int, default=128, help="dev: tokens left for generation (with --tokenizer)")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("evaluate", help="score predictions in the official Spider file formats: EX and EM by hardness")
    p.add_argument("--gold", required=True, help="gold file: one 'SQL<TAB>db_id' per line (e.g. dev_gold.sql)")
    p.add_argument("--pred", required=True, help="predictions: one SQL per line, in gold order")
    p.add_argument(
        "--db",
        required=True,
        help="database folder holding <db_id>/<db_id>.sqlite, or a template with "
        "{db_id}: postgresql://user@host/{db_id} or duck/{db_id}.duckdb (gold and predictions run there)",
    )
    p.add_argument("--table", help="tables.json, for exact-set-match (EM)")
    p.add_argument("--etype", choices=ETYPES, default="all", help="all: EX and EM; exec: EX only; match: EM only (nothing is executed)")
    p.add_argument("--out", help="write the report (summary and every example) as JSON")
    p.add_argument("--timeout", type=float, default=30.0, help="per-query time limit in seconds")
    p.add_argument("--workers", type=int, default=2, help="processes running queries")
    p.add_argument("--skip-missing-databases", action="store_true", help="score only questions whose database exists")
    p.add_argument("--skip-bad-gold", action="store_true", help="list and leave out questions whose gold query fails")
    p.add_argument("--no-gold-cache", action="store_true", help="run every gold query instead of reusing cached results")
    p.add_argument(
        "--test-suite",
        help="a test suite folder laid out as the official ones (<db_id>/*.sqlite, e.g. sqlora "
        "testsuite's OUT/database): test-suite accuracy (TS) beside EX",
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "testsuite", help="distil a test suite: fuzzed instances of each database that tell gold queries from their near misses"
    )
    p.add_argument("--gold", required=True, help="gold file: one 'SQL<TAB>db_id' per line (e.g. dev_gold.sql)")
    p.add_argument("--db", required=True, help="database folder holding <db_id>/<db_id>.sqlite")
    p.add_argument("--out", required=True, help="the suite folder to write: OUT/database/<db_id>/*.sqlite and OUT/suite.json")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--candidates", type=int, default=100, help="fuzzed instances tried per database")
    p.add_argument("--max-rows", type=int, default=30, help="rows per table of a fuzzed instance, at most")
    p.add_argument("--bird", action="store_true", help="BIRD's rules: queries run as written, results compared as sets")
    p.add_argument("--timeout", type=float, default=30.0, help="per-query time limit in seconds")
    p.add_argument("--workers", type=int, default=2, help="processes, one database each")
    p.set_defaults(func=_testsuite)

    p = sub.add_parser("export", help="merge a fine-tuned adapter into its base: a standalone Hugging Face checkpoint or a GGUF")
    p.add_argument("--model", required=True, help="fine-tuned model folder (the train stage's, with sqlora_model.json)")
    p.add_argument(
        "--base",
        help="the base model folder it was trained from (default: models/base when it holds the model "
        "sqlora_model.json names, else models/bases/<model>; materialised when missing)",
    )
    p.add_argument("--out", required=True, help="output folder (hf) or FILE.gguf (gguf; FILE.Modelfile is written next to it)")
    p.add_argument(
        "--format",
        choices=["hf", "gguf"],
        default="hf",
        help="hf: a Hugging Face checkpoint folder; gguf: one GGUF file for llama.cpp and Ollama, with an Ollama Modelfile",
    )
    p.add_argument(
        "--quant", choices=["f16", "q8_0", "q4_k_m"], help="gguf: the weights' format (default f16; q4_k_m needs llama-cpp-python)"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="hf: weights' dtype; auto: bf16 where the hardware runs it natively, else fp16 on GPUs, fp32 on CPUs",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser("gate", help="CI gate: fail when EX or EM fell below the committed metrics (dvc metrics diff)")
    p.add_argument("--rev", default="HEAD", help="the commit holding the baseline metrics (default: HEAD)")
    p.add_argument("--params", default="params.yaml", help="where gate.max_drop is read (default: params.yaml)")
    p.set_defaults(func=_gate)

    p = sub.add_parser("ask", help="ask the trained model a question about a database: its SQL and the first rows")
    p.add_argument(
        "--db",
        required=True,
        help="a SQLite or DuckDB file, or a postgresql://user@host/db[?schema=S] URL; its schema is read from the engine's catalog",
    )
    p.add_argument("--question", required=True, help="the question, in words")
    p.add_argument("--rows", type=int, default=20, help="rows of the result shown")
    _model_arguments(p)
    p.set_defaults(func=_ask)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP API and a web page: the model over one or more databases")
    p.add_argument(
        "--db",
        required=True,
        action="append",
        help="a SQLite or DuckDB file or a postgresql:// URL, addressed by its name (the file's stem, the URL's database); repeat for more",
    )
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface; then set --token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every /v1 request (default: $SQLORA_TOKEN, else none)")
    p.add_argument("--name", default="sqlora", help="the model's id in /v1/models (NAME/<database> picks a database)")
    p.add_argument("--max-rows", type=int, default=200, help="rows returned per answer")
    p.add_argument("--request-timeout", type=float, default=120.0, help="time limit of a whole request in seconds")
    p.add_argument("--batch-size", type=int, default=16, help="answers generated together: requests join the running batch")
    p.add_argument("--max-waiting", type=int, default=64, help="requests waiting for a place in the batch; more get 503 and Retry-After")
    _model_arguments(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("report", help="the benchmark report: EX/EM tables and training cost from the DVC experiments' metrics")
    p.add_argument("--out", default=REPORT_FILE, help="the Markdown file written")
    p.add_argument("--repo", default=".", help="the git + DVC repository whose experiments are read")
    p.add_argument("--all-commits", action="store_true", help="every commit and its experiments, not only HEAD's")
    p.set_defaults(func=_report)
    return parser


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """The model and decoding options ask and serve share."""
    p.add_argument(
        "--model",
        default="models/finetuned",
        help="model folder: the train stage's (with sqlora_model.json), "
        "an export (sqlora export) or any Hugging Face checkpoint folder, as predict.model",
    )
    p.add_argument(
        "--base",
        help="the base model folder it was trained from (default: models/base when it holds the model "
        "sqlora_model.json names, else models/bases/<model>; materialised when missing)",
    )
    p.add_argument(
        "--schema-format",
        choices=SCHEMA_FORMATS,
        help="default: as the model was trained (its sqlora_model.json or sqlora_export.json), else natural",
    )
    p.add_argument("--sample-rows", type=int, help="ddl_rows: rows shown per table (default: as trained, else 3)")
    p.add_argument("--chat-template", action="store_true", help="wrap the prompt in the model's chat template (default: as trained)")
    p.add_argument("--values", action="store_true", help="hint the database values the question mentions (default: as trained)")
    p.add_argument("--constrained", action="store_true", help="only tables and columns the database has (predict.constrained)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="the most tokens generated (greedy)")
    p.add_argument("--timeout", type=float, default=30.0, help="time limit of the query in seconds")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="the precision it computes in (model.dtype); auto: bf16 where native")


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
