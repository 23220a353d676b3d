"""The runs a report shows, read from ``dvc exp show --json``: a :class:`Row` per run (the workspace, HEAD,
their experiments) with its params, the metrics files the pipeline wrote and the command that reruns it;
runs without eval metrics as :class:`LeftOut`, with the reason."""

from __future__ import annotations

import math
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlora.errors import SqloraError
from sqlora.report.dvc import dvc_json
from sqlora.report.flags import flatten, params_diff, set_flag

EVAL_FILE = "metrics/eval.json"
TRAIN_FILE = "metrics/train.json"
PARAMS_FILE = "params.yaml"
REPORT_FILE = "reports/benchmark.md"  # `sqlora report`'s default --out

# Where predict.model points when the run predicts with what it trained (or exported) itself.
TRAINED_DIRS = ("models/finetuned", "models/exported")
METHOD_LABELS = {"none": "base (zero-shot)", "lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tune"}
METHOD_ORDER = ("none", "lora", "qlora", "full")
TRAINED = METHOD_ORDER[1:]
# Scores of metrics/eval.json: key, title, and the factor to percent (VES is written on 0-100).
SCORES = (
    ("ex", "Execution accuracy (EX, %)", 100.0),
    ("em", "Exact-set-match (EM, %)", 100.0),
    ("ves", "Valid efficiency score (VES, BIRD)", 1.0),
)


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
            skipped_missing_database=int(finite_number(data.get("skipped_missing_database")) or 0),
            skipped_bad_gold=int(finite_number(data.get("skipped_bad_gold")) or 0),
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
            wall_time_s=finite_number(data.get("total_wall_time_s", data.get("wall_time_s"))),
            tokens_per_s=finite_number(data.get("tokens_per_s")),
            peak_memory_mb=finite_number(memory),
            peak_memory_kind=kind,
            resumed_from_step=int(finite_number(data.get("resumed_from_step")) or 0),
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
        model_dir = str(self.params.get("predict.model", TRAINED_DIRS[0]))
        if self.method == "none" and model_dir not in TRAINED_DIRS:  # `make published`: a trained folder, no training
            return f"`{self.model}` + `{model_dir}`"
        method = METHOD_LABELS.get(self.method, f"method {self.method}")
        joiner = ", " if self.method == "none" else " + "
        return f"`{self.model}`{joiner}{method}"

    def flags(self) -> list[str]:
        """The params that differ from the baseline as `dvc exp run -S` values."""
        return [set_flag(key, value) for key, value in self.changed]

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
        run = {"name": source.name, "kind": source.kind, "rev": source.rev, "baseline": source.baseline, "timestamp": source.timestamp}
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
        flags = " ".join(f"`-S {set_flag(key, value)}`" for key, value in self.changed)
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


def read_experiments(repo: str | os.PathLike = ".", *, all_commits: bool = False) -> list[dict]:
    """``dvc exp show --json`` of ``repo``: the workspace, HEAD (or every commit) and their experiments."""
    return dvc_json("exp", "show", *(["--all-commits"] if all_commits else []), repo=repo, expect=list)


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
            changed = params_diff(baseline, params) if params is not None and baseline is not None else {}
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
        changed = params_diff(baseline, params)
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
                differ = params_diff(other.params, ws.params)
                if differ:
                    note += (
                        f" (its {PARAMS_FILE} differs from that run's in {len(differ)} key{'s' * (len(differ) != 1)}; "
                        "`dvc status` tells whether the metrics are stale)"
                    )
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
            flat.update({prefix + key: value for key, value in flatten(content["data"]).items()})
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


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# ---------------------------------------------------------------------------------------------
# Formatting
