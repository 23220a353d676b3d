"""A query as the official Spider evaluator's parser (``process_sql.get_sql``) structures it: the
"sql" dict that exact match compares, built from a sqlglot parse (:func:`parse_spider_sql`).

What is parsed is the part of the text the official parser reads (``sqlora.sql.official_reading``):
a condition value that is a column swallows what follows it up to the next AND, so
``ON a = b OR a = c`` is ``ON a = b`` (and no OR keyword); a clause out of the parser's fixed order
(FROM, WHERE, GROUP BY, HAVING, ORDER BY, LIMIT, then INTERSECT/UNION/EXCEPT) ends the query, so
``... ORDER BY x GROUP BY y`` is ``... ORDER BY x`` (inside parentheses it fails instead).

A prediction that the official parser would reject scores 0 (it is replaced there by an empty
query). The official parser is a simple token scanner, so many valid SQL constructs are rejected:
column aliases, table aliases without AS, LEFT/INNER/CROSS/comma joins, ``<>``, ``IS NULL``,
parenthesised conditions, IN lists, EXISTS, UNION ALL, functions other than the five aggregates,
double-quoted or bracketed identifiers (double quotes are string values there), and so on.
"""

from __future__ import annotations

import re
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from sqlora.data.schema import DatabaseSchema
from sqlora.sql.official_reading import official_reading
from sqlora.sql.parse import describe_error, parse_statement

# process_sql's WHERE_OPS indexes of the operators that need more than a comparison.
OP_BETWEEN, OP_IN, OP_LIKE, OP_IS = 1, 8, 9, 10
ALL_COLUMN = "__all__"

_AGG_IDS = {exp.Max: 1, exp.Min: 2, exp.Count: 3, exp.Sum: 4, exp.Avg: 5}
_UNIT_IDS = {exp.Sub: 1, exp.Add: 2, exp.Mul: 3, exp.Div: 4}
_COMPARISON_IDS = {exp.EQ: 2, exp.GT: 3, exp.LT: 4, exp.GTE: 5, exp.LTE: 6, exp.NEQ: 7}
_SET_OPS = {exp.Intersect: "intersect", exp.Union: "union", exp.Except: "except"}
_ALLOWED_SELECT_ARGS = {
    "expressions",
    "from_",
    "joins",
    "where",
    "group",
    "having",
    "order",
    "limit",
    "offset",
    "distinct",
    "kind",
}


class SpiderParseError(ValueError):
    """The official Spider parser would reject this query."""


# --------------------------------------------------------------------------- schema


class _Schema:
    """Lowercased tables and columns of one database (the official ``Schema``)."""

    def __init__(self, schema: DatabaseSchema):
        tables = [t.lower() for t in schema.tables]
        self.columns: dict[str, list[str]] = {t: [] for t in tables}
        for column in schema.columns:
            self.columns[tables[column.table]].append(column.name.lower())
        self.tables = tables

    def column_id(self, table: str, column: str) -> str:
        if table not in self.columns or column not in self.columns[table]:
            raise SpiderParseError(f"unknown column {table}.{column}")
        return f"__{table}.{column}__"


_SPACED_COMPARISON = re.compile(r"""('[^']*'|"[^"]*")|([!<>])\s+=""")


def _fail(message: str) -> SpiderParseError:
    return SpiderParseError(message)


def _check_tokens(sql: str) -> list:
    """Token-level rules of the official tokenizer that sqlglot would otherwise accept."""
    # Official: every ' becomes ", then quotes pair up left to right; each pair is one value.
    text = sql.replace("'", '"')
    quotes = [i for i, ch in enumerate(text) if ch == '"']
    if len(quotes) % 2:
        raise _fail("unbalanced quotes")
    pairs = {(quotes[i], quotes[i + 1]) for i in range(0, len(quotes), 2)}
    try:
        tokens = sqlglot.Dialect.get_or_raise("sqlite").tokenize(sql)
    except SqlglotError as e:
        raise _fail(describe_error(e)) from None
    spans = set()
    for tok in tokens:
        first = sql[tok.start] if tok.start < len(sql) else ""
        if tok.token_type == TokenType.STRING or (tok.token_type == TokenType.IDENTIFIER and first == '"'):
            spans.add((tok.start, tok.end))
        elif tok.token_type == TokenType.IDENTIFIER:
            raise _fail(f"quoted identifier {sql[tok.start : tok.end + 1]} is not supported")
        elif tok.text in ("<>", "=="):
            raise _fail(f"operator {tok.text} is not supported")
    if spans != pairs:
        raise _fail("quoted strings containing quotes are not supported")
    if tokens and tokens[-1].token_type == TokenType.ALIAS:
        raise _fail("AS at the end of the text")  # official scan_alias reads the token after every AS
    return tokens


class _Parser:
    """sqlglot tree -> the official Spider "sql" dict.

    col_unit: (agg_id, col_id, distinct); val_unit: (unit_op, col_unit1, col_unit2);
    cond_unit: (not_op, op_id, val_unit, val1, val2); condition: [cond, 'and'/'or', cond, ...];
    table_unit: ('table_unit', table_id) or ('sql', sql).
    """

    def __init__(self, schema: _Schema, root: exp.Expression, tokens: list, unread: list):
        self.schema = schema
        self.aliases = self._scan_aliases(root, tokens, unread)

    # Official: one alias map for the whole text, built from every "X AS Y"; the last wins.
    def _scan_aliases(self, root: exp.Expression, tokens: list, unread: list) -> dict[str, str]:
        found = self._aliases_in(root, tokens)
        # Text read past without parsing (after the query, later statements): its tokens alone.
        found += [
            (1, k, unread[k + 1].text.lower(), unread[k - 1].text.lower())
            for k in range(1, len(unread) - 1)
            if unread[k].token_type == TokenType.ALIAS
        ]
        mapping: dict[str, str] = {}
        for _, _, alias, table in sorted(found):
            mapping[alias] = table
        for table in self.schema.tables:
            if table in mapping:
                raise _fail(f"alias {table} has the same name as a table")
            mapping[table] = table
        return mapping

    def _aliases_in(self, root: exp.Expression, tokens: list) -> list[tuple[int, int, str, str]]:
        alias_tokens = {tok.start: i for i, tok in enumerate(tokens)}
        found: list[tuple[int, int, str, str]] = []
        for node in root.find_all(exp.Table, exp.Subquery):
            alias = node.args.get("alias")
            if alias is None or alias.this is None:
                continue
            ident = alias.this
            start = ident.meta.get("start") if isinstance(ident, exp.Identifier) else None
            pos = alias_tokens.get(start) if start is not None else None
            if pos is None or pos == 0 or tokens[pos - 1].token_type != TokenType.ALIAS:
                raise _fail(f"alias {ident.name} without AS is not supported")
            if isinstance(node, exp.Subquery):
                raise _fail("aliased FROM subqueries are not supported")
            found.append((0, start, ident.name.lower(), self._table_name(node)))
        return found

    @staticmethod
    def _table_name(table: exp.Table) -> str:
        if table.args.get("db") is not None or table.args.get("catalog") is not None:
            raise _fail("qualified table names are not supported")
        if not isinstance(table.this, exp.Identifier) or table.this.quoted:
            raise _fail("unsupported table reference")
        return table.name.lower()

    # -- query level

    def query(self, node: exp.Expression) -> dict:
        node = _unwrap(node)
        if isinstance(node, exp.SetOperation):
            parts: list[exp.Expression] = []
            ops: list[str] = []
            self._flatten_set(node, parts, ops)
            trailing = {k: node.args.get(k) for k in ("order", "limit", "offset")}
            if any(v is not None for v in trailing.values()):
                last = parts[-1]
                if not isinstance(last, exp.Select) or any(last.args.get(k) for k in trailing):
                    raise _fail("unsupported ORDER BY/LIMIT on a compound query")
                last = last.copy()
                for key, value in trailing.items():
                    if value is not None:
                        last.set(key, value)
                parts[-1] = last
            result = self.select(parts[-1])
            for part, op in zip(reversed(parts[:-1]), reversed(ops)):
                left = self.select(part)
                left[op] = result
                result = left
            return result
        return self.select(node)

    def _flatten_set(self, node: exp.Expression, parts: list, ops: list) -> None:
        node = _unwrap(node)
        if isinstance(node, exp.SetOperation):
            op = _SET_OPS.get(type(node))
            if op is None or node.args.get("distinct") is False:
                raise _fail("unsupported set operation (e.g. UNION ALL)")
            for key, value in node.args.items():
                if key not in ("this", "expression", "distinct", "order", "limit", "offset") and value:
                    raise _fail(f"unsupported set operation clause {key}")
            self._flatten_set(node.this, parts, ops)
            ops.append(op)
            self._flatten_set(node.expression, parts, ops)
        else:
            parts.append(node)

    def select(self, node: exp.Expression) -> dict:
        node = _unwrap(node)
        if not isinstance(node, exp.Select):
            raise _fail(f"not a SELECT: {type(node).__name__}")
        for key, value in node.args.items():
            if value and key not in _ALLOWED_SELECT_ARGS:
                raise _fail(f"unsupported clause {key}")
        if node.args.get("kind"):
            raise _fail("unsupported SELECT kind")
        distinct = node.args.get("distinct")
        if distinct is not None and distinct.args.get("on") is not None:
            raise _fail("DISTINCT ON is not supported")

        from_ = node.args.get("from_")
        if from_ is None:
            raise _fail("missing FROM")
        table_units: list[tuple] = []
        default_tables: list[str] = []
        conds: list = []
        sources = [(from_.this, None)] + [(j.this, j) for j in node.args.get("joins") or []]
        for source, join in sources:
            if join is not None:
                if join.args.get("side") or join.args.get("kind") or join.args.get("using") or join.args.get("method"):
                    raise _fail("only plain JOIN ... ON is supported")
            if isinstance(source, exp.Subquery) or isinstance(source, (exp.Select, exp.SetOperation)):
                table_units.append(("sql", self.query(source)))
            elif isinstance(source, exp.Table):
                table = self._table_name(source)
                if table not in self.schema.columns:
                    raise _fail(f"unknown table {table}")
                table_units.append(("table_unit", f"__{table}__"))
                default_tables.append(table)
            else:
                raise _fail(f"unsupported FROM item {type(source).__name__}")
            on = join.args.get("on") if join is not None else None
            if isinstance(on, exp.Boolean) and on.this is True:
                on = None  # sqlglot's placeholder for a JOIN without ON
            if on is not None:
                this_conds = self.condition(on, list(default_tables))
                if conds:
                    conds.append("and")
                conds.extend(this_conds)

        items = []
        for item in node.expressions:
            items.append(self.select_item(item, default_tables))
        where = node.args.get("where")
        group = node.args.get("group")
        having = node.args.get("having")
        order = node.args.get("order")
        if group is not None:
            for key, value in group.args.items():
                if key != "expressions" and value:
                    raise _fail("unsupported GROUP BY form")
        return {
            "select": (distinct is not None, items),
            "from": {"table_units": table_units, "conds": conds},
            "where": self.condition(where.this, default_tables) if where is not None else [],
            "groupBy": [self.col_unit(e, default_tables) for e in group.expressions] if group is not None else [],
            "having": self.condition(having.this, default_tables) if having is not None else [],
            "orderBy": self.order(order, default_tables) if order is not None else [],
            "limit": 1 if node.args.get("limit") is not None else None,
            "intersect": None,
            "union": None,
            "except": None,
        }

    def order(self, order: exp.Order, tables: list[str]) -> tuple:
        direction = "asc"
        units = []
        for term in order.expressions:
            if not isinstance(term, exp.Ordered):
                raise _fail("unsupported ORDER BY term")
            if term.args.get("desc"):
                direction = "desc"
            elif term.args.get("desc") is False:
                direction = "asc"
            units.append(self.val_unit(term.this, tables))
        return (direction, units)

    # -- expressions

    def select_item(self, item: exp.Expression, tables: list[str]) -> tuple:
        if isinstance(item, exp.Alias):
            raise _fail("column aliases are not supported")
        agg = _AGG_IDS.get(type(item))
        if agg is not None:
            inner, distinct = _aggregate_argument(item)
            unit_op, c1, c2 = self.val_unit(inner, tables)
            if distinct:
                c1 = (c1[0], c1[1], True)
            return (agg, (unit_op, c1, c2))
        if isinstance(item, tuple(_UNIT_IDS)) and type(_unwrap_paren(item.this)) in _AGG_IDS:
            # Official: a leading aggregate ends the item; the operator that follows is rejected.
            raise _fail("arithmetic on an aggregate in SELECT is not supported")
        return (0, self.val_unit(item, tables))

    def val_unit(self, node: exp.Expression, tables: list[str]) -> tuple:
        node = _unwrap_paren(node)
        op = _UNIT_IDS.get(type(node))
        if op is not None:
            return (op, self.col_unit(node.this, tables), self.col_unit(node.expression, tables))
        return (0, self.col_unit(node, tables), None)

    def col_unit(self, node: exp.Expression, tables: list[str]) -> tuple:
        node = _unwrap_paren(node)
        agg = _AGG_IDS.get(type(node))
        if agg is not None:
            inner, distinct = _aggregate_argument(node)
            return (agg, self.column(inner, tables), distinct)
        if isinstance(node, exp.Distinct):
            if len(node.expressions) != 1:
                raise _fail("unsupported DISTINCT")
            return (0, self.column(node.expressions[0], tables), True)
        return (0, self.column(node, tables), False)

    def column(self, node: exp.Expression, tables: list[str]) -> str:
        if isinstance(node, exp.Star):
            return ALL_COLUMN
        if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
            raise _fail(f"unsupported column expression: {node.sql(dialect='sqlite')[:80]}")
        if node.this.quoted:
            raise _fail(f"quoted value {node.name!r} used as a column")
        if node.args.get("db") is not None or node.args.get("catalog") is not None:
            raise _fail("unsupported column reference")
        name = node.name.lower()
        qualifier = node.table.lower()
        if qualifier:
            if qualifier not in self.aliases:
                raise _fail(f"unknown table or alias {qualifier}")
            return self.schema.column_id(self.aliases[qualifier], name)
        if not tables:
            raise _fail(f"column {name} has no table to resolve against")
        for table in tables:
            if name in self.schema.columns[table]:
                return self.schema.column_id(table, name)
        raise _fail(f"unknown column {name}")

    def condition(self, node: exp.Expression, tables: list[str]) -> list:
        result: list = []
        self._flatten_condition(node, tables, result)
        return result

    def _flatten_condition(self, node: exp.Expression, tables: list[str], out: list) -> None:
        if isinstance(node, exp.Connector) and isinstance(node, (exp.And, exp.Or)):
            self._flatten_condition(node.this, tables, out)
            out.append("and" if isinstance(node, exp.And) else "or")
            self._flatten_condition(node.expression, tables, out)
            return
        out.append(self.cond_unit(node, tables))

    def cond_unit(self, node: exp.Expression, tables: list[str]) -> tuple:
        not_op = False
        if isinstance(node, exp.Not):
            not_op, node = True, node.this
            if not isinstance(node, (exp.In, exp.Like, exp.Between)):
                raise _fail("NOT is only supported in NOT IN / NOT LIKE / NOT BETWEEN")
        if isinstance(node, exp.Paren):
            raise _fail("parenthesised conditions are not supported")
        val2 = None
        if isinstance(node, exp.Between):
            op_id = OP_BETWEEN
            val1 = self.value(node.args["low"], tables)
            val2 = self.value(node.args["high"], tables)
        elif isinstance(node, exp.In):
            op_id = OP_IN
            query = node.args.get("query")
            if query is not None:
                val1 = self.value(query, tables)
            elif len(node.expressions) == 1 and not node.args.get("unnest") and not node.args.get("field"):
                val1 = self.value(node.expressions[0], tables)
            else:
                raise _fail("IN lists are not supported")
        elif isinstance(node, exp.Like):
            op_id = OP_LIKE
            if node.args.get("escape") is not None:
                raise _fail("LIKE ... ESCAPE is not supported")
            val1 = self.value(node.expression, tables)
        elif isinstance(node, exp.Is):
            op_id = OP_IS
            val1 = self.value(node.expression, tables)
        elif type(node) in _COMPARISON_IDS:
            op_id = _COMPARISON_IDS[type(node)]
            val1 = self.value(node.expression, tables)
        else:
            raise _fail(f"unsupported condition: {node.sql(dialect='sqlite')[:80]}")
        return (not_op, op_id, self.val_unit(node.this, tables), val1, val2)

    def value(self, node: exp.Expression, tables: list[str]) -> Any:
        node = _unwrap_paren(node)
        if isinstance(node, (exp.Subquery, exp.Select, exp.SetOperation)):
            return self.query(node)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return ("str", node.this)
            try:
                return float(node.this)
            except ValueError:
                raise _fail(f"unsupported number {node.this}") from None
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
            return -float(node.this.this)
        if isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier) and node.this.quoted:
            return ("str", node.name)  # official: a double-quoted token is a string value
        if isinstance(node, exp.Column):
            # What followed a column value (b + 1, OR ...) is already gone: official_reading.
            return (0, self.column(node, tables), False)
        raise _fail(f"unsupported value: {node.sql(dialect='sqlite')[:80]}")


def _aggregate_argument(node: exp.Expression) -> tuple[exp.Expression, bool]:
    """The single argument of an aggregate, and whether it is ``DISTINCT``."""
    inner, distinct = node.this, False
    if isinstance(inner, exp.Distinct):
        if len(inner.expressions) != 1:
            raise _fail("unsupported DISTINCT aggregate")
        inner, distinct = inner.expressions[0], True
    if isinstance(node, exp.Count) and node.expressions:
        raise _fail("unsupported aggregate arguments")
    return inner, distinct


def _unwrap(node: exp.Expression) -> exp.Expression:
    while isinstance(node, (exp.Subquery, exp.Paren)) and isinstance(node.this, exp.Expression):
        if isinstance(node, exp.Subquery) and node.args.get("alias") is not None:
            break
        node = node.this
    return node


def _unwrap_paren(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def parse_spider_sql(sql: str, schema: DatabaseSchema) -> dict:
    """Parse ``sql`` into the official Spider "sql" dict against one database's schema.

    Raises SpiderParseError (a ValueError) where the official parser would reject the query.
    """
    # The official tokenizer turns "> =", "< =", "! =" into one operator (outside quoted values).
    sql = _SPACED_COMPARISON.sub(lambda m: m.group(1) or m.group(2) + "=", sql)
    tokens = _check_tokens(sql)
    # The official parses (part of) the first statement only, but takes "X AS Y" aliases from the
    # whole text.
    cut = next((i for i, t in enumerate(tokens) if t.token_type == TokenType.SEMICOLON), len(tokens))
    first = sql[: tokens[cut].start] if cut < len(tokens) else sql
    try:
        query, query_tokens, unread = official_reading(first, tokens[:cut])
        root = parse_statement(query)
    except ValueError as e:
        raise _fail(str(e)) from None
    parser = _Parser(_Schema(schema), root, query_tokens, unread + tokens[cut:])
    return parser.query(root)


# --------------------------------------------------------------------------- rebuild
