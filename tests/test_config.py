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
        ("train:\n  batch_size: many\n", "'train.batch_size' must be a valid integer, unable to parse string as an integer, got 'many'"),
        ("train:\n  bach_size: 8\n", "unknown key 'train.bach_size' (known: epochs, batch_size,"),
        ("lora:\n  target_modules: 7\n", "'lora.target_modules' must be a list of module names or 'all-linear', got 7"),
        ("lora:\n  target_modules: []\n", "'lora.target_modules' must be a list of module names or 'all-linear', got []"),
        ("lora:\n  r: true\n", "'lora.r' must be a number, not true or false, got True"),
        ("eval:\n  skip_missing_databases: 1\n", "'eval.skip_missing_databases' must be a valid boolean, got 1"),
        ("predict: [1, 2]\n", "'predict' must be a dictionary or an instance of PredictParams, got [1, 2]"),
        ("train:\n  warmup_ratio: 3\n", "'train.warmup_ratio' must be less than 1, got 3"),
        ("train:\n  epochs: 0\n", "'train.epochs' must be greater than 0, got 0"),
        ("data:\n  validation: 1\n", "'data.validation' must be less than 1, got 1"),
        ("predict:\n  top_p: 1.5\n", "'predict.top_p' must be less than or equal to 1, got 1.5"),
        ("eval:\n  test_suite: true\n  database: duck/{db_id}.duckdb\n", "'eval.test_suite' scores the dataset's SQLite files"),
        ("- 1\n", "must be a mapping of parameters, got list"),
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
