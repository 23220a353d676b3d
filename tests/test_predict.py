"""The predict stage in-process: resume after a kill, self-consistency, its parameters and errors."""

from __future__ import annotations

import json
import runpy
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from sqlora.config import load_params
from sqlora.infer.predict import PartialPredictions
from tests.helpers import REPO


@pytest.fixture(scope="module")
def dev_records(sample_dir) -> list[dict]:
    from sqlora.config import DataParams, PromptParams
    from sqlora.data.prepare import prepare_split

    _, fitted, _ = prepare_split("dev", DataParams(dataset="sample", source=str(sample_dir)), PromptParams(), limit=10)
    return [asdict(r) for r in fitted.records]


def make_project(root: Path, model_dir: Path, sample_dir: Path, records: list[dict], **predict) -> Path:
    prepared = root / "data/prepared"
    prepared.mkdir(parents=True)
    (prepared / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = {"dataset": "sample", "database_dir": str(sample_dir / "database"), "tables_json": str(sample_dir / "tables.json")}
    (prepared / "meta.json").write_text(json.dumps(meta))
    shutil.copytree(model_dir, root / "models/finetuned")  # a plain checkpoint folder: standalone
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["predict"].update({"batch_size": 4, "max_new_tokens": 8, **predict})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def run_stage(project: Path, monkeypatch) -> None:
    monkeypatch.chdir(project)
    runpy.run_path(str(REPO / "stages/predict.py"))["main"]()  # not as __main__: main() runs here


def without_timings(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        del row["batch_seconds"], row["seconds"]
    return rows


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_uninterrupted_outputs(tmp_path, monkeypatch, capsys, chaotic_dir, sample_dir, dev_records):
    whole = make_project(tmp_path / "whole", chaotic_dir, sample_dir, dev_records)
    killed = make_project(tmp_path / "killed", chaotic_dir, sample_dir, dev_records)
    run_stage(whole, monkeypatch)

    append = PartialPredictions.append

    def append_then_die(self, rows):
        append(self, rows)
        raise KeyboardInterrupt  # as a kill between two batches

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(PartialPredictions, "append", append_then_die)
        run_stage(killed, monkeypatch)
    partial = killed / "predictions/partial/dev.0.jsonl"
    assert len(partial.read_text().splitlines()) == 4 and not (killed / "predictions/dev.sql").exists()

    capsys.readouterr()
    run_stage(killed, monkeypatch)
    assert "resuming, 4 of 10 questions already done" in capsys.readouterr().out
    assert (killed / "predictions/dev.sql").read_text() == (whole / "predictions/dev.sql").read_text()
    assert without_timings(killed / "predictions/dev.jsonl") == without_timings(whole / "predictions/dev.jsonl")
    assert not partial.exists() and (killed / "predictions/partial/fingerprint.txt").is_file()

    rows = [json.loads(line) for line in (whole / "predictions/dev.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(10))
    fields = {"sql", "status", "raw", "new_tokens", "hit_max_new_tokens", "stop", "decoding", "batch_seconds", "seconds"}
    assert fields <= set(rows[0])
    lines = (whole / "predictions/dev.sql").read_text().split("\n")
    assert lines[:-1] == [r["sql"] for r in rows] and lines[-1] == ""  # one line per question, empty ones too


@pytest.mark.slow
def test_changed_parameters_discard_the_partial_results(tmp_path, monkeypatch, capsys, chaotic_dir, sample_dir, dev_records):
    project = make_project(tmp_path / "p", chaotic_dir, sample_dir, dev_records)

    def die(self, rows):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(PartialPredictions, "append", die)
        run_stage(project, monkeypatch)
    (project / "predictions/partial/dev.0.jsonl").write_text('{"index": 0, "sql": "stale"}\n')
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["predict"]["max_new_tokens"] = 6
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    capsys.readouterr()
    run_stage(project, monkeypatch)
    assert "resuming" not in capsys.readouterr().out
    assert "stale" not in (project / "predictions/dev.sql").read_text()


@pytest.mark.slow
def test_self_consistency_records_the_vote(tmp_path, monkeypatch, chaotic_dir, sample_dir, dev_records):
    project = make_project(tmp_path / "sc", chaotic_dir, sample_dir, dev_records[:4], decoding="self_consistency", num_samples=3)
    run_stage(project, monkeypatch)
    rows = [json.loads(line) for line in (project / "predictions/dev.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["candidates"]) == 3 for r in rows)
    for row in rows:
        assert row["decoding"] == "self_consistency" and row["sql"] == row["candidates"][row["chosen"]]["sql"]
        winner = row["candidates"][row["chosen"]]["result"]
        assert row["votes"] == sum(c["result"] is not None and c["result"] == winner for c in row["candidates"])


@pytest.mark.slow
def test_execution_guided_keeps_the_first_candidate_that_runs(tmp_path, monkeypatch, chaotic_dir, sample_dir, dev_records):
    """Every candidate (the greedy answer, then samples) is run in the sandbox; the first that ran is the
    answer. Constrained too: the stage reads each question's schema from meta.json's tables.json."""
    project = make_project(
        tmp_path / "eg", chaotic_dir, sample_dir, dev_records[:4], decoding="execution_guided", num_samples=3, constrained=True
    )
    run_stage(project, monkeypatch)
    rows = [json.loads(line) for line in (project / "predictions/dev.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["decoding"] == "execution_guided" and len(row["candidates"]) == 3
        order = sorted(range(3), key=lambda k: row["candidates"][k]["constraint"] == "released")  # held ones first
        ran = [k for k in order if row["candidates"][k]["result"] is not None]
        assert row["chosen"] == (ran[0] if ran else order[0]) and row["votes"] == (1 if ran else 0)
        assert row["sql"] == row["candidates"][row["chosen"]]["sql"]
    metrics = json.loads((project / "metrics/predict.json").read_text())
    assert metrics["decoding"] == "execution_guided" and metrics["questions"] == 4 and sum(metrics["status"].values()) == 4
    assert metrics["engine"] == "sqlora"
    assert metrics["candidates_released"] == sum(c["constraint"] == "released" for r in rows for c in r["candidates"])


@pytest.mark.slow
def test_a_constraint_with_no_admissible_token_is_released_and_counted(tmp_path, monkeypatch, capsys, chaotic_dir, sample_dir, dev_records):
    """Bad input: a schema under which no token is admissible (here: the checker admits none). Nothing
    hangs or fails; each row goes on unconstrained, so the answers are the unconstrained ones, marked
    released, and metrics/predict.json and the log count them."""
    from sqlora.infer.constrained import TokenChecker

    free = make_project(tmp_path / "free", chaotic_dir, sample_dir, dev_records[:4])
    run_stage(free, monkeypatch)
    monkeypatch.setattr(TokenChecker, "allows", lambda self, state, token: False)
    stuck = make_project(tmp_path / "stuck", chaotic_dir, sample_dir, dev_records[:4], constrained=True)
    run_stage(stuck, monkeypatch)
    rows = [json.loads(line) for line in (stuck / "predictions/dev.jsonl").read_text().splitlines()]
    assert (stuck / "predictions/dev.sql").read_text() == (free / "predictions/dev.sql").read_text()
    released = sum(r["constraint"] == "released" for r in rows)
    assert released >= 1 and all(r["constraint"] in ("held", "released") for r in rows)
    assert json.loads((stuck / "metrics/predict.json").read_text())["constraint_released"] == released
    assert f"constraint released for {released}" in capsys.readouterr().out


@pytest.mark.slow
def test_self_consistency_needs_the_databases(tmp_path, monkeypatch, capsys, chaotic_dir, sample_dir, dev_records):
    records = [dict(dev_records[0], db_id="nowhere")]
    project = make_project(tmp_path / "nodb", chaotic_dir, sample_dir, records, decoding="self_consistency")
    with pytest.raises(SystemExit) as exit:
        run_stage(project, monkeypatch)
    assert exit.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: predict.decoding self_consistency runs the candidates, but ") and "nowhere.sqlite" in line


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "decoding",
            "nucleus",
            "'predict.decoding' is 'nucleus'; expected one of greedy, beam, sample, self_consistency, execution_guided",
        ),
        ("top_p", 1.5, "'predict.top_p' must be less than or equal to 1, got 1.5"),
        ("temperature", 0, "'predict.temperature' must be greater than 0, got 0"),
        ("num_samples", 0, "'predict.num_samples' must be greater than 0, got 0"),
        ("num_beams", "four", "'predict.num_beams' must be a valid integer, unable to parse string as an integer, got 'four'"),
    ],
)
def test_bad_predict_params(tmp_path, key, value, message):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["predict"][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    from sqlora.errors import SqloraError

    with pytest.raises(SqloraError) as error:
        load_params(path)
    assert str(error.value) == f"{path}: {message}"


def test_predict_defaults_are_greedy():
    params = load_params(REPO / "params.yaml").predict
    assert params.decoding == "greedy" and params.batch_size > 0 and params.max_new_tokens > 0


@pytest.mark.slow
def test_predict_model_param_names_the_model_folder(tmp_path, monkeypatch, capsys, chaotic_dir, sample_dir, dev_records):
    """predict.model: models/exported or any checkpoint folder instead of the train stage's output."""
    default = make_project(tmp_path / "default", chaotic_dir, sample_dir, dev_records[:4])
    merged = make_project(tmp_path / "merged", chaotic_dir, sample_dir, dev_records[:4], model="models/exported")
    shutil.move(merged / "models/finetuned", merged / "models/exported")
    run_stage(default, monkeypatch)
    run_stage(merged, monkeypatch)
    assert (merged / "predictions/dev.sql").read_text() == (default / "predictions/dev.sql").read_text()

    missing = make_project(tmp_path / "missing", chaotic_dir, sample_dir, dev_records[:1], model="models/nowhere")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        run_stage(missing, monkeypatch)
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip() == "error: params.yaml: 'predict.model' is 'models/nowhere', which is not a folder"


def test_linear_layers_run_on_onednn_with_the_same_outputs(tiny_model_dir):
    """load_for_inference packs the float32 CPU model's linear layers for oneDNN: same logits as MKL's."""
    from transformers import AutoModelForCausalLM

    from sqlora.infer.loading import load_for_inference

    packed, _ = load_for_inference(tiny_model_dir, dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids).logits, plain(ids).logits, rtol=1e-4, atol=1e-5)
    # bf16: plain layers, every weight in bf16 (PyTorch runs them on oneDNN already)
    bf16, _ = load_for_inference(tiny_model_dir, dtype="bfloat16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert any(type(m) is torch.nn.Linear for m in bf16.modules())


@pytest.mark.slow
def test_self_consistency_on_a_missing_database_when_evaluation_skips_it(
    tmp_path, monkeypatch, capsys, chaotic_dir, sample_dir, dev_records
):
    records = [dict(dev_records[0], db_id="nowhere"), dev_records[1]]
    project = make_project(tmp_path / "skip", chaotic_dir, sample_dir, records, decoding="self_consistency", num_samples=2)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["eval"]["skip_missing_databases"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage(project, monkeypatch)
    assert "1 database(s) missing" in capsys.readouterr().out
    first, second = [json.loads(line) for line in (project / "predictions/dev.jsonl").read_text().splitlines()]
    assert first["chosen"] == 0 and first["votes"] == 0 and all(c["result"] is None for c in first["candidates"])
    assert second["votes"] >= 1 or all(c["result"] is None for c in second["candidates"])
    assert not (sample_dir / "database/nowhere").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"dataset": ', "data/prepared/meta.json: invalid JSON at line 1 column 13 (Expecting value)"),
        ('{"dataset": "sample"}', "data/prepared/meta.json: missing key 'database_dir'; rerun the prepare stage"),
    ],
)
def test_a_bad_meta_json_is_one_line(tmp_path, monkeypatch, capsys, text, message, tiny_model_dir, sample_dir, dev_records):
    project = make_project(tmp_path, tiny_model_dir, sample_dir, dev_records[:1])
    (project / "data/prepared/meta.json").write_text(text)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        run_stage(project, monkeypatch)
    assert exit.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not (project / "predictions").exists()
