"""Perturbed predictions of Spider gold queries, for the evaluator benchmarks (bench_eval, bench_testsuite):
each a kind of mistake a model makes or a harmless rewrite the scorer must accept, applied with seeded
choices so that every run perturbs the same way."""

import json
import random
import re
from pathlib import Path

from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import TokenType as T

tokenize = Dialect.get_or_raise("sqlite").tokenize
AGGREGATES = {"count", "max", "min", "avg", "sum"}
KEYWORDS = {
    T.SELECT,
    T.FROM,
    T.WHERE,
    T.JOIN,
    T.ON,
    T.AND,
    T.OR,
    T.ALIAS,
    T.ORDER_BY,
    T.GROUP_BY,
    T.LIMIT,
    T.DESC,
    T.ASC,
    T.DISTINCT,
    T.HAVING,
    T.IN,
    T.NOT,
    T.LIKE,
    T.BETWEEN,
    T.UNION,
    T.INTERSECT,
    T.EXCEPT,
}
ENDS_CLAUSE = (T.LIMIT, T.UNION, T.INTERSECT, T.EXCEPT)


def raw(sql, t):  # a token as written
    return sql[t.start : t.end + 1]


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


def p_drop_order(sql, toks, rng, db):  # one ORDER BY clause removed, up to its LIMIT / end of (sub)query
    d = depths(toks)
    k = rng.choice([k for k, t in enumerate(toks) if t.token_type == T.ORDER_BY] or [None])
    if k is None:
        return None
    ends = [t.start for t, dt in zip(toks[k + 1 :], d[k + 1 :]) if dt < d[k] or (dt == d[k] and t.token_type in ENDS_CLAUSE)]
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


def p_wrong_column(sql, toks, rng, db, columns):  # a column replaced by another column of a table the query uses
    tables = {name: cols for name, cols in columns[db].items() if name in {t.text.lower() for t in toks}}
    spots = [
        (t, [c for c in cols if c.lower() != t.text.lower()])
        for k, t in enumerate(toks)
        if t.token_type == T.VAR and (k == 0 or toks[k - 1].token_type != T.ALIAS)
        for cols in tables.values()
        if t.text.lower() in (c.lower() for c in cols) and len(cols) > 1
    ]
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
    t = rng.choice(
        [toks[k + 1] for k, t in enumerate(toks[:-1]) if t.token_type == T.LIMIT and toks[k + 1].token_type == T.NUMBER] or [None]
    )
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
        end = next(
            (
                k
                for k in range(s + 1, len(toks))
                if d[k] < d[s] or (d[k] == d[s] and toks[k].token_type in (T.UNION, T.INTERSECT, T.EXCEPT))
            ),
            len(toks),
        )
        starts = [k for k in range(s, end) if d[k] == d[s] and toks[k].token_type in clauses]
        blocks += [(starts, end)] if len(starts) > 1 else []
    if not blocks:
        return None
    starts, end = rng.choice(blocks)
    i = rng.randrange(len(starts) - 1)
    a, b, stop = toks[starts[i]].start, toks[starts[i + 1]].start, toks[end].start if end < len(toks) else len(sql)
    return f"{sql[:a]}{sql[b:stop].rstrip()} {sql[a:b].strip()} {sql[stop:]}".rstrip()


class Perturber:
    """Perturbations of the gold queries of one dataset: ``golds`` [(sql, db_id)], ``columns`` {db_id: {table
    (lower case): [column, ...]}} (tables.json's original names)."""

    def __init__(self, golds, columns):
        self.golds, self.columns = golds, columns
        self.kinds = {
            "unchanged": lambda sql, toks, rng, db: sql,
            "other_gold": self.other_gold,
            "drop_order": p_drop_order,
            "add_order": p_add_order,
            "toggle_distinct": p_toggle_distinct,
            "reorder_select": p_reorder_select,
            "change_literal": p_change_literal,
            "swap_join": p_swap_join,
            "wrong_column": lambda sql, toks, rng, db: p_wrong_column(sql, toks, rng, db, self.columns),
            "value_placeholder": p_value_placeholder,
            "spaced_operator": p_spaced_operator,
            "change_limit": p_change_limit,
            "whitespace_case": p_whitespace_case,
            "or_condition": p_or_condition,
            "clause_order": p_clause_order,
            "truncate": lambda sql, toks, rng, db: sql[: toks[rng.randrange(1, len(toks))].start].rstrip() if len(toks) > 2 else None,
            "trailing_semicolon": lambda sql, toks, rng, db: sql + " ;",
            "two_statements": lambda sql, toks, rng, db: f"{sql.rstrip(';')}; {self.other_gold(sql, toks, rng, db) or 'SELECT 1'}",
            "empty": lambda sql, toks, rng, db: "",
        }

    def other_gold(self, sql, toks, rng, db):  # another question's gold on the same database
        others = sorted({g for g, d in self.golds if d == db and g != sql})
        return rng.choice(others) if others else None

    def __call__(self, index, sql, db):
        """(kind, prediction): the first perturbation that applies, in an order seeded by the dev index."""
        rng = random.Random(index)
        toks = tokenize(sql)
        for kind in rng.sample(sorted(self.kinds), len(self.kinds)):
            new = self.kinds[kind](sql, toks, rng, db)
            if new is not None and (new != sql or kind == "unchanged"):
                return kind, re.sub(r"[\r\n\t]", " ", new)  # one prediction per line


def table_columns(tables_path):
    """{db_id: {table (lower case): [column, ...]}} from a tables.json, original names."""
    columns = {}
    for entry in json.loads(Path(tables_path).read_text(encoding="utf-8")):
        columns[entry["db_id"]] = {
            name.lower(): [c for t, c in entry["column_names_original"] if t == i] for i, name in enumerate(entry["table_names_original"])
        }
    return columns
