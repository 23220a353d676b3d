"""Spider dev: `sqlora evaluate` vs the official evaluator, side by side, example by example.

For each prediction set (gold as prediction; a seeded mix of perturbations of gold; with --pred,
a model's predictions) both tools score the same files, and every example's hardness, EX and EM
must agree. Also times both on the full dev set (ours cold, with an empty SQLORA_CACHE, and warm;
target, from the issue: ours no slower than the official) and checks that no database file
changed. Exits 1 on any mismatch or changed database file.

Usage: make bench-eval [SPIDER=path] [PRED=predictions.sql]   (`make official-eval` builds the official)
"""

import argparse
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perturbations import Perturber, table_columns

from sqlora.data.schema import database_path

TARGET_RATIO = 1.0

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--spider", default="../shared/datasets/spider")
parser.add_argument("--pred", help="model predictions: one per dev question (1034) or per kept gold line")
parser.add_argument("--official-python", default=".bench/official/venv/bin/python")
parser.add_argument("--official-dir", default=".bench/official/eval")
parser.add_argument("--workers", type=int, default=2, help="sqlora evaluate --workers")
parser.add_argument("--show", type=int, default=10, help="mismatching examples printed per set")
parser.add_argument("--report", help="write every mismatch to this JSON file")
parser.add_argument("--keep", action="store_true", help="keep the work folder (gold/pred files, both reports)")
args = parser.parse_args()

spider = Path(args.spider)
db_dir, tables_path = spider / "database", spider / "tables.json"

# -- gold lines whose database exists (the official would create an empty file for the others)
all_golds = [line.rpartition("\t")[::2] for line in (spider / "dev_gold.sql").read_text(encoding="utf-8").splitlines()]
all_golds = [(sql.strip(), db.strip()) for sql, db in all_golds]
kept = [i for i, (_, db) in enumerate(all_golds) if database_path(db_dir, db).is_file()]
golds = [all_golds[i] for i in kept]
missing = sorted({db for _, db in all_golds} - {db for _, db in golds})
print(
    f"dev: {len(all_golds)} questions, {len(kept)} kept, {len(all_golds) - len(kept)} dropped (no database file: {', '.join(missing) or '-'})"
)

# -- perturbations of a gold query (benchmarks/perturbations.py)
perturb = Perturber(golds, table_columns(tables_path))

sets = {"gold": ([sql for sql, _ in golds], ["gold"] * len(golds))}
sets["perturbed"] = tuple(map(list, zip(*(perturb(i, sql, db)[::-1] for i, (sql, db) in zip(kept, golds)))))
if args.pred:
    lines = Path(args.pred).read_text(encoding="utf-8").removesuffix("\n").split("\n")
    lines = [lines[i] for i in kept] if len(lines) == len(all_golds) else lines
    if len(lines) != len(golds):
        sys.exit(f"{args.pred}: {len(lines)} lines, expected {len(all_golds)} (all dev) or {len(golds)} (kept)")
    sets["model"] = (lines, ["model"] * len(golds))


def hash_databases():
    return {str(p.relative_to(db_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(db_dir.rglob("*")) if p.is_file()}


def timed(command, env=None):
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


# -- run both on every set and compare, example by example
hashes_before = hash_databases()
failed, report = False, {}
work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
for name, (preds, kinds) in sets.items():
    gold_file, pred_file = work / f"{name}_gold.sql", work / f"{name}_pred.sql"
    gold_file.write_text("".join(f"{sql}\t{db}\n" for sql, db in golds), encoding="utf-8")
    pred_file.write_text("".join(f"{p}\n" for p in preds), encoding="utf-8")
    official_out, ours_out = work / f"{name}_official.json", work / f"{name}_ours.json"
    t_official = timed(
        [
            args.official_python,
            Path(__file__).with_name("official_spider.py"),
            args.official_dir,
            gold_file,
            pred_file,
            db_dir,
            tables_path,
            official_out,
        ]
    )
    ours = [
        sys.executable,
        "-m",
        "sqlora.cli",
        "evaluate",
        "--gold",
        gold_file,
        "--pred",
        pred_file,
        "--db",
        db_dir,
        "--table",
        tables_path,
        "--etype",
        "all",
        "--workers",
        str(args.workers),
        "--out",
        ours_out,
    ]
    env = {**os.environ, "SQLORA_CACHE": str(work / f"{name}_cache")}  # fresh and empty: the first run is cold
    t_cold, t_warm = timed(ours, env), timed(ours, env)
    official = json.loads(official_out.read_text())["examples"]
    mine = sorted(json.loads(ours_out.read_text(encoding="utf-8"))["examples"], key=lambda e: e["index"])
    assert [e["index"] for e in official] == [e["index"] for e in mine] == list(range(len(golds))), "examples do not line up"

    mismatches = []
    for i, (o, m) in enumerate(zip(official, mine)):
        if differ := [key for key in ("hardness", "exec", "exact") if o[key] != m[key]]:
            mismatches.append(
                {
                    "dev_index": kept[i],
                    "db_id": golds[i][1],
                    "kind": kinds[i],
                    "differ": differ,
                    "gold": golds[i][0],
                    "pred": preds[i],
                    "official": {k: o[k] for k in ("hardness", "exec", "exact")},
                    "ours": {k: m.get(k) for k in ("hardness", "exec", "exact", "error", "exact_error")},
                }
            )
    score = lambda rows, key: 100 * sum(r[key] for r in rows) / len(rows)  # noqa: E731
    print(
        f"\n== {name}: n={len(golds)}  official EX {score(official, 'exec'):.1f} EM {score(official, 'exact'):.1f}"
        f"  |  ours EX {score(mine, 'exec'):.1f} EM {score(mine, 'exact'):.1f}"
    )
    if name == "perturbed":
        print("   kinds: " + ", ".join(f"{k} {kinds.count(k)}" for k in sorted(set(kinds))))
    print(
        f"   mismatches: {len(mismatches)} examples; "
        + ", ".join(f"{key} {sum(key in m['differ'] for m in mismatches)}" for key in ("hardness", "exec", "exact"))
    )
    groups = {}  # shown round-robin over (kind, what differs): one of each first, then a second of each, ...
    for m in mismatches:
        groups.setdefault((m["kind"], *m["differ"]), []).append(m)
    if name == "perturbed" and mismatches:
        print("   by kind: " + ", ".join(f"{k} {sum(m['kind'] == k for m in mismatches)}" for k in sorted({m["kind"] for m in mismatches})))
    for m in [m for row in itertools.zip_longest(*groups.values()) for m in row if m][: args.show]:
        print(f"   #{m['dev_index']} [{m['db_id']}] {m['kind']}: {', '.join(m['differ'])} differ")
        print(f"      gold: {m['gold']}\n      pred: {m['pred']}")
        print(f"      official {m['official']}\n      ours     {m['ours']}")
    print(
        f"   wall: official {t_official:.1f} s, ours cold {t_cold:.1f} s (ratio {t_cold / t_official:.2f}),"
        f" warm {t_warm:.1f} s (ratio {t_warm / t_official:.2f}); target: ratio <= {TARGET_RATIO:.2f}"
    )
    report[name] = {"mismatches": mismatches, "seconds": {"official": t_official, "ours_cold": t_cold, "ours_warm": t_warm}}
    failed |= bool(mismatches)

hashes_after = hash_databases()
changed = sorted(p for p in hashes_before.keys() | hashes_after.keys() if hashes_before.get(p) != hashes_after.get(p))
print(
    f"\ndatabases: {len(hashes_before)} files under {db_dir}: "
    + (f"{len(changed)} CHANGED: {', '.join(changed[:10])}" if changed else "byte-identical after all runs")
)
if args.report:
    Path(args.report).write_text(json.dumps({**report, "changed_databases": changed}, indent=1), encoding="utf-8")
if args.keep:
    print(f"work files: {work}")
else:
    shutil.rmtree(work)
sys.exit(1 if failed or changed else 0)
