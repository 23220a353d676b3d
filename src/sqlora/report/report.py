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

import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sqlora.errors import SqloraError

EVAL_FILE = "metrics/eval.json"
TRAIN_FILE = "metrics/train.json"
PARAMS_FILE = "params.yaml"
REPORT_FILE = "reports/benchmark.md"  # `sqlora report`'s default --out

METHOD_LABELS = {"none": "base (zero-shot)", "lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tune"}
METHOD_ORDER = ("none", "lora", "qlora", "full")
TRAINED = METHOD_ORDER[1:]
# Levels in the order the evaluators report them; any other level follows, "all" comes last.
LEVEL_ORDER = ("easy", "medium", "hard", "extra", "simple", "moderate", "challenging")
# Scores of metrics/eval.json: key, title, and the factor to percent (VES is written on 0-100).
SCORES = (
    ("ex", "Execution accuracy (EX, %)", 100.0),
    ("em", "Exact-set-match (EM, %)", 100.0),
    ("ves", "Valid efficiency score (VES, BIRD)", 1.0),
)
MISSING = "—"


def runs_dir_of(out: str | os.PathLike) -> Path:
    """Where the report at ``out`` keeps its runs' snapshots: ``benchmark.md`` -> ``benchmark-runs/``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-runs")


RUNS_DIR = runs_dir_of(REPORT_FILE).name  # the default report's snapshots, as its links name them


# ---------------------------------------------------------------------------------------------
# The data: one row per run


@dataclass(frozen=True)
class Source:
    """Where a row comes from: a DVC experiment, a git commit, or the workspace."""

    name: str  # experiment name, branch name, "workspace", or the short sha of a commit
    kind: str  # "experiment" | "commit" | "workspace"
    rev: str  # full sha of the experiment or commit ("" for the workspace)
    baseline: str  # full sha of the commit the run starts from (a commit: itself; the workspace: HEAD)
    timestamp: str | None = None  # ISO time DVC gives (None for the workspace)
    state: str | None = None  # executor state of a queued experiment: "queued", "running", "failed"

    @property
    def short(self) -> str:
        return self.rev[:7]

    def describe(self) -> str:
        """Markdown naming the run, e.g. ```qlora-run` (`1a2b3c4`, on `5d6e7f8`)``."""
        if self.kind == "workspace":
            return f"workspace (on `{self.baseline[:7]}`, not committed)"
        if self.kind == "commit":
            return f"`{self.name}`" if self.name == self.short else f"`{self.name}` (`{self.short}`)"
        return f"`{self.name}` (`{self.short}`, on `{self.baseline[:7]}`)"

    def plain(self) -> str:
        """The run's name as plain text, for notes."""
        return "workspace" if self.kind == "workspace" else f"{self.name} ({self.short})"

    def file_stem(self) -> str | None:
        """The name of the run's snapshot file (None for the workspace: not a reproducible run)."""
        if self.kind == "workspace":
            return None
        return self.short if self.name == self.short else f"{self.name}-{self.short}"


@dataclass(frozen=True)
class EvalMetrics:
    """``metrics/eval.json`` as written: score key ("ex", "em", "ves") -> level -> value."""

    scores: dict[str, dict[str, float]]
    count: dict[str, int] = field(default_factory=dict)
    skipped_missing_database: int = 0
    skipped_bad_gold: int = 0

    @classmethod
    def from_json(cls, data: dict) -> EvalMetrics:
        scores = {key: dict(data[key]) for key, _, _ in SCORES if isinstance(data.get(key), dict)}
        count = data.get("count") if isinstance(data.get("count"), dict) else {}
        return cls(
            scores=scores,
            count=dict(count),
            skipped_missing_database=int(_number(data.get("skipped_missing_database")) or 0),
            skipped_bad_gold=int(_number(data.get("skipped_bad_gold")) or 0),
        )


@dataclass(frozen=True)
class TrainMetrics:
    """The fields of ``metrics/train.json`` the report shows; None where the file lacks them."""

    method: str | None = None
    device: str | None = None
    wall_time_s: float | None = None
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None  # MiB, as training.peak_memory_mb writes them
    peak_memory_kind: str | None = None  # "RSS" (CPU process) or "GPU" (max allocated)
    resumed_from_step: int = 0

    @classmethod
    def from_json(cls, data: dict) -> TrainMetrics:
        if data.get("peak_gpu_allocated_mb") is not None:
            memory, kind = data["peak_gpu_allocated_mb"], "GPU"
        elif data.get("peak_rss_mb") is not None:
            memory, kind = data["peak_rss_mb"], "RSS"
        else:
            memory, kind = None, None
        return cls(
            method=data.get("method"),
            device=data.get("device"),
            # Every run of the training when it was resumed (older files: the last run's only).
            wall_time_s=_number(data.get("total_wall_time_s", data.get("wall_time_s"))),
            tokens_per_s=_number(data.get("tokens_per_s")),
            peak_memory_mb=_number(memory),
            peak_memory_kind=kind,
            resumed_from_step=int(_number(data.get("resumed_from_step")) or 0),
        )


@dataclass(frozen=True)
class Row:
    """One run with eval metrics: its source, params (flat, dotted keys) and metrics."""

    source: Source
    params: dict[str, Any]
    changed: tuple[tuple[str, Any], ...]  # params differing from the baseline's: (key, value), sorted
    eval: EvalMetrics
    train: TrainMetrics | None = None
    baseline_known: bool = True  # False: the baseline's params could not be read, `changed` is empty
    # The files behind the row as DVC read them (params.yaml, the metrics), for its snapshot.
    files: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def method(self) -> str:
        return str(self.params.get("method", "?"))

    @property
    def model(self) -> str:
        return str(self.params.get("model.name", "?"))

    @property
    def dataset(self) -> str:
        return str(self.params.get("data.dataset", "?"))

    @property
    def data_source(self) -> str:
        return str(self.params.get("data.source", "?"))

    def label(self) -> str:
        method = METHOD_LABELS.get(self.method, f"method {self.method}")
        joiner = ", " if self.method == "none" else " + "
        return f"`{self.model}`{joiner}{method}"

    def flags(self) -> list[str]:
        """The params that differ from the baseline as `dvc exp run -S` values."""
        return [_set_flag(key, value) for key, value in self.changed]

    def run_cell(self, runs_dir: str) -> str:
        """The run's name, linked to its snapshot in ``runs_dir`` (relative to the report)."""
        stem = self.source.file_stem()
        return self.source.describe() if stem is None else f"[{self.source.describe()}]({runs_dir}/{stem}.json)"

    def snapshot(self) -> dict[str, Any]:
        """What the row's numbers come from: the run, how to rerun it, and its files as DVC read them."""
        source = self.source
        rerun = None
        if source.kind == "experiment" and self.baseline_known:
            rerun = f"git checkout {source.baseline[:7]} && dvc exp run -n {shlex.quote(source.name)}"
            rerun += "".join(f" -S {flag}" for flag in self.flags())
        elif source.kind == "commit":
            rerun = f"git checkout {source.short} && dvc repro"
        run = {"name": source.name, "kind": source.kind, "rev": source.rev, "baseline": source.baseline,
               "timestamp": source.timestamp}
        return {"run": run, "rerun": rerun, "files": self.files}

    def describe_params(self) -> str:
        """The params that differ from the baseline, as the flags that would set them."""
        if not self.baseline_known:
            return "(baseline params unreadable)"
        if not self.changed:
            return "baseline" if self.source.kind == "commit" else "same as baseline"
        flags = self.flags()
        if self.source.kind == "experiment":
            return " ".join(f"`-S {flag}`" for flag in flags)
        prefix = "vs HEAD: " if self.source.kind == "commit" else "uncommitted: "
        return prefix + " ".join(f"`{flag}`" for flag in flags)


@dataclass(frozen=True)
class LeftOut:
    """A run without eval metrics to show (failed, queued, running, not run yet, unreadable)."""

    source: Source
    reason: str
    changed: tuple[tuple[str, Any], ...] = ()  # its params differing from its baseline's, when readable

    def describe(self) -> str:
        flags = " ".join(f"`-S {_set_flag(key, value)}`" for key, value in self.changed)
        return f"{self.source.describe()}: {self.reason}" + (f" ({flags})" if flags and self.source.kind == "experiment" else "")


@dataclass
class Report:
    rows: list[Row]
    left_out: list[LeftOut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GitState:
    commit: str  # full sha of HEAD ("" when unknown)
    branch: str | None  # None when detached or unknown
    dirty: bool  # tracked files differ from HEAD


# ---------------------------------------------------------------------------------------------
# Reading the experiments


def dvc_command() -> list[str]:
    """How to run DVC: the one beside this interpreter, the one on PATH, or ``python -m dvc``."""
    beside = Path(sys.executable).parent / "dvc"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("dvc")
    if found:
        return [found]
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    raise SqloraError("dvc is not installed (run `make setup`, or pip install dvc)")


def read_experiments(repo: str | os.PathLike = ".", *, all_commits: bool = False) -> list[dict]:
    """``dvc exp show --json`` of ``repo``: the workspace, HEAD (or every commit) and their experiments."""
    repo = Path(repo)
    if not repo.is_dir():
        raise SqloraError(f"{repo}: no such folder")
    command = dvc_command() + ["exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR")]
        why = errors[0] if errors else (lines[-1] if lines else f"exit status {result.returncode}")
        raise SqloraError(f"dvc exp show in {repo}: {why}")
    try:
        entries = json.loads(result.stdout or "[]")
    except json.JSONDecodeError as exc:
        raise SqloraError(f"dvc exp show in {repo}: output is not JSON ({exc.msg})") from None
    if not isinstance(entries, list):
        raise SqloraError(f"dvc exp show in {repo}: expected a JSON list, got {type(entries).__name__}")
    return entries


def git_state(repo: str | os.PathLike = ".") -> GitState:
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        except OSError:
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or ""
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return GitState(commit=commit, branch=None if branch in (None, "HEAD") else branch, dirty=bool(status))


def collect(
    entries: list[dict],
    *,
    head: str | None = None,
    eval_file: str = EVAL_FILE,
    train_file: str = TRAIN_FILE,
    params_file: str = PARAMS_FILE,
) -> Report:
    """The rows of a report from ``dvc exp show --json`` output (pure: no DVC, no git).

    ``head``: the sha of HEAD, the workspace's baseline and the reference of other commits' params
    (default: the first commit listed, which is HEAD in DVC's output)."""
    if not entries:
        raise SqloraError("no experiments: the repository has no commit (commit the pipeline, then `dvc repro`)")
    runs: list[tuple[Source, dict | None, str | None, dict | None]] = []  # source, data, error, baseline params
    commits = [e for e in entries if e.get("rev") != "workspace"]
    head_entry = next((e for e in commits if e.get("rev") == head), commits[0] if commits else None)
    head = head_entry["rev"] if head_entry else ""
    head_params = _params(head_entry.get("data"), params_file) if head_entry else None
    for entry in entries:
        data, rev = entry.get("data") or {}, entry.get("rev", "")
        if rev == "workspace":
            source = Source("workspace", "workspace", "", head)
            runs.append((source, data, _error(entry), head_params))
            continue
        name = entry.get("name") or rev[:7]
        # Other commits (--all-commits) appear as the baselines of their experiments, not as history.
        if rev == head or entry.get("experiments"):
            runs.append((Source(name, "commit", rev, rev, data.get("timestamp")), data, _error(entry), head_params))
        baseline_params = _params(data, params_file)
        for experiment in entry.get("experiments") or []:
            executor = experiment.get("executor") or {}
            state = executor.get("state") if isinstance(executor, dict) else None
            for exp_rev in experiment.get("revs") or []:
                exp_data = exp_rev.get("data") or {}
                source = Source(
                    exp_rev.get("name") or experiment.get("name") or exp_rev.get("rev", "")[:7],
                    "experiment",
                    exp_rev.get("rev", ""),
                    rev,
                    exp_data.get("timestamp"),
                    state if state not in (None, "success") else None,
                )
                runs.append((source, exp_data, _error(exp_rev), baseline_params))

    report = Report(rows=[])
    for source, data, error, baseline in runs:
        reason, row = _row(source, data, error, baseline, head, eval_file, train_file, params_file)
        if row is None:
            params = _params(data, params_file)
            changed = _diff(baseline, params) if params is not None and baseline is not None else {}
            report.left_out.append(LeftOut(source, reason, tuple(sorted(changed.items()))))
        else:
            report.rows.append(row)
            if row.train and row.train.method is not None and row.train.method != row.method:
                report.notes.append(
                    f"{source.plain()}: {train_file} says method {row.train.method!r} but its params say "
                    f"{row.method!r}; the train columns may be stale"
                )
    _drop_duplicate_workspace(report)
    return report


def _row(source, data, error, baseline, head, eval_file, train_file, params_file) -> tuple[str, Row | None]:
    if source.state in ("failed", "queued", "running"):
        return f"experiment {source.state}", None
    if error:
        return f"DVC could not read it: {error}", None
    if data is None:
        return "no data", None
    params = _params(data, params_file)
    eval_data, eval_error = _metrics(data, eval_file)
    if eval_data is None:
        return f"no {eval_file}" + (f" ({eval_error})" if eval_error else ""), None
    if params is None:
        return f"no {params_file}", None
    train_data, _ = _metrics(data, train_file)
    files = {params_file: data["params"][params_file]["data"], eval_file: eval_data}
    if train_data is not None:
        files[train_file] = train_data
    if baseline is None or (source.kind == "commit" and source.rev == head):
        changed: dict[str, Any] = {}
    else:
        changed = _diff(baseline, params)
    return "", Row(
        source=source,
        params=params,
        changed=tuple(sorted(changed.items())),
        eval=EvalMetrics.from_json(eval_data),
        train=TrainMetrics.from_json(train_data) if train_data is not None else None,
        baseline_known=baseline is not None or (source.kind == "commit" and source.rev == head),
        files=files,
    )


def _drop_duplicate_workspace(report: Report) -> None:
    """The workspace's metrics files equal to those of another run are that run's results (after
    `dvc exp run` the workspace holds the last experiment's; after a commit, HEAD's): list them once,
    under that run. Its params may have changed since; then the metrics do not measure them."""
    workspace = [r for r in report.rows if r.source.kind == "workspace"]
    for ws in workspace:
        for other in report.rows:
            if other is not ws and (other.eval, other.train) == (ws.eval, ws.train):
                report.rows.remove(ws)
                note = f"workspace: its metrics are those of {other.source.plain()}; listed once, under that run"
                differ = _diff(other.params, ws.params)
                if differ:
                    note += (f" (its {PARAMS_FILE} differs from that run's in {len(differ)} key{'s' * (len(differ) != 1)}; "
                             "`dvc status` tells whether the metrics are stale)")
                report.notes.append(note)
                break


def _error(entry: dict) -> str | None:
    error = entry.get("error")
    if not error:
        return None
    if isinstance(error, dict):
        return str(error.get("msg") or error.get("type") or error)
    return str(error)


def _params(data: dict | None, params_file: str) -> dict[str, Any] | None:
    """Flat params of every params file: dotted keys; keys of files other than params.yaml get ``file:``."""
    if not data:
        return None
    files = data.get("params") or {}
    if params_file not in files or not isinstance(files[params_file].get("data"), dict):
        return None
    flat: dict[str, Any] = {}
    for name, content in sorted(files.items()):
        if isinstance(content.get("data"), dict):
            prefix = "" if name == params_file else f"{name}:"
            flat.update({prefix + key: value for key, value in _flatten(content["data"]).items()})
    return flat


def _metrics(data: dict, name: str) -> tuple[dict | None, str | None]:
    entry = (data.get("metrics") or {}).get(name)
    if entry is None:
        return None, None
    if isinstance(entry.get("data"), dict) and entry["data"]:
        return entry["data"], None
    error = entry.get("error")
    if isinstance(error, dict):
        return None, str(error.get("type") or error.get("msg"))
    return None, str(error) if error else None


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _diff(baseline: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    changed = {key: value for key, value in params.items() if key not in baseline or baseline[key] != value}
    changed.update({key: _REMOVED for key in baseline if key not in params})
    return changed


class _Removed:
    def __repr__(self) -> str:
        return "(removed)"


_REMOVED = _Removed()


def _set_flag(key: str, value: Any) -> str:
    """``key=value`` as ``dvc exp run -S`` takes it (values in YAML), quoted for a POSIX shell when needed."""
    if value is _REMOVED:
        return f"{key} (removed)"
    flag = f"{key}={_yaml_value(value)}"
    if not any(c.isspace() or c in "'\"[]{}*?$`\\;&|<>()#~!" for c in flag):
        return flag
    if "'" in flag and not any(c in flag for c in '"$`\\'):
        return f'"{flag}"'
    return "'" + flag.replace("'", "'\\''") + "'"


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, str) and _yaml_reads_back(value) != value:  # "", "16", "true", "a: b": quoted
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _yaml_reads_back(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# ---------------------------------------------------------------------------------------------
# Formatting


def percent(value: Any, factor: float = 100.0) -> str:
    """A score as percent with one decimal (``factor`` 1 for VES, already on 0-100); "—" when missing."""
    number = _number(value)
    return MISSING if number is None else f"{number * factor:.1f}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


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
        body.append([
            row.label(),
            percent(row.eval.scores.get("ex", {}).get("all")),
            percent(row.eval.scores.get("em", {}).get("all")),
            time,
            memory_gib(train),
            speed,
            (train.device if train and train.device else MISSING),
            row.run_cell(runs_dir),
            row.describe_params(),
        ])
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
            for row in group if row.eval.skipped_missing_database or row.eval.skipped_bad_gold
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
    snapshots = {f"{stem}.json": row.snapshot() for row in report.rows if (stem := row.source.file_stem())}
    # The old report's links do not count: the new one replaces them.
    pages = {out: text, **{md: None for md in markdown_files(repo) if md.resolve() != out.resolve()}}
    _replace_pair(out, text, runs_dir, snapshots, keep=linked_files(runs_dir, pages, Path(repo)))
    return report


def markdown_files(repo: str | os.PathLike) -> list[Path]:
    """The ``.md`` files of ``repo`` that git tracks or would (not ignored ones: a venv's docs are not
    pages of the project); without git, its README.md and the Markdown under docs/ and reports/."""
    repo = Path(repo)
    try:
        result = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.md"],
                                cwd=repo, capture_output=True, text=True)
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
            shutil.copytree(runs_dir, new_runs, ignore=lambda folder, names: [
                n for n in names if Path(folder) == runs_dir and n.endswith(".json") and n not in keep])
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
