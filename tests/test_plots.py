"""`dvc plots`: the data the prepare and evaluate stages write for it, dvc.yaml's plot definitions and
templates, and `dvc plots show` / `dvc plots diff` on a scratch repository (no model training)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

HARDNESS = "reports/plots/hardness.json"
PROMPT_TOKENS = "reports/plots/prompt_tokens.csv"
DVC_ENV = {
    **os.environ,
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def run_stage(cwd: Path, name: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "stages" / f"{name}.py")], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def dvc(cwd: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=DVC_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# --- evaluate: EX and EM per hardness level, in percent -------------------------------------------


@pytest.fixture()
def eval_dir(tmp_path) -> Path:
    db = tmp_path / "dbs" / "shop" / "shop.sqlite"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL);"
        "INSERT INTO item VALUES (1, 'a', 2.0), (2, 'b', 3.0), (3, 'b', 5.0);"
    )
    conn.commit()
    conn.close()
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "tables.json").write_text(
        json.dumps(
            [
                {
                    "db_id": "shop",
                    "table_names_original": ["item"],
                    "table_names": ["item"],
                    "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [0, "price"]],
                    "column_names": [[-1, "*"], [0, "id"], [0, "name"], [0, "price"]],
                    "column_types": ["text", "number", "text", "number"],
                    "primary_keys": [1],
                    "foreign_keys": [],
                }
            ]
        )
    )
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "predictions").mkdir()
    return tmp_path


def evaluate(workdir: Path, dataset: str, golds: list[tuple[str, dict]], preds: list[str]) -> tuple[dict, list[dict]]:
    records = [{"db_id": "shop", "instruction": "schema", "input": "q", "output": sql, **extra} for sql, extra in golds]
    (workdir / "data/prepared/dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (workdir / "data/prepared/meta.json").write_text(
        json.dumps({"dataset": dataset, "database_dir": str(workdir / "dbs"), "tables_json": str(workdir / "tables.json")})
    )
    (workdir / "predictions/dev.sql").write_text("".join(p + "\n" for p in preds))
    run_stage(workdir, "evaluate")
    return json.loads((workdir / "metrics/eval.json").read_text()), json.loads((workdir / HARDNESS).read_text())


def expected_rows(metrics: dict, names: tuple[str, ...]) -> list[tuple]:
    return [
        (level, name.upper(), metrics[name][level] * 100, count) for name in names for level, count in metrics["count"].items() if count
    ]


@pytest.mark.slow
def test_evaluate_writes_ex_and_em_by_hardness_in_percent(eval_dir):
    golds = [
        ("SELECT name FROM item", {}),  # easy
        ("SELECT name FROM item WHERE price > 2 ORDER BY price", {}),  # medium
        ("SELECT count(*) FROM item", {}),  # easy
        ("SELECT name, count(*) FROM item GROUP BY name HAVING count(*) > 1 ORDER BY name LIMIT 1", {}),
    ]
    preds = ["SELECT name FROM item", "SELECT name FROM item WHERE price > 2 ORDER BY price", "SELECT count(id) FROM item", "SELECT 1"]
    metrics, rows = evaluate(eval_dir, "spider", golds, preds)
    assert [(r["level"], r["metric"], pytest.approx(r["value"]), r["questions"]) for r in rows] == expected_rows(metrics, ("ex", "em"))
    assert any(count == 0 for count in metrics["count"].values())  # a level without questions: no bar
    by = {(r["metric"], r["level"]): r["value"] for r in rows}
    assert by["EX", "all"] == 75.0 and by["EM", "all"] == 50.0  # count(id) executes like count(*) but is not an exact match


@pytest.mark.slow
def test_evaluate_bird_plots_ex_by_difficulty_only(eval_dir):
    golds = [
        ("SELECT DISTINCT name FROM item", {"difficulty": "simple"}),
        ("SELECT id FROM item", {"difficulty": "moderate"}),
        ("SELECT name FROM item WHERE id = 1", {"difficulty": "moderate"}),
    ]
    metrics, rows = evaluate(
        eval_dir, "bird", golds, ["SELECT name FROM item", "SELECT name FROM item", "SELECT name FROM item WHERE id = 1"]
    )
    assert [(r["level"], r["metric"], pytest.approx(r["value"]), r["questions"]) for r in rows] == expected_rows(metrics, ("ex",))
    assert [(r["level"], r["value"]) for r in rows] == [("simple", 100.0), ("moderate", 50.0), ("all", pytest.approx(66.67))]


# --- prepare: every kept record's prompt length ---------------------------------------------------


@pytest.mark.slow
def test_prepare_writes_the_prompt_lengths_behind_data_json(tmp_path, sample_dir, tiny_model_dir):
    from sqlora.data.prepare import percentiles
    from sqlora.data.prompt import encode_prompt
    from sqlora.data.records import load_records
    from sqlora.model.loader import load_tokenizer

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] |= {"dataset": "sample", "source": "data/sample", "max_train_examples": 48, "max_dev_examples": 30}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample").symlink_to(sample_dir)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base").symlink_to(tiny_model_dir)
    run_stage(tmp_path, "prepare")

    stats = json.loads((tmp_path / "metrics/data.json").read_text())
    with open(tmp_path / PROMPT_TOKENS, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"split", "tokens"}
    tokenizer = load_tokenizer(tiny_model_dir)
    for split in ("train", "dev"):
        lengths = [int(r["tokens"]) for r in rows if r["split"] == split]
        assert len(lengths) == stats[split]["records"] == params["data"][f"max_{split}_examples"]
        assert percentiles(lengths) == stats[split]["prompt_tokens"]  # mean, max and every percentile
        # In the order of data/prepared/<split>.jsonl: each record's prompt as the model sees it.
        records = load_records(tmp_path / f"data/prepared/{split}.jsonl")
        assert lengths == [len(encode_prompt(tokenizer, r.prompt, params["prompt"]["chat_template"])) for r in records]
    assert {r["split"] for r in rows} == {"train", "dev"}


# --- dvc.yaml: the plots, their files and their templates -----------------------------------------


def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def plot_files(definition: dict) -> set[str]:
    return {file for axis in ("x", "y") if isinstance(definition.get(axis), dict) for file in definition[axis]}


def outputs(stage: dict) -> dict[str, dict]:
    """A stage's outs, metrics and plots: path -> its options."""
    result = {}
    for key in ("outs", "metrics", "plots"):
        for out in stage.get(key, []):
            path, options = next(iter(out.items())) if isinstance(out, dict) else (out, {})
            result[path] = options or {}
    return result


def test_dvc_yaml_plots_read_stage_outputs_with_templates_that_exist():
    from dvc_render.vega_templates import TEMPLATES

    config = dvc_yaml()
    outs = {path: (name, options) for name, stage in config["stages"].items() for path, options in outputs(stage).items()}
    plots = {title: definition for entry in config["plots"] for title, definition in entry.items()}
    builtin = {t.DEFAULT_NAME for t in TEMPLATES}
    for title, definition in plots.items():
        for file in plot_files(definition):
            owner = next((path for path in outs if file == path or file.startswith(path + "/")), None)
            assert owner, f"plot {title!r} reads {file}, which no stage writes"
            assert outs[owner][1].get("cache") is False, (
                f"{owner} is not git-tracked (cache: false): dvc plots diff cannot read old revisions"
            )
        template = definition.get("template", "linear")
        if template not in builtin:
            path = REPO / ".dvc" / "plots" / f"{template}.json"
            assert path.is_file(), f"plot {title!r}: no template {path}"
            content = json.loads(path.read_text())
            assert content["data"] == {"values": "<DVC_METRIC_DATA>"}
    by_file = {file: definition for definition in plots.values() for file in plot_files(definition)}
    assert outs[HARDNESS][0] == "evaluate" and outs[PROMPT_TOKENS][0] == "prepare"
    assert by_file[HARDNESS]["template"] == "bar_percent" and by_file[HARDNESS]["y"][HARDNESS] == "level"
    assert by_file[PROMPT_TOKENS]["template"] == "histogram" and by_file[PROMPT_TOKENS]["y"][PROMPT_TOKENS] == "split"
    for kept in ("dvclive/plots/metrics/loss.tsv", "dvclive/plots/metrics/learning_rate.tsv"):
        assert kept in by_file


# --- dvc plots show / diff on a scratch repository ------------------------------------------------


def hardness_rows(metrics: dict) -> list[dict]:
    spec = importlib.util.spec_from_file_location("evaluate_stage", REPO / "stages" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.hardness_rows(metrics)


def eval_metrics(ex: float, em: float) -> dict:
    levels = {"easy": 1.0, "medium": 0.8, "hard": 0.6, "extra": 0.4, "all": 0.7}
    return {
        "ex": {k: round(v * ex, 4) for k, v in levels.items()},
        "em": {k: round(v * em, 4) for k, v in levels.items()},
        "count": {"easy": 4, "medium": 3, "hard": 2, "extra": 1, "all": 10},
    }


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> Path:
    """dvc.yaml, params.yaml, the templates and the dvclive curves of this repository, plus plot data
    in a first commit; new plot data in the workspace."""
    root = tmp_path_factory.mktemp("plots-repo")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "dvclive" / "plots", root / "dvclive" / "plots")
    (root / "reports" / "plots").mkdir(parents=True)
    (root / HARDNESS).write_text(json.dumps(hardness_rows(eval_metrics(0.5, 0.4))))
    (root / PROMPT_TOKENS).write_text(
        "split,tokens\n" + "".join(f"train,{100 + i % 37}\n" for i in range(60)) + "".join(f"dev,{120 + i % 11}\n" for i in range(20))
    )
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "first"], cwd=root, check=True, env=DVC_ENV)
    (root / HARDNESS).write_text(json.dumps(hardness_rows(eval_metrics(0.6, 0.5))))
    (root / PROMPT_TOKENS).write_text(
        "split,tokens\n" + "".join(f"train,{150 + i % 41}\n" for i in range(60)) + "".join(f"dev,{160 + i % 13}\n" for i in range(20))
    )
    return root


def plots_json(root: Path, *args: str) -> dict:
    result = json.loads(dvc(root, "plots", *args, "--json"))
    assert not result.get("errors"), result["errors"]
    return {title: items[0] for title, items in result["data"].items()}


@pytest.mark.slow
def test_dvc_plots_show_renders_bars_and_histogram(plots_repo, tmp_path):
    plots = plots_json(plots_repo, "show")
    assert {"Training loss", "Learning rate", "EX and EM by hardness (%)", "Prompt length (tokens)"} <= set(plots)
    bars = plots["EX and EM by hardness (%)"]["content"]
    values = bars["data"]["values"]
    assert [(v["metric"], v["level"], v["value"]) for v in values if v["metric"] == "EX"][:2] == [
        ("EX", "easy", 60.0),
        ("EX", "medium", 48.0),
    ]
    assert {v["metric"] for v in values} == {"EX", "EM"}
    assert bars["spec"]["encoding"]["x"]["field"] == "value" and bars["spec"]["encoding"]["y"]["field"] == "level"
    assert bars["spec"]["encoding"]["yOffset"]["field"] == "rev" and bars["facet"]["column"]["field"] == "metric"
    histogram = plots["Prompt length (tokens)"]["content"]
    assert len(histogram["data"]["values"]) == 80 and histogram["encoding"]["x"]["bin"]
    assert histogram["encoding"]["x"]["title"] == "prompt tokens" and histogram["encoding"]["row"]["field"] == "split"
    # The HTML page a person opens.
    dvc(plots_repo, "plots", "show", "-o", str(tmp_path / "html"))
    page = (tmp_path / "html" / "index.html").read_text()
    assert "EX and EM by hardness (%)" in page and "Prompt length (tokens)" in page


@pytest.mark.slow
def test_dvc_plots_diff_puts_each_revision_side_by_side(plots_repo):
    plots = plots_json(plots_repo, "diff", "HEAD")
    bars = plots["EX and EM by hardness (%)"]
    assert set(bars["revisions"]) == {"HEAD", "workspace"}
    values = {(v["rev"], v["metric"], v["level"]): v["value"] for v in bars["content"]["data"]["values"]}
    assert values["HEAD", "EX", "all"] == 35.0 and values["workspace", "EX", "all"] == 42.0
    assert values["HEAD", "EM", "easy"] == 40.0 and values["workspace", "EM", "easy"] == 50.0
    assert bars["content"]["spec"]["layer"][0]["encoding"]["color"]["scale"]["domain"] == ["workspace", "HEAD"]
    histogram = plots["Prompt length (tokens)"]
    assert set(histogram["revisions"]) == {"HEAD", "workspace"}
    assert {v["rev"] for v in histogram["content"]["data"]["values"]} == {"HEAD", "workspace"}


@pytest.mark.slow
def test_plot_specs_compile_with_vega_lite(plots_repo):
    """The filled templates are valid vega-lite: rendered to SVG (vl-convert, when installed)."""
    vl_convert = pytest.importorskip("vl_convert")
    # The oldest Vega-Lite 5 it has: the closest to the 5.2 that DVC's HTML page loads.
    version = min((v for v in vl_convert.get_vegalite_versions() if v.startswith("5.")), key=lambda v: int(v.split(".")[1]))
    plots = plots_json(plots_repo, "diff", "HEAD")
    svgs = {
        title: vl_convert.vegalite_to_svg(plots[title]["content"], vl_version=version)
        for title in ("EX and EM by hardness (%)", "Prompt length (tokens)")
    }
    for title, svg in svgs.items():
        assert title in svg
    assert ">EM<" in svgs["EX and EM by hardness (%)"] and ">% of questions<" in svgs["EX and EM by hardness (%)"]
    assert ">prompt tokens<" in svgs["Prompt length (tokens)"]


@pytest.mark.slow
def test_report_renders_the_plots_to_svg_without_a_browser_or_network(plots_repo, tmp_path):
    from sqlora.report.plots import plot_specs, write_plots

    paths = write_plots(plot_specs(["HEAD"], repo=plots_repo), tmp_path / "plots")
    assert {p.name for p in paths.values()} >= {"ex-and-em-by-hardness.svg", "prompt-length-tokens.svg", "training-loss.svg"}
    bars = paths["EX and EM by hardness (%)"].read_text()
    assert bars.startswith("<svg") and ">EM<" in bars and ">HEAD<" in bars and ">workspace<" in bars
    assert "<script" not in bars and "cdn" not in bars.lower()
    assert ">step<" in paths["Training loss"].read_text()


def test_plot_specs_outside_a_dvc_repository_are_none(tmp_path):
    from sqlora.report.plots import plot_specs, write_plots

    assert plot_specs(repo=tmp_path) == {} and write_plots({}, tmp_path / "plots") == {}
