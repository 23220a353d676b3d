"""The CI gate: the metrics a run just wrote against the committed ones, through `dvc metrics diff`.

CI rebuilds the pipeline on a fresh clone (`dvc repro`), so the workspace holds this run's
metrics and git holds the committed baseline; EX and EM over all questions (`GUARDED`) may not
fall more than `gate.max_drop` below it. Raising the baseline is a commit of the new metrics
(`make baseline`), which reviewers see in the diff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlora.errors import SqloraError
from sqlora.report.dvc import run_dvc

METRICS_FILE = "metrics/eval.json"


@dataclass(frozen=True)
class Check:
    metric: str  # a key of metrics/eval.json, e.g. "ex.all"
    old: float  # the committed value
    new: float | None  # this run's (None: the run did not write it)
    max_drop: float

    @property
    def passed(self) -> bool:
        return self.new is not None and self.new >= self.old - self.max_drop - 1e-12

    def line(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        if self.new is None:
            return f"{verdict} {self.metric}: missing from this run's {METRICS_FILE} (committed {self.old})"
        change = self.new - self.old
        return (
            f"{verdict} {self.metric}: {self.old:.4f} -> {self.new:.4f} ({change * 100:+.1f} points; "
            f"allowed drop {self.max_drop * 100:.1f})"
        )


def metric_values(rev: str) -> tuple[dict[str, float], dict[str, float]]:
    """(committed at ``rev``, in the workspace) values of every metric in metrics/eval.json."""
    args = ("metrics", "diff", "--all", "--json", rev, "--targets", METRICS_FILE)
    old, new = {}, {}
    for metric, change in _changes(run_dvc(*args), f"`dvc {' '.join(args)}`").items():
        if isinstance(change.get("old"), (int, float)):
            old[metric] = float(change["old"])
        if isinstance(change.get("new"), (int, float)):
            new[metric] = float(change["new"])
    return old, new


def _changes(output: str, command: str) -> dict[str, dict]:
    """metrics/eval.json's ``{metric: {"old": ..., "new": ...}}`` from `dvc metrics diff --json`;
    output of another shape (another DVC version, a warning on stdout) is one error, not a traceback."""
    try:
        diff = json.loads(output or "{}")
    except json.JSONDecodeError as exc:
        raise SqloraError(f"{command}: output is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    changes = diff.get(METRICS_FILE, {}) if isinstance(diff, dict) else diff
    if not isinstance(changes, dict) or not all(isinstance(c, dict) for c in changes.values()):
        raise SqloraError(f'{command}: unexpected output, expected {{"{METRICS_FILE}": {{metric: {{"old": ..., "new": ...}}}}}}')
    return changes


GUARDED = ("ex.all", "em.all")  # BIRD has no EM: a metric the baseline lacks is not guarded


def check(max_drop: float, rev: str = "HEAD") -> list[Check]:
    old, new = metric_values(rev)
    if not any(m in old for m in GUARDED):
        raise SqloraError(f"{METRICS_FILE} at {rev} holds none of {', '.join(GUARDED)}: no baseline to compare with")
    return [Check(m, old[m], new.get(m), max_drop) for m in GUARDED if m in old]


def diff_table(rev: str) -> str:
    """`dvc metrics diff` of metrics/eval.json as DVC prints it (changed or not), for the CI log."""
    return run_dvc("metrics", "diff", "--all", "--md", rev, "--targets", METRICS_FILE)
