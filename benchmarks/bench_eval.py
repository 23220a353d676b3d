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
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import TokenType as T

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
print(f"dev: {len(all_golds)} questions, {len(kept)} kept, {len(all_golds) - len(kept)} dropped (no database file: {', '.join(missing) or '-'})")

# -- perturbations of a gold query: (sql, its tokens, rng, db_id) -> new SQL, or None where it does not apply
columns = {}  # db_id -> {table (lower case): [column, ...]}, original names from tables.json
for entry in json.loads(tables_path.read_text(encoding="utf-8")):
    columns[entry["db_id"]] = {name.lower(): [c for t, c in entry["column_names_original"] if t == i]
                               for i, name in enumerate(entry["table_names_original"])}
tokenize = Dialect.get_or_raise("sqlite").tokenize
AGGREGATES = {"count", "max", "min", "avg", "sum"}
KEYWORDS = {T.SELECT, T.FROM, T.WHERE, T.JOIN, T.ON, T.AND, T.OR, T.ALIAS, T.ORDER_BY, T.GROUP_BY, T.LIMIT,
            T.DESC, T.ASC, T.DISTINCT, T.HAVING, T.IN, T.NOT, T.LIKE, T.BETWEEN, T.UNION, T.INTERSECT, T.EXCEPT}
ENDS_CLAUSE = (T.LIMIT, T.UNION, T.INTERSECT, T.EXCEPT)


def raw(sql, t):  # a token as written
    return sql[t.start:t.end + 1]


def splice(sql, start, end, text):  # sql[start:end] (end exclusive) replaced by text
    return sql[:start] + text + sql[end:]


def depths(toks):  # parenthesis depth at which each token sits
    depth, out = 0, []
    for t in toks:
        depth -= t.token_type == T.R_PAREN
        out.append(depth)
        depth += t.token_type == T.L_PAREN
    return out


def literals(sql, toks):  # numbers and strings ('x' or "x": Spider writes strings in double quotes)
    return [t for t in toks if t.token_type in (T.NUMBER, T.STRING) or (t.token_type == T.IDENTIFIER and sql[t.start] == '"')]


def p_other_gold(sql, toks, rng, db):  # another question's gold on the same database
    others = sorted({g for g, d in golds if d == db and g != sql})
    return rng.choice(others) if others else None


def p_drop_order(sql, toks, rng, db):  # one ORDER BY clause removed, up to its LIMIT / end of (sub)query
    d = depths(toks)
    k = rng.choice([k for k, t in enumerate(toks) if t.token_type == T.ORDER_BY] or [None])
    if k is None:
        return None
    ends = [t.start for t, dt in zip(toks[k + 1:], d[k + 1:]) if dt < d[k] or (dt == d[k] and t.token_type in ENDS_CLAUSE)]
    return splice(sql, toks[k].start, (ends + [len(sql)])[0], " ")


def p_add_order(sql, toks, rng, db):  # rows reordered: wrong only where the official thinks order matters
    if any(dt == 0 and t.token_type in (T.ORDER_BY, T.LIMIT) for t, dt in zip(toks, depths(toks))):
        return None
    return sql.rstrip().rstrip(";") + rng.choice([" ORDER BY 1 DESC", " ORDER BY 1"])


def p_toggle_distinct(sql, toks, rng, db):  # a DISTINCT removed (COUNT(DISTINCT x) -> COUNT(x) too) or added
    distinct = [t for t in toks if t.token_type == T.DISTINCT]
    if distinct:
        t = rng.choice(distinct)
        return splice(sql, t.start, t.end + 1, "")
    counts = [toks[k + 1] for k, t in enumerate(toks[:-2]) if t.text.lower() == "count" and toks[k + 2].token_type != T.STAR]
    if counts and rng.random() < 0.5:
        at, text = rng.choice(counts).end + 1, "DISTINCT "
    else:
        at, text = toks[0].end + 1, " DISTINCT"
    return splice(sql, at, at, text)


def p_reorder_select(sql, toks, rng, db):  # the first select list rotated by one column
    if toks[0].token_type != T.SELECT:
        return None
    first = 2 if toks[1].token_type == T.DISTINCT else 1
    cuts = [toks[first].start]
    for t, dt in zip(toks[first:], depths(toks)[first:]):
        if dt == 0 and t.token_type == T.COMMA:
            cuts += [t.start, t.end + 1]
        if dt == 0 and t.token_type == T.FROM:
            cuts.append(t.start)
            break
    items = [sql[a:b].strip() for a, b in zip(cuts[::2], cuts[1::2])]
    return splice(sql, cuts[0], cuts[-1], " , ".join(items[1:] + items[:1]) + " ") if len(items) > 1 and len(cuts) % 2 == 0 else None


def p_change_literal(sql, toks, rng, db):  # a number + 1, or a string with its case swapped or a letter added
    t = rng.choice(literals(sql, toks) or [None])
    if t is None:
        return None
    text = raw(sql, t)
    if t.token_type == T.NUMBER:
        return splice(sql, t.start, t.end + 1, str(float(text) + 1) if "." in text else str(int(text) + 1))
    body = text[1:-1].swapcase() if rng.random() < 0.5 else text[1:-1] + "x"
    return splice(sql, t.start, t.end + 1, text[0] + body + text[-1])


def p_swap_join(sql, toks, rng, db):  # FROM a JOIN b ON a.x = b.y  ->  FROM b JOIN a ON b.y = a.x
    unit = r"(\w+(?:\s+AS\s+\w+)?)"
    m = re.search(rf"FROM\s+{unit}\s+JOIN\s+{unit}\s+ON\s+([\w.]+)\s*=\s*([\w.]+)", sql, re.IGNORECASE)
    return splice(sql, m.start(), m.end(), f"FROM {m[2]} JOIN {m[1]} ON {m[4]} = {m[3]}") if m else None


def p_wrong_column(sql, toks, rng, db):  # a column replaced by another column of a table the query uses
    tables = {name: cols for name, cols in columns[db].items() if name in {t.text.lower() for t in toks}}
    spots = [(t, [c for c in cols if c.lower() != t.text.lower()])
             for k, t in enumerate(toks) if t.token_type == T.VAR and (k == 0 or toks[k - 1].token_type != T.ALIAS)
             for cols in tables.values() if t.text.lower() in (c.lower() for c in cols) and len(cols) > 1]
    if not spots:
        return None
    t, others = rng.choice(spots)
    return splice(sql, t.start, t.end + 1, rng.choice(others))


def p_value_placeholder(sql, toks, rng, db):  # every literal but LIMIT's becomes `value`
    lits = [t for t in literals(sql, toks) if toks[toks.index(t) - 1].token_type != T.LIMIT]
    for t in reversed(lits):
        sql = splice(sql, t.start, t.end + 1, "value")
    return sql if lits else None


def p_spaced_operator(sql, toks, rng, db):  # ">=" -> "> =" etc.; without any, one ">" or "<" gets " ="
    ops = [t for t in toks if t.token_type in (T.GTE, T.LTE, T.NEQ)]
    for t in reversed(ops):
        sql = splice(sql, t.start, t.end + 1, "! =" if raw(sql, t) == "<>" else " ".join(raw(sql, t)))
    if ops:
        return sql
    t = rng.choice([t for t in toks if t.token_type in (T.GT, T.LT)] or [None])
    return splice(sql, t.end + 1, t.end + 1, " =") if t else None


def p_change_limit(sql, toks, rng, db):
    t = rng.choice([toks[k + 1] for k, t in enumerate(toks[:-1]) if t.token_type == T.LIMIT and toks[k + 1].token_type == T.NUMBER] or [None])
    return splice(sql, t.start, t.end + 1, str(int(t.text) + rng.choice([1, 2, 100]))) if t else None


def p_whitespace_case(sql, toks, rng, db):  # keywords and aggregates in one case, one or two spaces between tokens
    change, out = rng.choice([str.lower, str.upper]), ""
    for k, t in enumerate(toks):
        glue = k == 0 or T.DOT in (t.token_type, toks[k - 1].token_type)  # `T1.name` stays one word
        word = change(raw(sql, t)) if t.token_type in KEYWORDS or t.text.lower() in AGGREGATES else raw(sql, t)
        out += ("" if glue else rng.choice([" ", "  "])) + word
    return out


def p_or_condition(sql, toks, rng, db):  # "OR x = y" after an ON or WHERE condition (skipped there after a column value)
    comparison = r"\b(ON|WHERE)\s+([\w.]+)\s*(?:>=|<=|!=|=|>|<)\s*([\w.]+|'[^']*'|\"[^\"]*\")"
    m = rng.choice(list(re.finditer(comparison, sql, re.IGNORECASE)) or [None])
    return splice(sql, m.end(), m.end(), f" OR {m[2]} = {rng.choice([m[2], m[3], '1'])}") if m else None


def p_clause_order(sql, toks, rng, db):  # a query's WHERE / GROUP BY / HAVING / ORDER BY moved behind its last clause
    d, clauses = depths(toks), (T.WHERE, T.GROUP_BY, T.HAVING, T.ORDER_BY, T.LIMIT)
    blocks = []  # per SELECT (nested ones too): its clauses' token indexes, and where the query ends
    for s in (k for k, t in enumerate(toks) if t.token_type == T.SELECT):
        end = next((k for k in range(s + 1, len(toks)) if d[k] < d[s] or (d[k] == d[s] and toks[k].token_type in (T.UNION, T.INTERSECT, T.EXCEPT))), len(toks))
        starts = [k for k in range(s, end) if d[k] == d[s] and toks[k].token_type in clauses]
        blocks += [(starts, end)] if len(starts) > 1 else []
    if not blocks:
        return None
    starts, end = rng.choice(blocks)
    i = rng.randrange(len(starts) - 1)
    a, b, stop = toks[starts[i]].start, toks[starts[i + 1]].start, toks[end].start if end < len(toks) else len(sql)
    return f"{sql[:a]}{sql[b:stop].rstrip()} {sql[a:b].strip()} {sql[stop:]}".rstrip()


PERTURBATIONS = {
    "unchanged": lambda sql, toks, rng, db: sql, "other_gold": p_other_gold, "drop_order": p_drop_order, "add_order": p_add_order,
    "toggle_distinct": p_toggle_distinct, "reorder_select": p_reorder_select, "change_literal": p_change_literal,
    "swap_join": p_swap_join, "wrong_column": p_wrong_column, "value_placeholder": p_value_placeholder,
    "spaced_operator": p_spaced_operator, "change_limit": p_change_limit, "whitespace_case": p_whitespace_case,
    "or_condition": p_or_condition, "clause_order": p_clause_order,
    "truncate": lambda sql, toks, rng, db: sql[:toks[rng.randrange(1, len(toks))].start].rstrip() if len(toks) > 2 else None,
    "trailing_semicolon": lambda sql, toks, rng, db: sql + " ;",
    "two_statements": lambda sql, toks, rng, db: f"{sql.rstrip(';')}; {p_other_gold(sql, toks, rng, db) or 'SELECT 1'}",
    "empty": lambda sql, toks, rng, db: "",
}


def perturb(index, sql, db):
    """(kind, prediction): the first perturbation that applies, in an order seeded by the dev index."""
    rng = random.Random(index)
    toks = tokenize(sql)
    for kind in rng.sample(sorted(PERTURBATIONS), len(PERTURBATIONS)):
        new = PERTURBATIONS[kind](sql, toks, rng, db)
        if new is not None and (new != sql or kind == "unchanged"):
            return kind, re.sub(r"[\r\n\t]", " ", new)  # one prediction per line


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
    t_official = timed([args.official_python, Path(__file__).with_name("official_spider.py"), args.official_dir,
                        gold_file, pred_file, db_dir, tables_path, official_out])
    ours = [sys.executable, "-m", "sqlora.cli", "evaluate", "--gold", gold_file, "--pred", pred_file, "--db", db_dir,
            "--table", tables_path, "--etype", "all", "--workers", str(args.workers), "--out", ours_out]
    env = {**os.environ, "SQLORA_CACHE": str(work / f"{name}_cache")}  # fresh and empty: the first run is cold
    t_cold, t_warm = timed(ours, env), timed(ours, env)
    official = json.loads(official_out.read_text())["examples"]
    mine = sorted(json.loads(ours_out.read_text(encoding="utf-8"))["examples"], key=lambda e: e["index"])
    assert [e["index"] for e in official] == [e["index"] for e in mine] == list(range(len(golds))), "examples do not line up"

    mismatches = []
    for i, (o, m) in enumerate(zip(official, mine)):
        if differ := [key for key in ("hardness", "exec", "exact") if o[key] != m[key]]:
            mismatches.append({"dev_index": kept[i], "db_id": golds[i][1], "kind": kinds[i], "differ": differ,
                               "gold": golds[i][0], "pred": preds[i], "official": {k: o[k] for k in ("hardness", "exec", "exact")},
                               "ours": {k: m.get(k) for k in ("hardness", "exec", "exact", "error", "exact_error")}})
    score = lambda rows, key: 100 * sum(r[key] for r in rows) / len(rows)  # noqa: E731
    print(f"\n== {name}: n={len(golds)}  official EX {score(official, 'exec'):.1f} EM {score(official, 'exact'):.1f}"
          f"  |  ours EX {score(mine, 'exec'):.1f} EM {score(mine, 'exact'):.1f}")
    if name == "perturbed":
        print("   kinds: " + ", ".join(f"{k} {kinds.count(k)}" for k in sorted(set(kinds))))
    print(f"   mismatches: {len(mismatches)} examples; " + ", ".join(
        f"{key} {sum(key in m['differ'] for m in mismatches)}" for key in ("hardness", "exec", "exact")))
    groups = {}  # shown round-robin over (kind, what differs): one of each first, then a second of each, ...
    for m in mismatches:
        groups.setdefault((m["kind"], *m["differ"]), []).append(m)
    if name == "perturbed" and mismatches:
        print("   by kind: " + ", ".join(f"{k} {sum(m['kind'] == k for m in mismatches)}" for k in sorted({m["kind"] for m in mismatches})))
    for m in [m for row in itertools.zip_longest(*groups.values()) for m in row if m][: args.show]:
        print(f"   #{m['dev_index']} [{m['db_id']}] {m['kind']}: {', '.join(m['differ'])} differ")
        print(f"      gold: {m['gold']}\n      pred: {m['pred']}")
        print(f"      official {m['official']}\n      ours     {m['ours']}")
    print(f"   wall: official {t_official:.1f} s, ours cold {t_cold:.1f} s (ratio {t_cold / t_official:.2f}),"
          f" warm {t_warm:.1f} s (ratio {t_warm / t_official:.2f}); target: ratio <= {TARGET_RATIO:.2f}")
    report[name] = {"mismatches": mismatches, "seconds": {"official": t_official, "ours_cold": t_cold, "ours_warm": t_warm}}
    failed |= bool(mismatches)

hashes_after = hash_databases()
changed = sorted(p for p in hashes_before.keys() | hashes_after.keys() if hashes_before.get(p) != hashes_after.get(p))
print(f"\ndatabases: {len(hashes_before)} files under {db_dir}: "
      + (f"{len(changed)} CHANGED: {', '.join(changed[:10])}" if changed else "byte-identical after all runs"))
if args.report:
    Path(args.report).write_text(json.dumps({**report, "changed_databases": changed}, indent=1), encoding="utf-8")
if args.keep:
    print(f"work files: {work}")
else:
    shutil.rmtree(work)
sys.exit(1 if failed or changed else 0)
