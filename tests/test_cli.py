import json
import subprocess
import sys
from pathlib import Path

SQLORA = [str(Path(sys.executable).parent / "sqlora")]


def test_prepare_command(sample_dir, tmp_path):
    out = tmp_path / "dev.jsonl"
    result = subprocess.run(SQLORA + ["prepare", "--source", str(sample_dir), "--split", "dev", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(json.loads((sample_dir / "dev.json").read_text()))
    assert set(records[0]) == {"db_id", "instruction", "input", "output"}


def test_bad_source_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(SQLORA + ["prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "error: --source" in result.stderr and "no such folder or file" in result.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_sample_command(tmp_path):
    result = subprocess.run(SQLORA + ["sample", "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s" / "tables.json").is_file()
