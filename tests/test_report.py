"""`sqlora report`: the benchmark tables from a real git + DVC project's experiments, the formatting
from dataclasses, and the one-line errors. The project's one stage writes metrics from its params
(no model): every number the report shows is known here in advance."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from sqlora.errors import SqloraError
from sqlora.report import report as rp
from sqlora.report import runs, tables
from tests.helpers import SQLORA, fail_writes_halfway

# Writes metrics/eval.json and metrics/train.json as the real evaluate and train stages shape them.
STAGE = textwrap.dedent(
    """
    import json, os, yaml
    p = yaml.safe_load(open("params.yaml"))
    method, model, dataset, r = p["method"], p["model"]["name"], p["data"]["dataset"], p["lora"]["r"]
    if method == "full":
        raise SystemExit("full: not in this pipeline")
    base = {"none": 0.0, "lora": 0.4, "qlora": 0.3}[method] + (0.125 if model == "gemma3-270m" else 0) + r / 1000
    if dataset == "bird":
        levels, counts = ["simple", "moderate", "challenging", "all"], [10, 6, 4, 20]
    else:
        levels, counts = ["easy", "medium", "hard", "extra", "all"], [6, 8, 4, 2, 20]
    ev = {"ex": {l: round(base + 0.01 * i, 4) for i, l in enumerate(levels)}}
    if dataset != "bird":
        ev["em"] = {l: round(base - 0.002 * i, 4) for i, l in enumerate(levels)}
    ev |= {"count": dict(zip(levels, counts)), "skipped_missing_database": 0, "skipped_bad_gold": 0}
    if method == "none":
        tr = {"method": "none", "device": "cpu", "train_examples": 0, "steps": 0}
    elif method == "qlora":
        tr = {"method": method, "device": "cuda", "wall_time_s": 200.0 + r, "tokens_per_s": 400.0,
              "peak_gpu_allocated_mb": 1536.0, "peak_gpu_reserved_mb": 2000.0}
    else:
        tr = {"method": method, "device": "cpu", "wall_time_s": 300.0 + r, "tokens_per_s": 250.5}
        if r != 8:  # as if the platform could not tell the peak memory: the report shows "—"
            tr["peak_rss_mb"] = 2048.0
    os.makedirs("metrics", exist_ok=True)
    json.dump(ev, open("metrics/eval.json", "w"))
    json.dump(tr, open("metrics/train.json", "w"))
    """
)

DVC_YAML = """\
stages:
  fake:
    cmd: python stage.py
    deps: [stage.py]
    params: [method, model.name, data, lora]
    metrics:
      - metrics/eval.json: {cache: false}
      - metrics/train.json: {cache: false}
"""

PARAMS = {
    "seed": 42,
    "method": "lora",
    "data": {"dataset": "sample", "source": "data/sample"},
    "model": {"name": "smollm2-135m-instruct"},
    "lora": {"r": 16, "target_modules": "all-linear"},
}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def init_repo(root: Path) -> None:
    run(["git", "init", "-q"], root)
    run(["git", "symbolic-ref", "HEAD", "refs/heads/main"], root)
    run(["git", "config", "user.name", "t"], root)
    run(["git", "config", "user.email", "t@t"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """A git + DVC project: a commit without metrics, the baseline (LoRA) and six experiments."""
    root = tmp_path_factory.mktemp("report-project")
    init_repo(root)
    (root / "stage.py").write_text(STAGE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "pipeline, not run yet"], root)
    run(["dvc", "repro", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "baseline metrics"], root)
    for name, flags in [
        ("qlora-run", ["method=qlora"]),
        ("zero-shot", ["method=none"]),
        ("gemma-lora", ["model.name=gemma3-270m"]),
        ("lora-r8", ["lora.r=8"]),
    ]:
        run(["dvc", "exp", "run", "-q", "-n", name] + [a for f in flags for a in ("-S", f)], root)
        run(["git", "checkout", "-q", "--", "."], root)  # back to the baseline: -S applies to the workspace
    run(["dvc", "exp", "run", "-q", "--queue", "-n", "broken", "-S", "method=full"], root)
    run(["dvc", "exp", "run", "--run-all"], root, check=False)  # fails: a failed experiment, left out
    run(["dvc", "queue", "stop"], root)  # the queue's worker would linger a while otherwise
    # The last one stays in the workspace, as after any `dvc exp run`: the report lists it once.
    run(
        ["dvc", "exp", "run", "-q", "-n", "bird-qlora", "-S", "data.dataset=bird", "-S", "data.source=data/bird", "-S", "method=qlora"],
        root,
    )
    refs = run(["git", "for-each-ref", "--format=%(refname:lstrip=-1) %(objectname)", "refs/exps"], root).stdout
    shas = {name: sha[:7] for name, sha in (line.split() for line in refs.splitlines())}
    log = run(["git", "log", "--format=%H"], root).stdout.split()
    return {"root": root, "exp": shas, "head": log[0][:7], "first": log[1][:7]}


def section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def squeeze(line: str) -> str:
    """A Markdown table line without tabulate's column padding: ``|  a   | b |`` -> ``| a | b |``."""
    if line.startswith("|-") and set(line) <= set("|-: "):
        return "|" + "---|" * (line.count("|") - 1)
    return re.sub(r"\s*(?<!\\)\|\s*", " | ", line).strip()


def table_rows(text: str, heading: str) -> list[str]:
    lines = [squeeze(line) for line in text[text.index(heading) :].splitlines()[2:]]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


@pytest.mark.slow
def test_report_from_real_experiments(project):
    root, exp, head = project["root"], project["exp"], project["head"]
    result = run(SQLORA + ["report"], root)
    assert result.stdout.strip() == "report: 6 runs, 1 left out -> reports/benchmark.md, reports/benchmark-runs/"
    text = (root / "reports/benchmark.md").read_text()

    def at(name: str) -> str:
        return f"[`{name}` (`{exp[name]}`, on `{head}`)](benchmark-runs/{name}-{exp[name]}.json)"

    assert text.startswith("# Benchmark report\n\nMade by `sqlora report` on ")
    # The workspace holds the bird experiment's params and results (uncommitted), listed once.
    assert f"in the repository at commit `{head}` (branch `main`), with uncommitted changes." in text
    sample = section(text, "## Dataset `sample`")
    assert table_rows(sample, "### Execution accuracy (EX, %)") == [
        "| model + method | easy (6) | medium (8) | hard (4) | extra (2) | all (20) | run | params |",
        "|---|---|---|---|---|---|---|---|",
        f"| `smollm2-135m-instruct`, base (zero-shot) | 1.6 | 2.6 | 3.6 | 4.6 | **5.6** | {at('zero-shot')} | `-S method=none` |",
        f"| `smollm2-135m-instruct` + LoRA | 40.8 | 41.8 | 42.8 | 43.8 | **44.8** | {at('lora-r8')} | `-S lora.r=8` |",
        f"| `smollm2-135m-instruct` + LoRA | 41.6 | 42.6 | 43.6 | 44.6 | **45.6** | [`main` (`{head}`)](benchmark-runs/main-{head}.json) | baseline |",
        f"| `smollm2-135m-instruct` + QLoRA | 31.6 | 32.6 | 33.6 | 34.6 | **35.6** | {at('qlora-run')} | `-S method=qlora` |",
        f"| `gemma3-270m` + LoRA | 54.1 | 55.1 | 56.1 | 57.1 | **58.1** | {at('gemma-lora')} | `-S model.name=gemma3-270m` |",
    ]
    assert table_rows(sample, "### Exact-set-match (EM, %)")[2:] == [
        f"| `smollm2-135m-instruct`, base (zero-shot) | 1.6 | 1.4 | 1.2 | 1.0 | **0.8** | {at('zero-shot')} | `-S method=none` |",
        f"| `smollm2-135m-instruct` + LoRA | 40.8 | 40.6 | 40.4 | 40.2 | **40.0** | {at('lora-r8')} | `-S lora.r=8` |",
        f"| `smollm2-135m-instruct` + LoRA | 41.6 | 41.4 | 41.2 | 41.0 | **40.8** | [`main` (`{head}`)](benchmark-runs/main-{head}.json) | baseline |",
        f"| `smollm2-135m-instruct` + QLoRA | 31.6 | 31.4 | 31.2 | 31.0 | **30.8** | {at('qlora-run')} | `-S method=qlora` |",
        f"| `gemma3-270m` + LoRA | 54.1 | 53.9 | 53.7 | 53.5 | **53.3** | {at('gemma-lora')} | `-S model.name=gemma3-270m` |",
    ]
    # every fine-tuned run, the base (zero-shot) one left out; both LoRA runs listed, none merged.
    assert table_rows(sample, "### Training cost") == [
        "| model + method | EX all | EM all | train time (s) | peak memory (GiB) | tokens/s | device | run | params |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| `smollm2-135m-instruct` + LoRA | 44.8 | 40.0 | 308.0 | — | 250.5 | cpu | {at('lora-r8')} | `-S lora.r=8` |",
        f"| `smollm2-135m-instruct` + LoRA | 45.6 | 40.8 | 316.0 | 2.0 (RSS) | 250.5 | cpu | [`main` (`{head}`)](benchmark-runs/main-{head}.json) | baseline |",
        f"| `smollm2-135m-instruct` + QLoRA | 35.6 | 30.8 | 216.0 | 1.5 (GPU) | 400.0 | cuda | {at('qlora-run')} | `-S method=qlora` |",
        f"| `gemma3-270m` + LoRA | 58.1 | 53.3 | 316.0 | 2.0 (RSS) | 250.5 | cpu | {at('gemma-lora')} | `-S model.name=gemma3-270m` |",
    ]

    bird = section(text, "## Dataset `bird`")
    assert "`data.source`: `data/bird`; 1 run." in bird
    assert table_rows(bird, "### Execution accuracy (EX, %)") == [
        "| model + method | simple (10) | moderate (6) | challenging (4) | all (20) | run | params |",
        "|---|---|---|---|---|---|---|",
        f"| `smollm2-135m-instruct` + QLoRA | 31.6 | 32.6 | 33.6 | **34.6** | {at('bird-qlora')} | "
        "`-S data.dataset=bird` `-S data.source=data/bird` `-S method=qlora` |",
    ]
    assert "### Exact-set-match" not in bird and "No EM in the metrics/eval.json of these runs (BIRD publishes EX only)." in bird
    assert "No fine-tuned run on this dataset" not in bird

    assert f"- workspace: its metrics are those of bird-qlora ({exp['bird-qlora']}); listed once, under that run" in text
    left_out = [line for line in section(text, "## Left out").splitlines() if line.startswith("- ")]
    assert len(left_out) == 1 and left_out[0].startswith("- `broken` (`")
    assert left_out[0].endswith(f", on `{head}`): experiment failed (`-S method=full`)")
    assert text.rstrip().endswith("and the command that reruns it.")

    # Each linked run has its snapshot: the numbers' files as DVC read them, and how to rerun it.
    runs = root / "reports/benchmark-runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted(
        [f"{name}-{exp[name]}.json" for name in ("qlora-run", "zero-shot", "gemma-lora", "lora-r8", "bird-qlora")] + [f"main-{head}.json"]
    )
    qlora = json.loads((runs / f"qlora-run-{exp['qlora-run']}.json").read_text())
    assert qlora["run"]["name"] == "qlora-run" and qlora["run"]["rev"].startswith(exp["qlora-run"])
    assert qlora["rerun"] == f"git checkout {head} && dvc exp run -n qlora-run -S method=qlora"
    assert qlora["files"]["params.yaml"]["method"] == "qlora"
    assert qlora["files"]["metrics/eval.json"]["ex"]["all"] == 0.356  # the 35.6 of the EX table
    assert qlora["files"]["metrics/train.json"]["device"] == "cuda"
    baseline = json.loads((runs / f"main-{head}.json").read_text())
    assert baseline["rerun"] == f"git checkout {head} && dvc repro"


@pytest.mark.slow
def test_all_commits_lists_experiments_not_bare_history(project, tmp_path):
    """--all-commits adds other commits' experiments (with their baseline commits); a commit without
    experiments (here the first, which has no metrics) is history, not a run of the report."""
    root, first = project["root"], project["first"]
    out = tmp_path / "all.md"
    result = run(SQLORA + ["report", "--all-commits", "--out", str(out)], root)
    assert result.stdout.strip() == f"report: 6 runs, 1 left out -> {out}, {tmp_path / 'all-runs'}/"
    text = out.read_text()
    assert f"Made by `sqlora report --out {out} --all-commits` on " in text
    assert "Runs: every commit and its DVC experiments" in text
    assert f"`{first}`" not in text


@pytest.mark.slow
def test_report_is_written_atomically(project, tmp_path, monkeypatch):
    """A write that fails half-way leaves the old report as it was and no temporary file beside it."""
    out = tmp_path / "benchmark.md"
    out.write_text("old report\n")
    fail_writes_halfway(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        rp.write_report(out, project["root"])
    monkeypatch.undo()
    # Nor any snapshot folder: the report and its runs are written together or not at all.
    assert out.read_text() == "old report\n" and [p.name for p in tmp_path.iterdir()] == ["benchmark.md"]


def snapshot_repo(tmp_path, monkeypatch) -> Path:
    """A git repository whose report and snapshots were written before, and pages linking to some of
    them; its `dvc exp show` (stubbed) lists one run, main (aaaaaaa)."""
    root = tmp_path / "repo"
    runs = root / "reports/benchmark-runs"
    runs.mkdir(parents=True)
    run(["git", "init", "-q"], root)
    for name in ("main-aaaaaaa", "readme-1111111", "docs-2222222", "old-3333333", "ignored-4444444", "url-5555555"):
        (runs / f"{name}.json").write_text(f'{{"old": "{name}"}}\n')
    (runs / "notes.txt").write_text("not a snapshot\n")
    (root / "README.md").write_text("See [the run](reports/benchmark-runs/readme-1111111.json#files).\n")
    (root / "docs").mkdir()
    (root / "docs/page.md").write_text(
        "A [run][r], [elsewhere](https://x.org/reports/benchmark-runs/url-5555555.json).\n\n"
        "[r]: ../reports/benchmark-runs/docs-2222222.json\n"
    )
    (root / ".gitignore").write_text("build/\n")
    (root / "build").mkdir()
    (root / "build/copy.md").write_text("[x](../reports/benchmark-runs/ignored-4444444.json)\n")
    # The old report links to a run the new one no longer lists.
    (root / "reports/benchmark.md").write_text("old report: [old](benchmark-runs/old-3333333.json)\n")
    params = {"method": "lora", "model": {"name": "m"}, "data": {"dataset": "sample", "source": "data/sample"}}
    entries = [entry("a" * 40, "main", params, {"ex": {"all": 0.5}, "count": {"all": 2}})]
    monkeypatch.setattr(rp, "read_experiments", lambda repo, all_commits=False: entries)
    return root


def test_report_keeps_the_snapshots_a_page_links_to(tmp_path, monkeypatch):
    """Snapshots are added or replaced; one goes only when no Markdown page of the repository links
    to it once the new report is in place (the old report's links are replaced by the new one's)."""
    root = snapshot_repo(tmp_path, monkeypatch)
    runs = root / "reports/benchmark-runs"
    rp.write_report(root / "reports/benchmark.md", root)
    assert sorted(p.name for p in runs.iterdir()) == ["docs-2222222.json", "main-aaaaaaa.json", "notes.txt", "readme-1111111.json"]
    assert json.loads((runs / "main-aaaaaaa.json").read_text())["run"]["rev"] == "a" * 40  # replaced
    assert (runs / "readme-1111111.json").read_text() == '{"old": "readme-1111111"}\n'  # kept as it was
    assert "(benchmark-runs/main-aaaaaaa.json)" in (root / "reports/benchmark.md").read_text()
    assert sorted(p.name for p in (root / "reports").iterdir()) == ["benchmark-runs", "benchmark.md"]


@pytest.mark.parametrize("failing", ["new-runs", "new-report"])
def test_a_failed_rename_leaves_the_old_report_and_snapshots(tmp_path, monkeypatch, failing):
    """The snapshot folder is renamed in first, then the report: when either rename fails, the old
    folder goes back and the old report stays, with nothing left beside them."""
    root = snapshot_repo(tmp_path, monkeypatch)
    reports = root / "reports"

    def tree() -> dict[str, str]:
        return {str(p.relative_to(reports)): p.read_text() for p in sorted(reports.rglob("*")) if p.is_file()}

    before = tree()
    rename, replace = os.rename, os.replace

    def fail_on(real):
        def move(src, dst):
            if Path(src).name == failing:
                raise OSError("rename failed")
            return real(src, dst)

        return move

    monkeypatch.setattr(os, "rename", fail_on(rename))
    monkeypatch.setattr(os, "replace", fail_on(replace))
    with pytest.raises(OSError, match="rename failed"):
        rp.write_report(reports / "benchmark.md", root)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    assert tree() == before
    assert sorted(p.name for p in reports.iterdir()) == ["benchmark-runs", "benchmark.md"]


# ---------------------------------------------------------------------------------------------
# Formatting from dataclasses

HEAD = "a" * 40


def make_row(
    name="run",
    kind="experiment",
    method="lora",
    model="m",
    dataset="spider",
    source="data/spider",
    ex=None,
    em=None,
    count=None,
    train=None,
    changed=(),
    timestamp="2026-01-01T00:00:00",
    **eval_extra,
) -> runs.Row:
    scores = {}
    if ex is not None:
        scores["ex"] = ex
    if em is not None:
        scores["em"] = em
    params = {"method": method, "model.name": model, "data.dataset": dataset, "data.source": source}
    rev = "" if kind == "workspace" else hashlib.sha1(name.encode()).hexdigest()
    return runs.Row(
        source=runs.Source(name, kind, rev if kind != "commit" else HEAD, HEAD, timestamp),
        params=params,
        changed=tuple(changed),
        eval=runs.EvalMetrics(scores=scores, count=count or {}, **eval_extra),
        train=train,
    )


def test_percent_and_missing_values():
    assert tables.percent(0.4099) == "41.0" and tables.percent(0.72727) == "72.7" and tables.percent(1) == "100.0"
    assert tables.percent(None) == tables.percent("0.5") == tables.percent(float("nan")) == tables.percent(True) == "—"
    assert tables.percent(41.234, factor=1) == "41.2"  # VES: already on 0-100


def test_score_table_counts_missing_levels_and_sources():
    counts = {"easy": 2, "medium": 3, "hard": 1, "extra": 1, "all": 7}
    a = make_row(
        "lora-a",
        ex={"easy": 0.5, "medium": 1 / 3, "hard": 0.0, "extra": 1.0, "all": 3 / 7},
        count=counts,
        changed=[("train.learning_rate", 0.0005)],
    )
    b = make_row("base", method="none", ex={"easy": 0.0, "all": 0.0}, count=counts, changed=[("method", "none")])
    c = make_row("main", kind="commit", ex={"easy": 1.0, "medium": 1.0, "hard": 1.0, "extra": 1.0, "all": 1.0}, count=counts)
    lines = [squeeze(line) for line in tables.score_table(tables.order_rows([a, b, c]), "ex")]
    short = a.source.rev[:7]
    assert lines == [
        "| model + method | easy (2) | medium (3) | hard (1) | extra (1) | all (7) | run | params |",
        "|---|---|---|---|---|---|---|---|",
        "| `m`, base (zero-shot) | 0.0 | — | — | — | **0.0** | "
        f"[`base` (`{b.source.rev[:7]}`, on `aaaaaaa`)](benchmark-runs/base-{b.source.rev[:7]}.json) | `-S method=none` |",
        f"| `m` + LoRA | 50.0 | 33.3 | 0.0 | 100.0 | **42.9** | [`lora-a` (`{short}`, on `aaaaaaa`)](benchmark-runs/lora-a-{short}.json) "
        "| `-S train.learning_rate=0.0005` |",
        "| `m` + LoRA | 100.0 | 100.0 | 100.0 | 100.0 | **100.0** | [`main` (`aaaaaaa`)](benchmark-runs/main-aaaaaaa.json) | baseline |",
    ]
    # Different dev sets in one table: no count in the header, a column per row instead.
    d = make_row("small", ex={"easy": 1.0, "all": 1.0}, count={"easy": 1, "all": 1})
    lines = [squeeze(line) for line in tables.score_table([a, d], "ex")]
    assert lines[0] == "| model + method | easy | medium | hard | extra | all | questions (easy/medium/hard/extra/all) | run | params |"
    assert lines[3].startswith("| `m` + LoRA | 100.0 | — | — | — | **100.0** | 1/—/—/—/1 | [`small`")


def test_bird_levels_order_and_ves_scale():
    row = make_row(
        dataset="bird",
        ex={"all": 0.5, "challenging": 0.25, "simple": 0.75, "moderate": 0.5},
        count={"simple": 4, "moderate": 2, "challenging": 4, "all": 10},
    )
    assert tables.levels_of([row], "ex") == ["simple", "moderate", "challenging", "all"]
    ves = runs.Row(row.source, row.params, (), runs.EvalMetrics({"ex": {"all": 0.5}, "ves": {"all": 48.76}}, {"all": 10}))
    text = tables.render(runs.Report(rows=[ves]), now=datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc))
    assert "### Valid efficiency score (VES, BIRD)" in text and re.search(r"\|\s*\*\*48\.8\*\*\s*\|", text)
    assert "No EM in the metrics/eval.json of these runs (BIRD publishes EX only)." in text


def test_set_flags_as_dvc_takes_them():
    row = make_row(
        changed=[
            ("lora.target_modules", ["q_proj", "v_proj"]),
            ("prompt.chat_template", True),
            ("train.launch", "torchrun --nproc_per_node 2"),
            ("data.schema_source", ""),
        ]
    )
    assert row.describe_params() == (
        "`-S 'lora.target_modules=[q_proj, v_proj]'` `-S prompt.chat_template=true` "
        "`-S 'train.launch=torchrun --nproc_per_node 2'` `-S 'data.schema_source='\"'\"''\"'\"''`"
    )
    # What a shell hands dvc: each flag one word, its value in YAML that reads back as the param.
    words = shlex.split(" ".join(row.flags()))
    assert words == [
        "lora.target_modules=[q_proj, v_proj]",
        "prompt.chat_template=true",
        "train.launch=torchrun --nproc_per_node 2",
        "data.schema_source=''",
    ]
    assert [yaml.safe_load(w.split("=", 1)[1]) for w in words] == [["q_proj", "v_proj"], True, "torchrun --nproc_per_node 2", ""]
    assert make_row(kind="workspace", changed=[("method", "qlora")]).describe_params() == "uncommitted: `method=qlora`"
    assert make_row(kind="commit", changed=[("lora.r", 8)]).describe_params() == "vs HEAD: `lora.r=8`"
    assert squeeze(tables.markdown_table(["a|b"], [["x|y"]])[2]) == "| x\\|y |"


def test_training_table_memory_time_and_missing_train():
    train_gpu = runs.TrainMetrics("qlora", "cuda", 1234.56, 987.0, 6144.0, "GPU", resumed_from_step=20)
    rows = [
        make_row("l", ex={"all": 0.41}, em={"all": 0.4}, train=None),
        make_row("q", method="qlora", ex={"all": 0.342}, em={"all": 0.3}, train=train_gpu),
        make_row("base", method="none", ex={"all": 0.05}, train=None),  # trains nothing: not listed
    ]
    lines = [squeeze(line) for line in tables.training_table(tables.order_rows(rows))]
    assert len(lines) == 4
    assert lines[2].startswith("| `m` + LoRA | 41.0 | 40.0 | — | — | — | — | [`l`")
    assert lines[3].startswith("| `m` + QLoRA | 34.2 | 30.0 | 1234.6 (resumed at step 20) | 6.0 (GPU) | 987.0 | cuda | [`q`")
    assert tables.training_table(rows[2:]) == []


def test_train_metrics_from_json_prefers_gpu_memory():
    gpu = runs.TrainMetrics.from_json(
        {"device": "cuda", "peak_gpu_allocated_mb": 100.0, "peak_gpu_reserved_mb": 200.0, "peak_rss_mb": 5000.0}
    )
    assert (gpu.peak_memory_mb, gpu.peak_memory_kind) == (100.0, "GPU")
    none = runs.TrainMetrics.from_json({"method": "none", "device": "cpu", "steps": 0})
    assert none.wall_time_s is None and none.peak_memory_mb is None and tables.memory_gib(none) == "—"


def test_train_time_of_a_resumed_training_counts_every_run():
    resumed = {"wall_time_s": 600.0, "total_wall_time_s": 9000.0, "resumed_from_step": 700}
    assert runs.TrainMetrics.from_json(resumed).wall_time_s == 9000.0
    assert runs.TrainMetrics.from_json({"wall_time_s": 600.0}).wall_time_s == 600.0  # written before the total existed


def entry(rev, name, params, eval_data=None, train_data=None, experiments=None, timestamp="2026-01-01T00:00:00"):
    metrics = {}
    if eval_data is not None:
        metrics["metrics/eval.json"] = {"data": eval_data}
    else:
        metrics["metrics/eval.json"] = {"error": {"type": "FileNotFoundError", "msg": "no file"}}
    if train_data is not None:
        metrics["metrics/train.json"] = {"data": train_data}
    return {
        "rev": rev,
        "name": name,
        "error": None,
        "experiments": experiments,
        "data": {"rev": rev, "timestamp": timestamp, "params": {"params.yaml": {"data": params}}, "metrics": metrics},
    }


def test_collect_from_exp_show_json():
    base_params = {"method": "lora", "model": {"name": "m"}, "data": {"dataset": "sample", "source": "data/sample"}}
    ev = {"ex": {"all": 0.5}, "em": {"all": 0.4}, "count": {"all": 2}}
    q_params = {**base_params, "method": "qlora"}
    q = entry("b" * 40, "q", q_params, {"ex": {"all": 0.25}, "count": {"all": 2}}, {"method": "lora"})
    failed = entry("c" * 40, "f", {**base_params, "method": "full"}, ev)  # stale metrics of a failed run
    queued = entry("d" * 40, "waiting", base_params)
    experiments = [
        {"name": "q", "executor": None, "revs": [q]},
        {"name": "f", "executor": {"state": "failed"}, "revs": [failed]},
        {"name": "waiting", "executor": {"state": "queued"}, "revs": [queued]},
    ]
    entries = [
        {**entry("workspace", None, base_params, ev), "experiments": None},
        entry("a" * 40, "main", base_params, ev, experiments=experiments),
    ]
    report = runs.collect(entries)
    assert [(r.source.kind, r.source.name, r.changed) for r in report.rows] == [
        ("commit", "main", ()),
        ("experiment", "q", (("method", "qlora"),)),
    ]
    assert [(i.source.name, i.reason) for i in report.left_out] == [("f", "experiment failed"), ("waiting", "experiment queued")]
    assert report.notes == [
        "q (bbbbbbb): metrics/train.json says method 'lora' but its params say 'qlora'; the train columns may be stale",
        "workspace: its metrics are those of main (aaaaaaa); listed once, under that run",
    ]
    q_row = report.rows[1]
    assert q_row.eval.scores == {"ex": {"all": 0.25}} and q_row.eval.count == {"all": 2}
    with pytest.raises(SqloraError, match="no experiments"):
        runs.collect([])


def test_render_header_and_footer():
    row = make_row("main", kind="commit", ex={"all": 0.5}, count={"all": 2})
    text = tables.render(
        runs.Report(rows=[row], left_out=[runs.LeftOut(runs.Source("x", "experiment", "e" * 40, HEAD), "experiment failed")]),
        command="sqlora report",
        now=datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc),
        git=runs.GitState(HEAD, "main", dirty=True),
    )
    assert text.startswith(
        "# Benchmark report\n\nMade by `sqlora report` on 2026-01-02 03:04 UTC in the repository at commit `aaaaaaa` "
        "(branch `main`), with uncommitted changes."
    )
    assert "## Left out\n\n- `x` (`eeeeeee`, on `aaaaaaa`): experiment failed\n" in text
    assert text.endswith(
        "Every number above is read from the metrics files the pipeline wrote for each run (metrics/eval.json, "
        "metrics/train.json), as `dvc exp show` reports them; “—” marks a value a run's metrics do not have. "
        "Each run links to its snapshot in `benchmark-runs/`: those files and its params.yaml as DVC read them, "
        "and the command that reruns it.\n"
    )


# ---------------------------------------------------------------------------------------------
# Errors: one line, exit status 2, nothing written


def test_not_a_dvc_repository(tmp_path):
    result = run(SQLORA + ["report", "--out", str(tmp_path / "b.md")], tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: `dvc exp show --json` in .: you are not inside of a DVC repository")
    assert not (tmp_path / "b.md").exists()


@pytest.mark.slow
def test_repository_without_commits_or_metrics(tmp_path):
    init_repo(tmp_path)
    result = run(SQLORA + ["report"], tmp_path, check=False)
    assert (result.returncode, result.stderr) == (
        2,
        "error: no experiments: the repository has no commit (commit the pipeline, then `dvc repro`)\n",
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-qm", "params only"], tmp_path)
    result = run(SQLORA + ["report"], tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: no run with metrics/eval.json in .: workspace (no metrics/eval.json")
    assert not (tmp_path / "reports").exists()


def test_dvc_not_installed(monkeypatch, tmp_path):
    from sqlora.report import dvc as dvc_module

    monkeypatch.setattr(dvc_module.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(dvc_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(dvc_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SqloraError, match=r"^dvc is not installed \(run `make setup`, or pip install dvc\)$"):
        runs.read_experiments(tmp_path)


def test_missing_repo_folder(tmp_path):
    with pytest.raises(SqloraError, match="no such folder"):
        runs.read_experiments(tmp_path / "nowhere")


@pytest.mark.slow
def test_report_embeds_the_plots_as_svg(project, tmp_path, monkeypatch):
    """The plots dvc.yaml defines, across the report's runs, drawn to SVG beside the report and shown
    in it; an SVG of a plot no longer drawn is removed."""
    asked = []
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "EX by run",
        "data": {"values": [{"run": "a", "ex": 40}, {"run": "b", "ex": 42}]},
        "mark": "bar",
        "encoding": {"x": {"field": "ex", "type": "quantitative"}, "y": {"field": "run", "type": "nominal"}},
    }
    monkeypatch.setattr(rp, "plot_specs", lambda revisions, repo: asked.append(revisions) or {"EX by run": spec})
    out = tmp_path / "reports/benchmark.md"
    (tmp_path / "reports/benchmark-plots").mkdir(parents=True)
    (tmp_path / "reports/benchmark-plots/gone.svg").write_text("<svg/>")
    report = rp.write_report(out, project["root"])
    text = out.read_text()
    assert "## Plots" in text and "![EX by run](benchmark-plots/ex-by-run.svg)" in text
    svg = (tmp_path / "reports/benchmark-plots/ex-by-run.svg").read_text()
    assert svg.startswith("<svg") and ">run<" in svg
    assert not (tmp_path / "reports/benchmark-plots/gone.svg").exists()
    names = [r.source.name if r.source.kind == "experiment" else r.source.short for r in report.rows if r.source.rev]
    assert asked == [list(dict.fromkeys(names))] and "qlora-run" in asked[0]


def test_a_published_model_run_is_labelled_by_its_folder():
    """`make published` runs train nothing (method none) but predict with a trained folder: not zero-shot."""
    row = make_row(method="none")
    assert row.label() == "`m`, base (zero-shot)"
    published = replace(row, params={**row.params, "predict.model": "models/published/x"})
    assert published.label() == "`m` + `models/published/x`"
    assert replace(row, params={**row.params, "predict.model": "models/finetuned"}).label() == "`m`, base (zero-shot)"
