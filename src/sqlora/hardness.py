"""Spider hardness levels ("easy" / "medium" / "hard" / "extra") for a SQL query.

Reproduces the official Spider evaluator's ``Evaluator.eval_hardness`` (``evaluation.py`` in
taoyds/spider and taoyds/test-suite-sql-eval) on top of a sqlglot parse tree. The official
function works on the dict produced by Spider's ``process_sql.get_sql``; the mapping used here:

* The official dict describes only the *leftmost* SELECT of a compound query; everything after
  the first UNION/INTERSECT/EXCEPT is a single nested ``sql`` that is counted once and never
  looked into. So all clause counts below are taken from the leftmost SELECT.
* A "condition" is a flat chain ``cond AND cond OR cond ...``: its leaves are the predicates
  (the official ``cond_unit``s) and its connectives are the AND/OR tokens. ON conditions of all
  JOINs form one chain (the official ``from['conds']``), as do WHERE and HAVING.
* The query is the part of the text the official parser reads (:func:`official_reading`): a
  column used as a condition value swallows what follows it up to the next AND (so
  ``ON a = b OR a = c`` has one predicate and no OR), and a clause out of order ends the query.
* A nested query is counted where the official ``get_nestedSQL`` finds one: as an operand of a
  predicate in ON/WHERE/HAVING (``x IN (SELECT ...)``, ``x > (SELECT ...)``), plus one for a
  set operation. Subqueries used as a FROM source are *not* nested queries there; they only
  count as an extra table unit (``len(table_units) - 1``).

``count_others`` keeps two quirks of the official code, because the published hardness labels
(and per-level scores) depend on them:

* WHERE predicates are checked with ``has_agg(cond_unit)``, which looks at the cond unit's
  ``not_op`` flag: every negated predicate (NOT IN, NOT LIKE, NOT BETWEEN) counts as an
  aggregate, while real aggregates in WHERE do not.
* HAVING is passed whole, connectives included, so every AND/OR in HAVING counts as an
  aggregate, as does every negated HAVING predicate; ``count(*) > 1`` itself does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType as T

# The official evaluator only knows these five aggregates (AGG_OPS in process_sql.py).
_AGGREGATES = (exp.Count, exp.Max, exp.Min, exp.Sum, exp.Avg)
_QUERY_NODES = (exp.Select, exp.SetOperation, exp.Subquery)


@dataclass(frozen=True)
class _Condition:
    """A flattened AND/OR chain: its predicates (leaves) and how many connectives were ORs."""

    leaves: list[exp.Expression]
    ands: int
    ors: int

    @property
    def connectives(self) -> int:
        return self.ands + self.ors


def spider_hardness(sql: str) -> str:
    """Return the official Spider hardness of ``sql``: "easy", "medium", "hard" or "extra".

    Raises ValueError if sqlglot cannot parse ``sql`` as one SQLite query.
    """
    root = _parse(sql)
    select = _leftmost_select(root)
    return hardness_level(_count_component1(select), _count_component2(root, select), _count_others(select))


def hardness_or_unparsed(sql: str) -> str:
    """The Spider hardness of ``sql``, or "unparsed" when it cannot be parsed: malformed gold SQL
    exists (25 CoSQL dev turns), and such examples count in totals only, in no hardness level."""
    try:
        return spider_hardness(sql)
    except ValueError:
        return "unparsed"


def hardness_level(comp1: int, comp2: int, others: int) -> str:
    """The official thresholds on the three counts."""
    if comp1 <= 1 and others == 0 and comp2 == 0:
        return "easy"
    if (others <= 2 and comp1 <= 1 and comp2 == 0) or (comp1 <= 2 and others < 2 and comp2 == 0):
        return "medium"
    if (
        (others > 2 and comp1 <= 2 and comp2 == 0)
        or (2 < comp1 <= 3 and others <= 2 and comp2 == 0)
        or (comp1 <= 1 and others == 0 and comp2 <= 1)
    ):
        return "hard"
    return "extra"


def parse_statement(sql: str) -> exp.Expression:
    """The one SQLite statement of ``sql``; ValueError (one line, no SQL echoed) otherwise."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="sqlite") if s is not None]
    except SqlglotError as e:
        raise ValueError(f"cannot parse SQL ({describe_error(e)})") from None
    if len(statements) != 1:
        raise ValueError(f"expected one SQL statement, got {len(statements)}")
    return statements[0]


def _parse(sql: str) -> exp.Expression:
    first_line = " ".join(sql.split())[:200]
    try:
        root = parse_statement(official_reading(sql, tokenize(sql))[0])
    except ValueError as e:
        raise ValueError(f"{e} for hardness: {first_line}") from None
    if not isinstance(_unwrap(root), (exp.Select, exp.SetOperation)):
        raise ValueError(f"not a SELECT query: {first_line}")
    return root


def describe_error(error: SqlglotError) -> str:
    """sqlglot's error on one line, without its terminal highlighting."""
    details = getattr(error, "errors", None)
    if details:  # ParseError: use the first structured error, without sqlglot's highlighting
        first = details[0]
        text = f"{first.get('description')} at line {first.get('line')}, col {first.get('col')}"
    else:
        text = str(error)
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def tokenize(sql: str) -> list:
    """sqlglot's SQLite tokens of ``sql``; ValueError (one line) where it cannot tokenize."""
    try:
        return sqlglot.Dialect.get_or_raise("sqlite").tokenize(sql)
    except SqlglotError as e:
        raise ValueError(f"cannot parse SQL ({describe_error(e)})") from None


# --- what the official parser (process_sql.get_sql) reads of a query ---------------------------

# Where its parse_value stops reading a column value: "," ")" AND, clause and join keywords; OR is
# not one. Nor is ";", but it reads on to the next statement's SELECT, which stops it all the same.
_VALUE_STOPS = {
    T.COMMA, T.R_PAREN, T.AND, T.SEMICOLON, T.SELECT, T.FROM, T.WHERE, T.GROUP_BY, T.ORDER_BY, T.LIMIT,
    T.INTERSECT, T.UNION, T.EXCEPT, T.JOIN, T.ON, T.ALIAS,
}
_VALUE_OPS = {T.EQ, T.NEQ, T.GT, T.GTE, T.LT, T.LTE, T.LIKE, T.IN, T.IS, T.BETWEEN}
# Words it reads as a column and then fails on: left as they are, for the parser to reject too.
_NOT_COLUMNS = {T.STRING, T.IDENTIFIER, T.SELECT, T.NOT, T.NULL, T.CASE, T.EXISTS, T.TRUE, T.FALSE}
_WORD = re.compile(r"[A-Za-z_]\w*")
# The clause order of its parse_sql (FROM with its JOINs is 0).
_CLAUSE_RANKS = {T.WHERE: 1, T.GROUP_BY: 2, T.HAVING: 3, T.ORDER_BY: 4, T.LIMIT: 5}
_SET_OPS = {T.UNION, T.INTERSECT, T.EXCEPT}


def official_reading(sql: str, tokens: list) -> tuple[str, list, list]:
    """What the official parser reads of ``sql`` (one statement; ``tokens``: its sqlglot tokens).

    Returns the query text it parses, that text's tokens, and the tokens after it, which it reads
    past without parsing (only their "X AS Y" aliases count there). The query text is ``sql``
    without what a column value swallows (:func:`_skip_column_values`), cut where a clause out of
    order ends the query (:func:`_clause_order_end`). Raises ValueError where the official fails.
    """
    text = _skip_column_values(sql, tokens)
    if text != sql:
        tokens = tokenize(text)
    end = _clause_order_end(tokens)
    if end is None:
        return text, tokens, []
    return text[: tokens[end].start], tokens[:end], tokens[end:]


def _is_column_value(tok) -> bool:
    """Whether the official reads a value starting with ``tok`` as a column: not a number, string or (query)."""
    return tok.token_type not in _NOT_COLUMNS and _WORD.fullmatch(tok.text) is not None


def _skip_column_values(sql: str, tokens: list) -> str:
    """``sql`` without the tokens the official skips after a column used as a condition value.

    Its parse_value reads such a value as the first token (``T2.id``) of the tokens up to the
    next stop (_VALUE_STOPS) and skips the rest of them. OR is not a stop, so
    ``ON a = b OR a = c`` reads as ``ON a = b`` and ``x = T2.y OR z = 1 AND w = 2`` as
    ``x = T2.y AND w = 2``; ``b + 1`` reads as ``b``, ``ON a = b LEFT JOIN`` as ``ON a = b JOIN``.
    """
    cuts = []
    between = False  # after BETWEEN's low value, its AND starts a value too
    i = 0
    while i < len(tokens) - 1:
        kind = tokens[i].token_type
        starts_value = kind in _VALUE_OPS or (between and kind == T.AND)
        between = kind == T.BETWEEN or (between and kind != T.AND)
        i += 1
        if not starts_value or not _is_column_value(tokens[i]):
            continue
        if i + 2 < len(tokens) and tokens[i + 1].token_type == T.DOT:
            i += 2  # "T1.name" is one token there
        stop = next((j for j in range(i + 1, len(tokens)) if tokens[j].token_type in _VALUE_STOPS), len(tokens))
        if stop > i + 1:
            cuts.append((tokens[i].end + 1, tokens[stop].start if stop < len(tokens) else len(sql)))
        i = stop
    for start, end in reversed(cuts):
        sql = sql[:start] + " " + sql[end:]
    return sql


def _clause_order_end(tokens: list) -> int | None:
    """Index of the token where the official stops reading the query (None: it reads it all).

    Its parse_sql reads a query's clauses in one fixed order: FROM (JOIN, ON), WHERE, GROUP BY,
    HAVING, ORDER BY, LIMIT (one value), then INTERSECT/UNION/EXCEPT and the next query. A clause
    out of that order, a repeated one, or a second SELECT or FROM ends the query where it stands;
    at the top level the rest is never read (get_sql does not check that it read everything), so
    ``... ORDER BY x GROUP BY y`` reads as ``... ORDER BY x``. Inside parentheses the parser then
    expects ")" and fails: ValueError. So it does on HAVING without GROUP BY just before it.
    """
    ranks = [-1]  # per open parenthesis: its query's last clause (-1: SELECT list), None: no query

    def end(i: int, what: str) -> int:
        if len(ranks) > 1:
            raise ValueError(f"{what} inside parentheses")
        return i

    for i, tok in enumerate(tokens):
        kind, rank = tok.token_type, ranks[-1]
        if kind == T.SEMICOLON:
            return None  # the statement ends: what follows is the caller's
        if kind == T.L_PAREN:
            ranks.append(-1 if i + 1 < len(tokens) and tokens[i + 1].token_type == T.SELECT else None)
        elif kind == T.R_PAREN:
            if len(ranks) == 1:
                return i  # a ")" closing nothing ends the query too
            ranks.pop()
        elif rank is not None:
            ranks[-1] = _rank_after(kind, rank)
            if ranks[-1] is None:
                return end(i, f"{tok.text.upper()} out of clause order")
            after = i + 2  # LIMIT reads one value; only ")" or a set operation may follow it
            if kind == T.LIMIT and after < len(tokens) and tokens[after].token_type not in _SET_OPS | {T.R_PAREN, T.SEMICOLON}:
                return end(after, "text after the LIMIT value")
    return None


def _rank_after(kind: T, rank: int) -> int | None:
    """A query's last clause once the official has read token ``kind`` (``rank``: the one before).

    None where the clause cannot come next, so the query ends there.
    """
    if kind in _SET_OPS:
        return -1  # the next query starts
    if kind == T.FROM:
        return 0 if rank < 0 else None
    if kind in (T.SELECT, T.JOIN, T.ON):
        return rank if rank <= (-1 if kind == T.SELECT else 0) else None
    clause = _CLAUSE_RANKS.get(kind)
    if clause is None or rank < 0:
        return rank  # not a clause, or one before FROM: left to the parser
    if kind == T.HAVING and rank in (0, 1, 3):
        raise ValueError("HAVING not right after GROUP BY")  # the official reads it as a column name there
    return clause if clause > rank else None


def _unwrap(node: exp.Expression) -> exp.Expression:
    """Strip parentheses around a query: ``(SELECT ...)`` -> ``SELECT ...``."""
    while isinstance(node, (exp.Subquery, exp.Paren)) and isinstance(node.this, exp.Expression):
        node = node.this
    return node


def _leftmost_select(root: exp.Expression) -> exp.Select:
    node = _unwrap(root)
    while isinstance(node, exp.SetOperation):
        node = _unwrap(node.this)
    if not isinstance(node, exp.Select):
        raise ValueError(f"not a SELECT query: {root.sql(dialect='sqlite')[:200]}")
    return node


def _flatten(condition: exp.Expression | None) -> _Condition:
    """Flatten nested AND/OR (and grouping parentheses) into leaves and connective counts."""
    leaves: list[exp.Expression] = []
    ands = ors = 0
    stack = [condition] if condition is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, exp.Paren):
            stack.append(node.this)
        elif isinstance(node, (exp.And, exp.Or)):
            if isinstance(node, exp.And):
                ands += 1
            else:
                ors += 1
            # Right first so leaves come out in source order.
            stack.append(node.expression)
            stack.append(node.this)
        else:
            leaves.append(node)
    return _Condition(leaves, ands, ors)


def _clause_condition(select: exp.Select, key: str) -> _Condition:
    clause = select.args.get(key)
    return _flatten(clause.this if clause is not None else None)


def _on_condition(select: exp.Select) -> _Condition:
    """All JOIN ... ON conditions as one chain, joined by AND like the official from['conds']."""
    parts = [_flatten(join.args.get("on")) for join in select.args.get("joins") or []]
    parts = [p for p in parts if p.leaves]
    return _Condition(
        leaves=[leaf for p in parts for leaf in p.leaves],
        ands=sum(p.ands for p in parts) + max(len(parts) - 1, 0),
        ors=sum(p.ors for p in parts),
    )


def _outside_subqueries(node: exp.Expression):
    """Yield ``node`` and its descendants, without entering nested queries."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for child in current.iter_expressions():
            if not isinstance(child, _QUERY_NODES):
                stack.append(child)


def _aggregate_count(node: exp.Expression) -> int:
    return sum(isinstance(n, _AGGREGATES) for n in _outside_subqueries(node))


def _nested_query_count(node: exp.Expression) -> int:
    """Number of subqueries appearing directly as operands inside a predicate."""
    count = 0
    stack = list(node.iter_expressions())
    while stack:
        current = stack.pop()
        if isinstance(current, _QUERY_NODES):
            count += 1
        else:
            stack.extend(current.iter_expressions())
    return count


def _is_negated(predicate: exp.Expression) -> bool:
    # sqlglot parses `a NOT IN (...)` / `a NOT LIKE b` / `a NOT BETWEEN ...` as Not(In/Like/...):
    # exactly the official cond_unit's not_op.
    return isinstance(predicate, exp.Not)


def _is_like(predicate: exp.Expression) -> bool:
    if isinstance(predicate, exp.Not):
        predicate = predicate.this
    return isinstance(predicate, exp.Like)


def _table_unit_count(select: exp.Select) -> int:
    sources = 1 if select.args.get("from_") is not None else 0
    return sources + len(select.args.get("joins") or [])


def _conditions(select: exp.Select) -> list[_Condition]:
    return [
        _on_condition(select),
        _clause_condition(select, "where"),
        _clause_condition(select, "having"),
    ]


def _count_component1(select: exp.Select) -> int:
    count = 0
    for key in ("where", "group", "order", "limit"):
        if select.args.get(key) is not None:
            count += 1
    count += max(_table_unit_count(select) - 1, 0)
    for condition in _conditions(select):
        count += condition.ors
        count += sum(_is_like(leaf) for leaf in condition.leaves)
    return count


def _count_component2(root: exp.Expression, select: exp.Select) -> int:
    count = sum(
        _nested_query_count(leaf) for condition in _conditions(select) for leaf in condition.leaves
    )
    # A compound query is one nested sql, however many set operations follow the first SELECT.
    if isinstance(_unwrap(root), exp.SetOperation):
        count += 1
    return count


def _count_others(select: exp.Select) -> int:
    where = _clause_condition(select, "where")
    having = _clause_condition(select, "having")
    group = select.args.get("group")
    group_exprs = group.expressions if group is not None else []
    order = select.args.get("order")

    # Each SELECT item has at most one aggregate in the official parse (its agg_id).
    agg_count = sum(_aggregate_count(item) > 0 for item in select.expressions)
    # Official quirk: has_agg() on a WHERE cond_unit reads its not_op flag.
    agg_count += sum(_is_negated(leaf) for leaf in where.leaves)
    agg_count += sum(_aggregate_count(e) > 0 for e in group_exprs)
    if order is not None:
        agg_count += sum(_aggregate_count(term) for term in order.expressions)
    # Official quirk: HAVING is passed with its AND/OR tokens, each of which "has an aggregate".
    agg_count += having.connectives + sum(_is_negated(leaf) for leaf in having.leaves)

    count = 0
    if agg_count > 1:
        count += 1
    if len(select.expressions) > 1:
        count += 1
    if len(where.leaves) > 1:
        count += 1
    if len(group_exprs) > 1:
        count += 1
    return count
