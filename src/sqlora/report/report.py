"""The benchmark report: the DVC experiments' metrics as Markdown tables (``sqlora report``).

Rows come from ``dvc exp show --json``: the workspace, the HEAD commit and its experiments (with
``all_commits``: every commit and its experiments). Each row's numbers are read from the metrics
files the pipeline wrote for that run — ``metrics/eval.json`` (EX / EM / VES by level, question
counts) and ``metrics/train.json`` (wall time, tokens/s, peak memory, device) — and its params from
``params.yaml``. Nothing is averaged, rounded before display, or filled in: a value a run's metrics
lack is shown as "—", and a run without eval metrics (failed, queued, running, or a commit before
the pipeline) is listed as left out, with the reason.

Sections: one per dataset (``data.dataset``; split by ``data.source`` when runs of one dataset use
several sources). In each: an EX table and an EM table (BIRD: EX only, by difficulty; VES when
scored), rows "model + method", columns the levels written in the metrics (Spider: easy, medium,
hard, extra, all) in percent with one decimal; then the training cost of every fine-tuned run (LoRA,
QLoRA, full): EX all, EM all, train time, peak memory, tokens/s, device. Several runs of the same model and
method are each listed (newest first), told apart by their params, never merged. Each run links to
its snapshot (``benchmark-runs/<run>.json`` beside ``benchmark.md``): its params.yaml and metrics
files as DVC read them and the command that reruns it, so every number stays traceable after the
experiment refs are gone (they live in the repository that ran them, not in a clone).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sqlora.errors import SqloraError
from sqlora.report.plots import plot_specs, write_plots
from sqlora.report.runs import EVAL_FILE, GitState, Report, collect, git_state, read_experiments, runs_dir_of
from sqlora.report.tables import render


def build_report(repo: str | os.PathLike = ".", *, all_commits: bool = False, git: GitState | None = None) -> Report:
    """The report's rows from the experiments of ``repo``; an error when no run has eval metrics."""
    git = git or git_state(repo)
    report = collect(read_experiments(repo, all_commits=all_commits), head=git.commit or None)
    if not report.rows:
        names = ", ".join(f"{item.source.plain()} ({item.reason})" for item in report.left_out[:5])
        more = f" and {len(report.left_out) - 5} more" if len(report.left_out) > 5 else ""
        raise SqloraError(f"no run with {EVAL_FILE} in {repo}: {names}{more}; run the pipeline first (dvc repro)")
    return report


def write_report(
    out: str | os.PathLike,
    repo: str | os.PathLike = ".",
    *,
    all_commits: bool = False,
    command: str = "sqlora report",
    now: datetime | None = None,
) -> Report:
    """Read the experiments of ``repo``; write the Markdown report to ``out`` and a snapshot of each
    run (:meth:`Row.snapshot`) into :func:`runs_dir_of` ``out``, both or neither.

    Snapshots are added or replaced; one is removed only when no Markdown file links to it once the
    report is written (the report itself, or any other ``.md`` of ``repo``: the README, docs, other
    reports), so a report of HEAD alone keeps the snapshots other pages still point to."""
    git = git_state(repo)
    report = build_report(repo, all_commits=all_commits, git=git)
    out, runs_dir = Path(out), runs_dir_of(out)
    text = render(report, command=command, now=now, git=git, all_commits=all_commits, runs_dir=runs_dir.name)
    text += plots_section(write_report_plots(report, repo, plots_dir_of(out)), out)
    snapshots = {f"{stem}.json": row.snapshot() for row in report.rows if (stem := row.source.file_stem())}
    # The old report's links do not count: the new one replaces them.
    pages = {out: text, **{md: None for md in markdown_files(repo) if md.resolve() != out.resolve()}}
    _replace_pair(out, text, runs_dir, snapshots, keep=linked_files(runs_dir, pages, Path(repo)))
    return report


def plots_dir_of(out: str | os.PathLike) -> Path:
    """Where the report's plots go: ``reports/benchmark.md`` -> ``reports/benchmark-plots/``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-plots")


def write_report_plots(report: Report, repo: str | os.PathLike, plots_dir: Path) -> dict[str, Path]:
    """dvc.yaml's plots across the report's runs (and the workspace), as SVG files in ``plots_dir``;
    SVGs of plots no longer drawn are removed."""
    # Experiments by name (the plots' legend shows it), commits by their short sha.
    revisions = list(
        dict.fromkeys(row.source.name if row.source.kind == "experiment" else row.source.short for row in report.rows if row.source.rev)
    )
    paths = write_plots(plot_specs(revisions, repo=repo), plots_dir)
    for old in plots_dir.glob("*.svg") if plots_dir.is_dir() else ():
        if old not in paths.values():
            old.unlink()
    return paths


def plots_section(paths: dict[str, Path], out: Path) -> str:
    """The Markdown that shows the plots, linked relative to the report."""
    if not paths:
        return ""
    lines = [
        "",
        "## Plots",
        "",
        "dvc.yaml's plots across the runs above (rendered offline by vl-convert from `dvc plots diff --json`).",
        "",
    ]
    for title, path in paths.items():
        lines += [f"### {title}", "", f"![{title}]({os.path.relpath(path, out.parent)})", ""]
    return "\n".join(lines)


def markdown_files(repo: str | os.PathLike) -> list[Path]:
    """The ``.md`` files of ``repo`` that git tracks or would (not ignored ones: a venv's docs are not
    pages of the project); without git, its README.md and the Markdown under docs/ and reports/."""
    repo = Path(repo)
    try:
        result = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.md"], cwd=repo, capture_output=True, text=True
        )
    except OSError:
        result = None
    if result is not None and result.returncode == 0:
        return sorted({repo / name for name in result.stdout.split("\0") if name and (repo / name).is_file()})
    found = [repo / "README.md"] if (repo / "README.md").is_file() else []
    return found + sorted(p for folder in ("docs", "reports") for p in (repo / folder).rglob("*.md") if p.is_file())


# Inline links and images `[text](target "title")`, and reference definitions `[id]: target`.
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)|^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)


def linked_files(folder: Path, pages: dict[Path, str | None], root: Path) -> set[str]:
    """The names of the files in ``folder`` that the Markdown ``pages`` link to (path -> text, None:
    read the file); relative links resolve from the page's folder, ``/...`` from ``root`` (as GitHub
    renders them)."""
    folder, root = folder.resolve(), root.resolve()
    names = set()
    for page, text in pages.items():
        if text is None:
            try:
                text = page.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
        for match in _LINK.finditer(text):
            target = unquote((match.group(1) or match.group(2)).split("#")[0].split("?")[0])
            if not target or ":" in target.split("/")[0]:  # an anchor, a URL, mailto:
                continue
            base = root if target.startswith("/") else page.resolve().parent
            path = Path(os.path.normpath(base / target.lstrip("/")))
            if path.parent == folder:
                names.add(path.name)
    return names


def _replace_pair(out: Path, text: str, runs_dir: Path, snapshots: dict[str, Any], keep: set[str]) -> None:
    """Put the report and its snapshot folder in place together: both are built in a temporary folder
    beside them, then renamed in; a failure before or during the renames leaves the old pair as it was.
    The new folder holds the old one's files but the snapshots (``*.json``) outside ``keep``, then
    ``snapshots`` (added or replaced)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    new_runs, new_out, old_runs = work / "new-runs", work / "new-report", work / "old-runs"
    try:
        if runs_dir.is_dir():
            shutil.copytree(
                runs_dir,
                new_runs,
                ignore=lambda folder, names: [n for n in names if Path(folder) == runs_dir and n.endswith(".json") and n not in keep],
            )
        else:
            new_runs.mkdir()
        for name, snapshot in snapshots.items():
            (new_runs / name).write_text(json.dumps(snapshot, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        new_out.write_text(text, encoding="utf-8")
        if runs_dir.exists():
            os.rename(runs_dir, old_runs)
        try:
            os.rename(new_runs, runs_dir)
            os.replace(new_out, out)
        except BaseException:
            if not new_runs.exists() and runs_dir.exists():  # ours is in place: take it back out
                os.rename(runs_dir, new_runs)
            if old_runs.exists():
                os.rename(old_runs, runs_dir)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
