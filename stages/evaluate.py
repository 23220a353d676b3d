"""Execute predicted and gold SQL on the databases → metrics/eval.json, reports/eval_examples.json and
the bar-chart data reports/plots/hardness.json.

Spider-style datasets report EX and exact-set-match (EM) by Spider hardness; BIRD reports
set-equality EX by difficulty; with eval.test_suite, test-suite accuracy (TS) beside EX;
CoSQL / SParC add question- and interaction-level accuracy.
"""

from sqlora.config import load_params
from sqlora.data.records import load_records, read_meta
from sqlora.errors import exit_on_error
from sqlora.evaluate.error_kinds import error_breakdown
from sqlora.evaluate.execution import Gold, default_gold_cache, evaluate, interaction_accuracy
from sqlora.evaluate.files import read_pred_file
from sqlora.io import write_json

HARDNESS_PLOT = "reports/plots/hardness.json"


def hardness_rows(metrics: dict) -> list[dict]:
    """`dvc plots` data: one row per level and metric (EX, and EM but for BIRD), in percent, from
    metrics/eval.json's own (rounded) values; levels without questions are left out."""
    return [
        {"level": level, "metric": name.upper(), "value": round(metrics[name][level] * 100, 2), "questions": count}
        for name in ("ex", "em", "ts")
        if name in metrics
        for level, count in metrics["count"].items()
        if count
    ]


@exit_on_error
def main() -> None:
    params = load_params()
    records = load_records("data/prepared/dev.jsonl")
    meta = read_meta("data/prepared/meta.json")
    preds = read_pred_file("predictions/dev.sql", len(records))
    bird = meta["dataset"] == "bird"
    report = evaluate(
        [Gold(r.output, r.db_id, f"data/prepared/dev.jsonl:{line}") for line, r in enumerate(records, 1)],
        preds,
        params.eval.database or meta["database_dir"],  # the dataset's SQLite files, or the same databases on another engine
        etype="exec" if bird else "all",  # BIRD publishes EX (and VES), no EM
        tables_json=meta["tables_json"],
        difficulties=[r.difficulty or "" for r in records] if bird else None,
        ves_iterations=params.eval.ves_iterations,
        timeout_s=params.eval.timeout_s,
        workers=params.eval.workers,
        skip_missing_databases=params.eval.skip_missing_databases,
        skip_bad_gold=params.eval.skip_bad_gold,
        gold_cache=default_gold_cache(),
        suite_dir="data/testsuite/database" if params.eval.test_suite else None,  # the testsuite stage's
    )
    levels = report.summary
    metrics = {"ex": {level: round(s["exec"], 4) for level, s in levels.items()}}
    if not bird:
        metrics["em"] = {level: round(s["exact"], 4) for level, s in levels.items()}
    if "ts" in levels["all"]:
        metrics["ts"] = {level: round(s["ts"], 4) for level, s in levels.items()}
    if "ves" in levels["all"]:
        metrics["ves"] = {level: round(s["ves"], 2) for level, s in levels.items()}
    metrics |= {
        "count": {level: s["count"] for level, s in levels.items()},
        "errors": error_breakdown(report.examples),  # why the wrong answers are wrong
        "skipped_missing_database": len(report.skipped_missing_database),
        "skipped_bad_gold": len(report.skipped_bad_gold),
    }
    if meta["dataset"] in ("cosql", "sparc"):
        accuracy = interaction_accuracy(report.examples, [r.interaction_id for r in records])
        metrics["interaction_ex"] = round(accuracy["interaction_ex"], 4)
        metrics["interactions"] = accuracy["interactions"]
    write_json("metrics/eval.json", metrics)
    write_json("reports/eval_examples.json", report.to_json())
    write_json(HARDNESS_PLOT, hardness_rows(metrics))
    print(
        "evaluate: "
        + ", ".join(
            f"{level} EX {s['exec']:.3f}"
            + (f" EM {s['exact']:.3f}" if "exact" in s else "")
            + (f" TS {s['ts']:.3f}" if "ts" in s else "")
            + f" (n={s['count']})"
            for level, s in levels.items()
        )
    )


if __name__ == "__main__":
    main()
