"""Test-suite accuracy on Spider dev, in one run: what the suite costs and what it catches.

1. the suite of every Spider dev database (sqlora.testsuite.distill, params.yaml's seed and
   eval.suite_candidates), timed (target: at most 10 minutes on 2 cores); per database the suite's
   size and the near misses of the gold queries it tells apart;
2. EX alone against EX + TS on the same predictions, each from an empty gold cache (target: TS at
   most 5x EX's time);
3. the perturbed predictions bench-eval makes (benchmarks/perturbations.py), by kind: EX, TS and how
   many that EX calls right the suite catches; meaning-preserving kinds must lose nothing;
4. with --pred (e.g. the published model's predictions/dev.sql): its EX and TS.
Exits 1 if a source database changed, gold scores below 100% TS or TS exceeds EX on an example.

Usage: make bench-testsuite [SPIDER=path] [ARGS="--pred predictions/dev.sql --candidates 100"]
"""

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from perturbations import Perturber, table_columns

from sqlora.config import load_params
from sqlora.data.schema import database_path
from sqlora.evaluate.execution import Gold, evaluate
from sqlora.model.loader import machine
from sqlora.testsuite.distill import SuiteSettings, build_suite

GENERATION_TARGET_S, EVALUATION_TARGET = 600, 5.0
# Perturbations that keep the query's meaning under Spider's rules: the suite must not call them wrong.
# (spaced_operator is not one: without a ">=" to split it turns a ">" into "> =", which the rules read as ">=".)
HARMLESS = {"unchanged", "whitespace_case", "reorder_select", "swap_join", "trailing_semicolon", "toggle_distinct"}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--spider", default="../shared/datasets/spider")
parser.add_argument("--pred", help="a model's predictions: one per dev question (1034) or per question with a database")
parser.add_argument("--candidates", type=int, default=0, help="fuzzed instances tried per database (default: eval.suite_candidates)")
parser.add_argument("--workers", type=int, default=2)
args = parser.parse_args()


def main() -> int:
    params = load_params()
    spider = Path(args.spider)
    db_dir = spider / "database"
    all_golds = [line.rpartition("\t")[::2] for line in (spider / "dev_gold.sql").read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [i for i, (_, db) in enumerate(all_golds) if database_path(db_dir, db.strip()).is_file()]
    golds = [Gold(all_golds[i][0].strip(), all_golds[i][1].strip(), f"dev_gold.sql:{i + 1}") for i in kept]
    print(
        f"Spider dev: {len(golds)} of {len(all_golds)} questions have a database; {machine()}; load average {os.getloadavg()[0]:.2f} before"
    )
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(db_dir.rglob("*.sqlite"))}
    failures = []

    with tempfile.TemporaryDirectory() as work:
        settings = SuiteSettings(seed=params.seed, candidates=args.candidates or params.eval.suite_candidates)
        start = time.perf_counter()
        report = build_suite([(g.sql, g.db_id) for g in golds], db_dir, Path(work) / "suite", settings, workers=args.workers)
        generation = time.perf_counter() - start
        print(f"\n1. suite generation: {generation:.0f} s for {len(report.databases)} databases (target <= {GENERATION_TARGET_S} s: "
              f"{'met' if generation <= GENERATION_TARGET_S else 'NOT met'}), {settings.candidates} candidates per database")  # fmt: skip
        print("   database                  queries  suite dbs  tried  near misses  told apart  left (kinds)")
        for d in report.databases:
            told = (d.by_original + d.by_fuzzed) / d.neighbours if d.neighbours else 1.0
            kinds = ", ".join(f"{k} {n}" for k, n in d.undistinguished_kinds.items())
            print(
                f"   {d.db_id:<25} {d.queries:>7}  {1 + d.kept:>9}  {d.tried:>5}  {d.neighbours:>11}  {told:>10.1%}  {d.undistinguished} ({kinds})"
            )
        totals = report.totals()
        print(f"   all: {totals['suite_databases']} suite databases, {totals['neighbours']} near misses, {totals['distinguished']:.1%} told apart "
              f"({totals['by_original']} by the originals, {totals['by_fuzzed']} by fuzzed instances)")  # fmt: skip

        suite_dir = Path(work) / "suite" / "database"
        perturb = Perturber([(g.sql, g.db_id) for g in golds], table_columns(spider / "tables.json"))
        perturbed = [perturb(i, g.sql, g.db_id) for i, g in zip(kept, golds)]
        preds = [pred for _, pred in perturbed]
        start = time.perf_counter()
        evaluate(golds, preds, db_dir, etype="exec", workers=args.workers)
        ex_time = time.perf_counter() - start
        start = time.perf_counter()
        scored = evaluate(golds, preds, db_dir, etype="exec", workers=args.workers, suite_dir=suite_dir)
        ts_time = time.perf_counter() - start
        ratio = ts_time / ex_time
        print(f"\n2. evaluation of {len(preds)} perturbed predictions: EX {ex_time:.1f} s, EX + TS {ts_time:.1f} s: {ratio:.2f}x "
              f"(target <= {EVALUATION_TARGET}x: {'met' if ratio <= EVALUATION_TARGET else 'NOT met'})")  # fmt: skip

        print("\n3. perturbations by kind: EX and TS (%), and the EX-right ones the suite catches")
        kinds = Counter(kind for kind, _ in perturbed)
        for kind in sorted(kinds):
            chosen = [e for e in scored.examples if perturbed[e.index][0] == kind]
            ex, ts = sum(e.exec for e in chosen), sum(e.ts for e in chosen)
            caught = f"{ex - ts} of {ex} ({(ex - ts) / ex:.0%})" if ex else "-"
            note = "  (meaning kept: must lose none)" if kind in HARMLESS else ""
            print(f"   {kind:<20} n={len(chosen):>4}  EX {ex / len(chosen):6.1%}  TS {ts / len(chosen):6.1%}  caught {caught}{note}")
            if kind in HARMLESS and ts < ex:
                failures.append(f"{kind}: the suite calls {ex - ts} meaning-preserving rewrites wrong")
        if any(e.ts > e.exec for e in scored.examples):
            failures.append("TS above EX on some example")

        right = evaluate(golds, [g.sql for g in golds], db_dir, etype="exec", workers=args.workers, suite_dir=suite_dir)
        print(f"   gold as prediction: EX {right.summary['all']['exec']:.1%}, TS {right.summary['all']['ts']:.1%}")
        if right.summary["all"]["ts"] != 1.0:
            failures.append("gold scores below 100% TS")

        if args.pred:
            lines = Path(args.pred).read_text(encoding="utf-8").removesuffix("\n").split("\n")
            lines = [lines[i] for i in kept] if len(lines) == len(all_golds) else lines
            model = evaluate(golds, lines, db_dir, etype="exec", workers=args.workers, suite_dir=suite_dir, skip_bad_gold=True)
            print(f"\n4. {args.pred}: " + ", ".join(
                f"{level} EX {s['exec']:.1%} TS {s['ts']:.1%}" for level, s in model.summary.items()))  # fmt: skip

    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(db_dir.rglob("*.sqlite"))}
    if after != before:
        failures.append("a source database changed")
    print(f"\nload average {os.getloadavg()[0]:.2f} after; source databases unchanged: {after == before}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
