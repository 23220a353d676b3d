"""The report's Markdown: per dataset, an EX and an EM table by level (BIRD: EX and VES) and the training
cost of every fine-tuned run, rows linked to their snapshots."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlora.report.runs import (
    EVAL_FILE,
    METHOD_ORDER,
    PARAMS_FILE,
    RUNS_DIR,
    SCORES,
    TRAIN_FILE,
    TRAINED,
    GitState,
    Report,
    Row,
    TrainMetrics,
    finite_number,
)

# Levels in the order the evaluators report them; any other level follows, "all" comes last.
LEVEL_ORDER = ("easy", "medium", "hard", "extra", "simple", "moderate", "challenging")
MISSING = "—"


def percent(value: Any, factor: float = 100.0) -> str:
    """A score as percent with one decimal (``factor`` 1 for VES, already on 0-100); "—" when missing."""
    number = finite_number(value)
    return MISSING if number is None else f"{number * factor:.1f}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A GitHub Markdown table (tabulate), cells as written: pipes escaped, no number reformatting."""
    from tabulate import tabulate

    body = [[cell(c) for c in row] for row in rows]
    return tabulate(body, headers=[cell(h) for h in header], tablefmt="github", disable_numparse=True).splitlines()


def levels_of(rows: list[Row], score: str) -> list[str]:
    """The levels the rows' metrics hold for ``score``, in the evaluators' order, "all" last."""
    seen: list[str] = []
    for row in rows:
        for level in row.eval.scores.get(score, {}):
            if level not in seen:
                seen.append(level)
    known = [level for level in LEVEL_ORDER if level in seen]
    others = [level for level in seen if level not in LEVEL_ORDER and level != "all"]
    return known + others + (["all"] if "all" in seen else [])


def order_rows(rows: list[Row]) -> list[Row]:
    """By model (first seen), then method (base, LoRA, QLoRA, full, other), then newest first."""
    models: list[str] = []
    for row in rows:
        if row.model not in models:
            models.append(row.model)

    def key(row: Row) -> tuple:
        method = METHOD_ORDER.index(row.method) if row.method in METHOD_ORDER else len(METHOD_ORDER)
        # newest first: the workspace, then experiments and commits by their time
        stamp = "9999" if row.source.kind == "workspace" else (row.source.timestamp or "")
        return (models.index(row.model), method, row.method, _Desc(stamp), row.source.name)

    return sorted(rows, key=key)


class _Desc:
    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.value == other.value


def score_table(rows: list[Row], score: str, factor: float = 100.0, runs_dir: str = RUNS_DIR) -> list[str]:
    """One table of ``score`` by level: a row per run, the question counts in the header when shared."""
    levels = levels_of(rows, score)
    counts = {tuple(row.eval.count.get(level) for level in levels) for row in rows}
    shared = next(iter(counts)) if len(counts) == 1 else None
    header = ["model + method"]
    for i, level in enumerate(levels):
        header.append(f"{level} ({shared[i]})" if shared and shared[i] is not None else level)
    if shared is None:
        header.append("questions (" + "/".join(levels) + ")")
    header += ["run", "params"]
    body = []
    for row in rows:
        values = row.eval.scores.get(score, {})
        cells = [row.label()]
        for level in levels:
            text = percent(values.get(level), factor)
            cells.append(f"**{text}**" if level == "all" and text != MISSING else text)
        if shared is None:
            cells.append("/".join(str(row.eval.count.get(level, MISSING)) for level in levels))
        cells += [row.run_cell(runs_dir), row.describe_params()]
        body.append(cells)
    return markdown_table(header, body)


def memory_gib(train: TrainMetrics | None) -> str:
    if train is None or train.peak_memory_mb is None:
        return MISSING
    return f"{train.peak_memory_mb / 1024:.1f} ({train.peak_memory_kind})"


def training_table(rows: list[Row], runs_dir: str = RUNS_DIR) -> list[str]:
    """What each fine-tuning run (LoRA, QLoRA, full) cost against what it scored: EX all, EM all,
    train time, peak memory, tokens/s, device. Base (zero-shot) rows train nothing and are left out."""
    if not any(row.method in TRAINED for row in rows):
        return []
    header = ["model + method", "EX all", "EM all", "train time (s)", "peak memory (GiB)", "tokens/s", "device", "run", "params"]
    body = []
    for row in rows:
        if row.method not in TRAINED:
            continue
        train = row.train
        time = MISSING if train is None or train.wall_time_s is None else f"{train.wall_time_s:.1f}"
        if train is not None and train.resumed_from_step and time != MISSING:
            time += f" (resumed at step {train.resumed_from_step})"
        speed = MISSING if train is None or train.tokens_per_s is None else f"{train.tokens_per_s:.1f}"
        body.append(
            [
                row.label(),
                percent(row.eval.scores.get("ex", {}).get("all")),
                percent(row.eval.scores.get("em", {}).get("all")),
                time,
                memory_gib(train),
                speed,
                (train.device if train and train.device else MISSING),
                row.run_cell(runs_dir),
                row.describe_params(),
            ]
        )
    return markdown_table(header, body)


def sections(rows: list[Row]) -> list[tuple[str, str, list[Row]]]:
    """(dataset, source, rows) in order of first appearance; one per dataset and data.source."""
    keys: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        keys.setdefault((row.dataset, row.data_source), []).append(row)
    return [(dataset, source, order_rows(group)) for (dataset, source), group in keys.items()]


def render(
    report: Report,
    *,
    command: str = "sqlora report",
    now: datetime | None = None,
    git: GitState | None = None,
    all_commits: bool = False,
    eval_file: str = EVAL_FILE,
    train_file: str = TRAIN_FILE,
    runs_dir: str = RUNS_DIR,
) -> str:
    """The Markdown report; each run links to its snapshot in ``runs_dir`` (relative to the report)."""
    now = now or datetime.now(timezone.utc)
    lines = ["# Benchmark report", ""]
    made = f"Made by `{command}` on {now.strftime('%Y-%m-%d %H:%M %Z').strip()}"
    if git and git.commit:
        made += f" in the repository at commit `{git.commit[:7]}`"
        made += f" (branch `{git.branch}`)" if git.branch else " (detached HEAD)"
        if git.dirty:
            made += ", with uncommitted changes"
    scope = "every commit and its DVC experiments" if all_commits else "the HEAD commit, its DVC experiments and the workspace"
    lines += [
        made + f". Runs: {scope}, as `dvc exp show --json` lists them.",
        "Each row names its run — the experiment (its commit, on the baseline commit it started from) or the "
        "commit — and the params that differ from its baseline (experiments: as `dvc exp run -S` flags). "
        "Several runs of the same model and method are each listed, newest first, never averaged.",
        "",
    ]
    by_dataset: dict[str, set[str]] = {}
    for row in report.rows:
        by_dataset.setdefault(row.dataset, set()).add(row.data_source)
    for dataset, data_source, group in sections(report.rows):
        title = f"## Dataset `{dataset}`"
        if len(by_dataset[dataset]) > 1:
            title += f" — `{data_source}`"
        lines += [title, "", f"`data.source`: `{data_source}`; {len(group)} run{'s' * (len(group) != 1)}.", ""]
        for score, heading, factor in SCORES:
            scored = [row for row in group if score in row.eval.scores]
            if not scored:
                if score == "em":
                    why = " (BIRD publishes EX only)" if dataset == "bird" else ""
                    lines += [f"No EM in the {eval_file} of these runs{why}.", ""]
                continue
            lines += [f"### {heading}", ""] + score_table(group, score, factor, runs_dir) + [""]
        training = training_table(group, runs_dir)
        lines += ["### Training cost", ""]
        if training:
            lines += training + [
                "",
                f"Train time, tokens/s, peak memory and device from {train_file}: train time counts every "
                "run of a resumed training (total_wall_time_s), tokens/s and peak memory are its last run's; "
                "peak memory is the training process's peak resident set (RSS) on CPU, max allocated GPU "
                "memory on GPU.",
                "",
            ]
        else:
            lines += ["No fine-tuned run on this dataset (base models only).", ""]
        skipped = [
            f"{row.source.plain()}: {row.eval.skipped_missing_database} questions skipped (database missing), "
            f"{row.eval.skipped_bad_gold} (gold query fails)"
            for row in group
            if row.eval.skipped_missing_database or row.eval.skipped_bad_gold
        ]
        if skipped:
            lines += ["Not scored (in no column above):", ""] + [f"- {s}" for s in skipped] + [""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    if report.left_out:
        lines += ["## Left out", ""]
        lines += [f"- {item.describe()}" for item in report.left_out] + [""]
    lines += [
        "---",
        "",
        f"Every number above is read from the metrics files the pipeline wrote for each run ({eval_file}, "
        f"{train_file}), as `dvc exp show` reports them; “{MISSING}” marks a value a run's metrics do not have. "
        f"Each run links to its snapshot in `{runs_dir}/`: those files and its {PARAMS_FILE} as DVC read them, "
        "and the command that reruns it.",
        "",
    ]
    return "\n".join(lines)
