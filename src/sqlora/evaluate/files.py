"""The evaluator's file formats: Spider's gold file (``SQL<TAB>db_id`` per line, blank lines between
interactions) and a prediction file (one SQL per line), and the summary table it prints."""

from __future__ import annotations

from pathlib import Path

from sqlora.errors import SqloraError
from sqlora.evaluate.execution import Gold


def read_gold_file(path: str | Path) -> list[Gold]:
    """The official gold format: one ``SQL<TAB>db_id`` per line (blank lines are ignored)."""
    golds = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SqloraError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise SqloraError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        sql, tab, db_id = line.strip().rpartition("\t")
        if not tab or not sql.strip() or not db_id.strip():
            raise SqloraError(f"{path}:{lineno}: expected 'SQL<TAB>db_id'")
        golds.append(Gold(sql.strip(), db_id.strip(), f"{path}:{lineno}"))
    return golds


def read_pred_file(path: str | Path, expected: int) -> list[str]:
    """The official prediction format: one SQL per line, in gold order.

    As in the official script, anything after a tab on a line is ignored; an empty line is an
    empty prediction (scoring 0).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SqloraError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise SqloraError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.removesuffix("\n").split("\n") if text else []
    if len(lines) != expected:
        raise SqloraError(f"{path}: {len(lines)} predictions for {expected} gold queries")
    return [line.strip().split("\t")[0] for line in lines]


def format_summary(summary: dict[str, dict], metrics: list[tuple[str, str]]) -> str:
    """The familiar table of the official evaluator: a column per level, a row per metric."""
    levels = list(summary)
    rows = [f"{'':<20}" + "".join(f"{level:<20}" for level in levels)]
    rows.append(f"{'count':<20}" + "".join(f"{summary[level]['count']:<20}" for level in levels))
    for key, title in metrics:
        rows.append(f"{'=' * 20} {title} {'=' * 20}")
        rows.append(f"{key:<20}" + "".join(f"{summary[level].get(key, 0.0):<20.3f}" for level in levels))
    return "\n".join(rows)
