"""Where the SQL in a generation starts and ends: the statement extracted from what a model wrote,
whether more text could still change it (so a row may stop), and whether it is one query."""

from __future__ import annotations

import re

import torch
from transformers import StoppingCriteria

STATUSES = ("ok", "empty", "unparseable")

# A statement ends at ";", at a "###" section the model starts on its own, at chat residue ("<|")…
_HARD_END = re.compile(r";|###|<\|")
# …and at a blank line or a code fence, except in prose before a fenced block ("Here it is:\n\n```sql").
_BLANK_LINE = re.compile(r"\n\s*\n")
_FENCE = "```"
_FENCE_LANGUAGE = re.compile(r"(?:sqlite|sql)?", re.I)
_SQL_START = re.compile(r"\(*\s*(?:select|with|values|insert|update|delete|create|drop|alter|pragma|explain|replace)(?=\W)", re.I)
# In a SELECT statement, a line opening another SELECT outside parentheses, not after UNION/INTERSECT/
# EXCEPT [ALL]: the model starts a second statement without ending the first. (?=\W), not \b: at the
# end of the text "SELECT" may still grow into "SELECTED".
_NEW_STATEMENT = re.compile(r"\n\s*select(?=\W)", re.I)
_STARTS_SELECT = re.compile(r"\s*\(*\s*select\b", re.I)
_CONTINUES = re.compile(r"(?:\b(?:union|intersect|except|all|as)|\()\s*$", re.I)


def _first(text: str, in_sql: bool) -> int | None:
    """Where the statement at the start of ``text`` ends, if it does yet."""
    ends = [m.start() for m in (_HARD_END.search(text), _BLANK_LINE.search(text)) if m]
    if in_sql:
        if _FENCE in text:
            ends.append(text.index(_FENCE))
        for m in _NEW_STATEMENT.finditer(text) if _STARTS_SELECT.match(text) else ():
            before = text[: m.start()]
            if before.count("(") <= before.count(")") and not _CONTINUES.search(before):
                ends.append(m.start())
                break
    return min(ends) if ends else None


def _statement(text: str) -> tuple[str, bool]:
    """The first SQL statement of a generation, and whether it is final: no continuation can change it.

    The rules read the text left to right, so once final the answer stays the same however the
    generation goes on; that is what lets :class:`SqlEnd` stop a row there without changing its SQL:
    - text opening with SQL: the statement runs to the first ";", blank line, "###", "<|", fence, or
      line opening another SELECT outside parentheses;
    - prose followed by a fenced block (no ";", "###", "<|" before it): the block's content, to its
      closing fence or one of those ends;
    - other prose: the text up to those ends (final once a ";", "###" or "<|" rules out a block).
    """
    text = text.lstrip()
    fence = text.find(_FENCE)
    head = text if fence < 0 else text[:fence]
    start = _SQL_START.match(text)
    if start and (fence < 0 or start.end() <= fence):
        end = _first(text, in_sql=True)
        body = text if end is None else text[:end]
        return " ".join(body.split()), end is not None
    if fence >= 0 and not _HARD_END.search(head):
        body = text[fence + len(_FENCE) :]
        body = body[_FENCE_LANGUAGE.match(body).end() :].lstrip()
        end = _first(body, in_sql=True)
        return " ".join((body if end is None else body[:end]).split()), end is not None
    end = _first(head, in_sql=False)
    return " ".join((head if end is None else head[:end]).split()), _HARD_END.search(head) is not None


def extract_sql(text: str) -> str:
    """The first SQL statement of a generation, on one line: code fences, chat residue and trailing text removed."""
    return _statement(text)[0]


def settled_sql(text: str) -> str:
    """The start of ``extract_sql(text + more)`` whatever ``more`` is: what a stream may send before the
    generation ends. Only text that opens with SQL (prose may still lead to a fenced block), and without its
    last word, which may yet grow into an end ("#" into "###", "SELECT" on a new line into a second statement)."""
    text = text.lstrip()
    if not _SQL_START.match(text):
        return ""
    cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
    return extract_sql(text[: cut + 1]) if cut >= 0 else ""


def sql_complete(text: str) -> bool:
    """True once more generated text cannot change ``extract_sql(text)``: the row may stop."""
    return _statement(text)[1]


def sql_status(sql: str) -> str:
    """ok: one SQL query sqlglot parses; empty: nothing came out; unparseable: anything else."""
    if not sql:
        return "empty"
    from sqlglot import exp

    from sqlora.sql.parse import parse_statement

    try:
        return "ok" if isinstance(parse_statement(sql), (exp.Query, exp.Values)) else "unparseable"
    except ValueError:
        return "unparseable"


class SqlEnd(StoppingCriteria):
    """Per row: done once the text generated after the prompt holds a complete statement."""

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor([sql_complete(t) for t in texts], dtype=torch.bool, device=input_ids.device)
