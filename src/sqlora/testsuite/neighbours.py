"""Neighbour queries of a gold query (Zhong, Yu & Klein 2020, section 3): each one small edit of it, the
queries a distilled test suite must tell apart from the gold (a database on which a neighbour and the gold
give different results "kills" that neighbour).

The gold is parsed with sqlglot (SQLite dialect) and every edit works on a deep copy of the tree, at every
site where it applies, in the tree's breadth-first order. Spider writes strings in double quotes; sqlglot
reads ``"France"`` as a quoted column, which the SQLite generator writes back as ``"France"``: SQLite then
reads it as it read the gold (a column where one has that name, else a string), and the column edits leave
it alone because no table in scope has such a column.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from itertools import islice

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

KINDS = ("column", "number", "comparison", "distinct", "aggregate", "condition", "group_by", "order_by", "limit")

COMPARISONS = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)
AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)
NOT_NUMBERS = (exp.Limit, exp.Offset, exp.Ordered, exp.Group)  # parents whose numeric literal the number kind leaves alone

Edit = Callable[[exp.Expression], object]  # mutates the copy's node at the site's position


@dataclass(frozen=True)
class Neighbour:
    kind: str  # one of KINDS
    sql: str


def neighbour_queries(sql: str, columns: dict[str, list[str]], *, limit: int = 0, seed: int = 0) -> list[Neighbour]:
    """The neighbours of ``sql`` (one edit each, none equal to the gold, no duplicates), in a deterministic order;
    ``columns`` maps each lower-case table name to its columns. With ``limit > 0``, a seeded sample of at most
    ``limit`` of them, in their order. A query sqlglot cannot parse, or one that is no query, gives []."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
        gold = tree.sql(dialect="sqlite")
    except (SqlglotError, ValueError, RecursionError):
        return []
    if not isinstance(tree, (exp.Select, exp.SetOperation)):
        return []
    tables = {name.lower(): [c for c in cols if c != "*"] for name, cols in columns.items()}
    seen, out = {gold}, []
    for position, node in enumerate(tree.walk()):
        for kind, edit in _edits(node, tables):
            copy = tree.copy()  # the walk of an equal tree visits equal nodes in the same order
            edit(next(islice(copy.walk(), position, None)))
            try:
                text = copy.sql(dialect="sqlite", copy=False)  # the copy is ours to spend: no second deep copy
            except (SqlglotError, ValueError):
                continue
            if text not in seen:
                seen.add(text)
                out.append(Neighbour(kind, text))
    if 0 < limit < len(out):
        keep = sorted(random.Random(seed).sample(range(len(out)), limit))
        out = [out[i] for i in keep]
    return out


def _edits(node: exp.Expression, tables: dict[str, list[str]]) -> Iterator[tuple[str, Edit]]:
    """The (kind, edit) pairs that apply at ``node``; each edit is given the same node of a fresh copy."""
    if isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier):  # not T1.*
        for other in _swaps(node, tables):
            yield "column", lambda n, other=other: n.set("this", exp.to_identifier(other))

    # ORDER BY 2 / GROUP BY 2 are column positions, not numbers; LIMIT and OFFSET belong to the limit kind
    elif isinstance(node, exp.Literal) and node.is_number and not isinstance(node.parent, NOT_NUMBERS):
        try:
            value = Decimal(node.this)
        except InvalidOperation:
            return
        for changed in (value + 1, value - 1):
            yield "number", lambda n, changed=changed: n.replace(exp.Literal.number(str(changed)))

    elif isinstance(node, COMPARISONS):
        for op in COMPARISONS:
            if not isinstance(node, op):
                yield "comparison", lambda n, op=op: n.replace(op(this=n.this, expression=n.expression))
    elif isinstance(node, exp.Like):  # sqlglot reads NOT LIKE as Like(negate=True)
        yield "comparison", lambda n: n.set("negate", not n.args.get("negate"))

    if isinstance(node, exp.Select) and (node.args.get("distinct") or _rows_can_repeat(node)):
        yield "distinct", lambda n: n.set("distinct", None if n.args.get("distinct") else exp.Distinct())
    elif isinstance(node, exp.Union):  # SQLite has no INTERSECT ALL / EXCEPT ALL
        yield "distinct", lambda n: n.set("distinct", not n.args.get("distinct"))

    if isinstance(node, AGGREGATES):
        argument = node.this
        if isinstance(argument, exp.Distinct):
            yield "distinct", lambda n: n.set("this", n.this.expressions[0])
        elif isinstance(node, exp.Count) and not isinstance(argument, exp.Star):
            yield "distinct", lambda n: n.set("this", exp.Distinct(expressions=[n.this]))
        for agg in AGGREGATES:
            # sum/avg/min/max(*) mean nothing; count(x) counts x's non-NULL rows, a different query from count(*)
            if not isinstance(node, agg) and not (isinstance(argument, exp.Star) and agg is not exp.Count):
                yield "aggregate", lambda n, agg=agg: n.replace(agg(this=n.this))

    if isinstance(node, (exp.Where, exp.Having)):
        conjuncts = _conjuncts(node.this)
        if len(conjuncts) == 1:
            yield "condition", lambda n: n.pop()
        else:
            for i in range(len(conjuncts)):
                yield "condition", lambda n, i=i: n.set("this", exp.and_(*_conjuncts(n.this)[:i], *_conjuncts(n.this)[i + 1 :]))

    if isinstance(node, exp.Group):
        select, order = node.parent, node.parent.args.get("order")
        # without GROUP BY, SQLite refuses an aggregate in ORDER BY unless the SELECT list has one too ("misuse of aggregate")
        if not (order and order.find(exp.AggFunc)) or any(e.find(exp.AggFunc) for e in select.expressions):
            yield "group_by", lambda n: (n.parent.set("having", None), n.pop())
        if len(node.expressions) > 1:
            for i in range(len(node.expressions)):
                yield "group_by", lambda n, i=i: n.expressions[i].pop()

    if isinstance(node, exp.Ordered):
        # flipping nulls_first too keeps SQLite's default NULL placement (NULLs sort first ascending)
        yield "order_by", lambda n: (n.set("desc", not n.args.get("desc")), n.set("nulls_first", not n.args.get("nulls_first")))
    elif isinstance(node, exp.Order):
        yield "order_by", lambda n: n.pop()

    if isinstance(node, exp.Limit):
        count = node.expression
        if isinstance(count, exp.Literal) and count.is_int:
            n_rows = int(count.this)
            for changed in (n_rows + 1, n_rows - 1) if n_rows > 1 else (n_rows + 1,):
                yield "limit", lambda n, changed=changed: n.set("expression", exp.Literal.number(changed))
        yield "limit", lambda n: n.pop()


def _swaps(column: exp.Column, tables: dict[str, list[str]]) -> list[str]:
    """The columns that may stand in for ``column``: the others of the table it reads. That is its qualifier's
    table (an alias resolved in the innermost SELECT that defines it), else the first table of the innermost
    SELECT (then the outer ones) that has such a column; unqualified, a name that another table of that SELECT
    also has is left out (SQLite: "ambiguous column name")."""
    qualifier, name = column.table.lower(), column.name.lower()
    scope = column.parent
    while scope is not None:
        if isinstance(scope, exp.Order) and isinstance(scope.parent, exp.SetOperation):
            return []  # the ORDER BY of a UNION names its output columns, not a table's
        if isinstance(scope, exp.Select):
            sources = [scope.args.get("from_")] + list(scope.args.get("joins") or [])
            aliases = {}
            for source in sources:
                if source is not None and isinstance(source.this, exp.Table):
                    aliases[(source.this.alias or source.this.name).lower()] = source.this.name.lower()
            if qualifier in aliases:
                return [c for c in tables.get(aliases[qualifier], []) if c.lower() != name]
            owners = [table for table in aliases.values() if name in (c.lower() for c in tables.get(table, []))]
            if owners and not qualifier:
                elsewhere = {c.lower() for table in aliases.values() if table != owners[0] for c in tables.get(table, [])}
                return [c for c in tables[owners[0]] if c.lower() != name and c.lower() not in elsewhere]
        scope = scope.parent
    return []


def _conjuncts(condition: exp.Expression) -> list[exp.Expression]:
    """The operands of a top-level AND chain (a parenthesised group is one operand)."""
    return list(condition.flatten(unnest=False)) if isinstance(condition, exp.And) else [condition]


def _rows_can_repeat(select: exp.Select) -> bool:
    """Whether DISTINCT could change ``select``'s result: not where it is one row (an aggregate without GROUP BY),
    an operand of a UNION / INTERSECT / EXCEPT that removes duplicates anyway, or the list of an IN (...)."""
    if select.args.get("group") is None and any(e.find(exp.AggFunc) for e in select.expressions):
        return False
    parent = select.parent.parent if isinstance(select.parent, exp.Subquery) else select.parent
    return not (isinstance(parent, exp.SetOperation) and parent.args.get("distinct")) and not isinstance(parent, exp.In)
