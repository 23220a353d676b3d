"""SQL text to a sqlglot tree, SQLite dialect: the one parse that hardness and exact match share."""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError


def parse_statement(sql: str) -> exp.Expression:
    """The one SQLite statement of ``sql``; ValueError (one line, no SQL echoed) otherwise."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="sqlite") if s is not None]
    except (SqlglotError, RecursionError) as e:  # RecursionError: a generated query nested past sqlglot's depth
        raise ValueError(f"cannot parse SQL ({describe_error(e)})") from None
    if len(statements) != 1:
        raise ValueError(f"expected one SQL statement, got {len(statements)}")
    return statements[0]


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
