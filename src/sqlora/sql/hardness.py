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

from dataclasses import dataclass

from sqlglot import exp

from sqlora.sql.official_reading import official_reading
from sqlora.sql.parse import parse_statement, tokenize

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


def _parse(sql: str) -> exp.Expression:
    first_line = " ".join(sql.split())[:200]
    try:
        root = parse_statement(official_reading(sql, tokenize(sql))[0])
    except ValueError as e:
        raise ValueError(f"{e} for hardness: {first_line}") from None
    if not isinstance(_unwrap(root), (exp.Select, exp.SetOperation)):
        raise ValueError(f"not a SELECT query: {first_line}")
    return root


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
    count = sum(_nested_query_count(leaf) for condition in _conditions(select) for leaf in condition.leaves)
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
