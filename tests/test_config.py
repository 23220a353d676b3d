from pathlib import Path

import pytest

from sqlora.config import METHODS, load_params
from sqlora.errors import SqloraError
from tests.helpers import REPO


def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.method in METHODS
    assert params.data.dataset == "sample"
    assert params.lora.target_modules == "all-linear"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("method: bogus\n", "'method' is 'bogus'; expected one of lora, qlora, full, none"),
        ("train:\n  batch_size: many\n", "'train.batch_size' must be int, got 'many'"),
        ("train:\n  bach_size: 8\n", "unknown key 'train.bach_size'"),
        ("lora:\n  target_modules: 7\n", "'lora.target_modules' must be a list of module names or 'all-linear'"),
        ("eval:\n  skip_missing_databases: 1\n", "'eval.skip_missing_databases' must be bool"),
        ("predict: [1, 2]\n", "'predict' must be a mapping"),
        ("train:\n  warmup_ratio: 3\n", "'train.warmup_ratio' must be in [0, 1)"),
        ("method: [\n", "invalid YAML"),
    ],
)
def test_bad_params_name_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SqloraError) as err:
        load_params(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_numbers_are_coerced(tmp_path):
    params = load_params(write(tmp_path, "train:\n  learning_rate: 2e-4\n  epochs: 2\nlora:\n  target_modules: [q_proj, v_proj]\n"))
    assert params.train.learning_rate == pytest.approx(2e-4)
    assert params.train.epochs == 2.0
    assert params.lora.target_modules == ["q_proj", "v_proj"]


def test_missing_file(tmp_path):
    with pytest.raises(SqloraError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
