"""What the official Spider parser (test-suite-sql-eval's ``process_sql.get_sql``) reads of a query, as
SQL text: hardness and exact match parse that text, so they score what the official scores."""

from __future__ import annotations

import re

from sqlglot.tokens import TokenType as T

from sqlora.sql.parse import tokenize

# Where its parse_value stops reading a column value: "," ")" AND, clause and join keywords; OR is
# not one. Nor is ";", but it reads on to the next statement's SELECT, which stops it all the same.
_VALUE_STOPS = {
    T.COMMA,
    T.R_PAREN,
    T.AND,
    T.SEMICOLON,
    T.SELECT,
    T.FROM,
    T.WHERE,
    T.GROUP_BY,
    T.ORDER_BY,
    T.LIMIT,
    T.INTERSECT,
    T.UNION,
    T.EXCEPT,
    T.JOIN,
    T.ON,
    T.ALIAS,
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
