"""Execute predicted and gold SQL on the databases → metrics/eval.json and reports/eval_examples.json.

Spider-style datasets report EX and exact-set-match (EM) by Spider hardness; BIRD reports
set-equality EX by difficulty;
CoSQL / SParC add question- and interaction-level accuracy.
"""

import json
from pathlib import Path

from sqlora.config import load_params
from sqlora.datasets import load_records
from sqlora.errors import SqloraError, exit_on_error
from sqlora.evaluation import add_exact_match, evaluate_execution, interaction_accuracy, read_pred_file
from sqlora.io import write_json


@exit_on_error
def main() -> None:
    params = load_params()
    records = load_records("data/prepared/dev.jsonl")
    meta = json.loads(Path("data/prepared/meta.json").read_text())
    preds = read_pred_file("predictions/dev.sql", len(records))
    bird = meta["dataset"] == "bird"
    try:
        report = evaluate_execution(
            [(r.output, r.db_id) for r in records],
            preds,
            meta["database_dir"],
            timeout_s=params.eval.timeout_s,
            workers=params.eval.workers,
            skip_missing_databases=params.eval.skip_missing_databases,
            difficulties=[r.difficulty or "" for r in records] if bird else None,
        )
    except FileNotFoundError as exc:
        raise SqloraError(f"{exc} (set eval.skip_missing_databases: true to score the other questions)") from None
    if not bird:  # BIRD publishes EX only
        add_exact_match(report, meta["tables_json"])
    levels = report.summary
    metrics = {"ex": {level: round(s["exec"], 4) for level, s in levels.items()}}
    if not bird:
        metrics["em"] = {level: round(s["exact"], 4) for level, s in levels.items()}
    metrics |= {"count": {level: s["count"] for level, s in levels.items()}, "skipped_missing_database": len(report.skipped)}
    if meta["dataset"] in ("cosql", "sparc"):
        accuracy = interaction_accuracy(report.examples, [r.interaction_id for r in records])
        metrics["interaction_ex"] = round(accuracy["interaction_ex"], 4)
        metrics["interactions"] = accuracy["interactions"]
    write_json("metrics/eval.json", metrics)
    write_json("reports/eval_examples.json", report.to_json())
    print("evaluate: " + ", ".join(
        f"{level} EX {s['exec']:.3f}" + (f" EM {s['exact']:.3f}" if "exact" in s else "") + f" (n={s['count']})" for level, s in levels.items()
    ))


if __name__ == "__main__":
    main()
