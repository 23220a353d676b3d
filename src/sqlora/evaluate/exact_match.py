"""Spider exact-set-match accuracy (EM), example by example as the official evaluator scores it.

Reproduces ``--etype match`` of the official Spider evaluator (``evaluation.py`` of
taoyds/test-suite-sql-eval, without ``--plug_value`` / ``--keep_distinct``) on top of a sqlglot
parse. Both queries are turned into the official "sql" structure (see ``_Parser``), then
rebuilt and compared as the official code does:

* values: every condition value that is not a nested query is dropped (so literals, and also
  right-hand columns such as the ``T2.id`` of ``T1.id = T2.id``, never matter); values inside a
  FROM subquery are kept, and the LIMIT value never matters (the official parser stores 1);
* columns: a foreign-key column is replaced by the representative of its foreign-key group
  (``build_foreign_key_map``) when its table is in the top-level FROM; DISTINCT flags are cleared.
  Neither happens inside a nested query of a condition, which is compared as a whole, as is;
* components (bag matching, F1 must be 1 for each): select, select(no AGG), where, where(no OP),
  group(no Having) (column *names* only), group (group columns in order + whole HAVING), order
  (whole ORDER BY in order + LIMIT presence), and/or (set of WHERE connectives), IUEN
  (INTERSECT/UNION/EXCEPT compared recursively), keywords; then the multiset of FROM tables.
  JOIN ... ON conditions are not compared (only their OR/NOT/IN/LIKE keywords count).

The parse itself, and what the official parser rejects (such a prediction scores 0), are in
:mod:`sqlora.evaluate.spider_sql`.
"""

from __future__ import annotations

from sqlora.data.schema import DatabaseSchema
from sqlora.evaluate.spider_sql import ALL_COLUMN, OP_IN, OP_LIKE, SpiderParseError, parse_spider_sql

__all__ = ["exact_match", "foreign_key_map"]


def foreign_key_map(schema: DatabaseSchema) -> dict[str, str]:
    """Column id -> representative column id of its foreign-key group (official kmap).

    Groups are built like the official code: each foreign-key pair joins the *first* existing
    group that holds either column (groups are not merged); each column maps to the column of
    lowest index in its group, later groups overriding earlier ones.
    """
    # Indexed as tables.json's columns: 0 is "*", then the database's columns in order.
    names = [ALL_COLUMN] + [f"__{schema.tables[c.table].lower()}.{c.name.lower()}__" for c in schema.columns]
    groups: list[set[int]] = []
    for a, b in schema.foreign_keys:
        group = next((g for g in groups if a in g or b in g), None)
        if group is None:
            group = set()
            groups.append(group)
        group.update((a, b))
    mapping: dict[str, str] = {}
    for group in groups:
        ordered = sorted(group)
        for idx in ordered:
            mapping[names[idx]] = names[ordered[0]]
    return mapping


# --------------------------------------------------------------------------- parsing


def _drop_values(sql: dict | None) -> dict | None:
    """Official rebuild_sql_val: condition values -> None unless they are nested queries."""
    if sql is None:
        return None

    def condition(conds: list) -> list:
        out = []
        for i, item in enumerate(conds):
            if i % 2:
                out.append(item)
                continue
            not_op, op_id, val_unit, val1, val2 = item
            val1 = _drop_values(val1) if isinstance(val1, dict) else None
            val2 = _drop_values(val2) if isinstance(val2, dict) else None
            out.append((not_op, op_id, val_unit, val1, val2))
        return out

    return {
        **sql,
        "from": {"table_units": sql["from"]["table_units"], "conds": condition(sql["from"]["conds"])},
        "where": condition(sql["where"]),
        "having": condition(sql["having"]),
        "intersect": _drop_values(sql["intersect"]),
        "union": _drop_values(sql["union"]),
        "except": _drop_values(sql["except"]),
    }


def _unify_columns(sql: dict | None, tables: set[str], kmap: dict[str, str]) -> dict | None:
    """Official rebuild_sql_col: FK unification (columns of ``tables`` only), DISTINCT cleared."""
    if sql is None:
        return None

    def col(unit):
        if unit is None:
            return None
        agg, col_id, _ = unit
        if col_id in kmap and col_id != ALL_COLUMN and col_id[2:].split(".", 1)[0] in tables:
            col_id = kmap[col_id]
        return (agg, col_id, None)

    def val(unit):
        return (unit[0], col(unit[1]), col(unit[2]))

    def condition(conds):
        return [c if i % 2 else (c[0], c[1], val(c[2]), c[3], c[4]) for i, c in enumerate(conds)]

    order = sql["orderBy"]
    return {
        "select": (None, [(agg, val(unit)) for agg, unit in sql["select"][1]]),
        "from": {"table_units": sql["from"]["table_units"], "conds": condition(sql["from"]["conds"])},
        "where": condition(sql["where"]),
        "groupBy": [col(c) for c in sql["groupBy"]],
        "having": condition(sql["having"]),
        "orderBy": (order[0], [val(u) for u in order[1]]) if order else order,
        "limit": sql["limit"],
        "intersect": _unify_columns(sql["intersect"], tables, kmap),
        "union": _unify_columns(sql["union"], tables, kmap),
        "except": _unify_columns(sql["except"], tables, kmap),
    }


def _rebuild(sql: dict, kmap: dict[str, str]) -> dict:
    tables = {unit[1][2:-2] for unit in sql["from"]["table_units"] if unit[0] == "table_unit"}
    return _unify_columns(_drop_values(sql), tables, kmap)


# --------------------------------------------------------------------------- comparison


def _bag_match(pred: list, gold: list) -> bool:
    """Official get_scores(...) f1 == 1 for a greedy bag match: same size, every item matched."""
    if len(pred) != len(gold):
        return False
    remaining = list(gold)
    for item in pred:
        if item not in remaining:
            return False
        remaining.remove(item)
    return True


def _keywords(sql: dict) -> set[str]:
    words = set()
    for key, word in (("where", "where"), ("groupBy", "group"), ("having", "having")):
        if sql[key]:
            words.add(word)
    if sql["orderBy"]:
        words.update((sql["orderBy"][0], "order"))
    if sql["limit"] is not None:
        words.add("limit")
    for op in ("except", "union", "intersect"):
        if sql[op] is not None:
            words.add(op)
    connectives = sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]
    units = sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]
    if "or" in connectives:
        words.add("or")
    if any(u[0] for u in units):
        words.add("not")
    if any(u[1] == OP_IN for u in units):
        words.add("in")
    if any(u[1] == OP_LIKE for u in units):
        words.add("like")
    return words


def _component_mismatch(pred: dict, gold: dict) -> str | None:
    """The first official partial component whose F1 is not 1, or None."""
    p_sel, g_sel = pred["select"][1], gold["select"][1]
    if not _bag_match(p_sel, g_sel):
        return "select"
    if not _bag_match([u[1] for u in p_sel], [u[1] for u in g_sel]):
        return "select(no AGG)"
    p_where, g_where = pred["where"][::2], gold["where"][::2]
    if not _bag_match(p_where, g_where):
        return "where"
    if not _bag_match([u[2] for u in p_where], [u[2] for u in g_where]):
        return "where(no OP)"

    def group_names(sql):
        return [c[1].split(".")[1] if "." in c[1] else c[1] for c in sql["groupBy"]]

    if not _bag_match(group_names(pred), group_names(gold)):
        return "group(no Having)"
    if bool(pred["groupBy"]) != bool(gold["groupBy"]) or (
        gold["groupBy"] and ([c[1] for c in pred["groupBy"]] != [c[1] for c in gold["groupBy"]] or pred["having"] != gold["having"])
    ):
        return "group"
    if bool(pred["orderBy"]) != bool(gold["orderBy"]) or (
        gold["orderBy"] and (pred["orderBy"] != gold["orderBy"] or (pred["limit"] is None) != (gold["limit"] is None))
    ):
        return "order"
    if set(pred["where"][1::2]) != set(gold["where"][1::2]):
        return "and/or"
    for op in ("intersect", "except", "union"):
        if (pred[op] is None) != (gold[op] is None):
            return "IUEN"
        if gold[op] is not None and not _sql_match(pred[op], gold[op]):
            return "IUEN"
    if _keywords(pred) != _keywords(gold):
        return "keywords"
    return None


def _sql_match(pred: dict, gold: dict) -> bool:
    """Official Evaluator.eval_exact_match on two rebuilt sql dicts."""
    if _component_mismatch(pred, gold) is not None:
        return False
    if gold["from"]["table_units"]:
        return _bag_match(pred["from"]["table_units"], gold["from"]["table_units"])
    return True


def exact_match(gold_sql: str, pred_sql: str, schema: DatabaseSchema) -> tuple[bool, str | None]:
    """Official Spider exact-set-match of ``pred_sql`` against ``gold_sql`` on one database.

    ``schema`` is the database's tables.json entry as :func:`sqlora.data.layouts.load_schemas` reads it.
    Returns ``(match, error)``; ``error`` is a one-line reason when the prediction cannot be parsed
    the official way (then match is False).
    Raises ValueError if the gold query cannot be parsed.
    """
    try:
        gold = parse_spider_sql(gold_sql, schema)
    except SpiderParseError as e:
        raise ValueError(f"cannot parse gold SQL ({e}): {' '.join(gold_sql.split())[:200]}") from None
    try:
        pred = parse_spider_sql(pred_sql, schema)
    except SpiderParseError as e:
        return False, " ".join(str(e).split())
    kmap = foreign_key_map(schema)
    return _sql_match(_rebuild(pred, kmap), _rebuild(gold, kmap)), None
