"""Why a prediction was wrong, in the classes the error analysis counts: a column or a table the schema
does not have, SQL that does not parse, another execution error, or rows that differ from the gold ones."""

from __future__ import annotations

from sqlora.evaluate.execution import ExampleResult

ERROR_KINDS = ("no_such_column", "no_such_table", "does_not_parse", "other_error", "wrong_rows")


def error_kind(example: ExampleResult) -> str | None:
    """Why a scored prediction is wrong (None: it is right, or it was not executed): a name the
    database lacks (column, table), SQL SQLite cannot read, another failure (timeout, refusal,
    ambiguous column ...), or a query that ran and returned other rows."""
    if example.exec != 0:
        return None
    error = example.error or ""
    if not error:
        return "wrong_rows"
    if "no such column" in error:
        return "no_such_column"
    if "no such table" in error:
        return "no_such_table"
    if any(s in error for s in ("syntax error", "incomplete input", "unrecognized token", "empty SQL", "not a query")):
        return "does_not_parse"
    return "other_error"


def error_breakdown(examples: list[ExampleResult]) -> dict[str, int]:
    """How many scored predictions fail for each of :data:`ERROR_KINDS`."""
    counts = dict.fromkeys(ERROR_KINDS, 0)
    for example in examples:
        kind = error_kind(example)
        if kind is not None:
            counts[kind] += 1
    return counts
