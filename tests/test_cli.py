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


def test_evaluate_command_on_the_sample(sample_dir, tmp_path):
    gold = sample_dir / "dev_gold.sql"
    lines = gold.read_text().splitlines()
    preds = [line.split("\t")[0] for line in lines]
    preds[0] = "SELECT 'wrong'"
    (tmp_path / "pred.sql").write_text("\n".join(preds) + "\n")
    out = tmp_path / "report.json"
    result = subprocess.run(
        SQLORA + ["evaluate", "--gold", str(gold), "--pred", str(tmp_path / "pred.sql"), "--db", str(sample_dir / "database"),
                  "--table", str(sample_dir / "tables.json"), "--out", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "EXECUTION ACCURACY" in result.stdout and "EXACT MATCHING ACCURACY" in result.stdout
    assert result.stdout.splitlines()[0].split() == ["easy", "medium", "hard", "extra", "all"]
    report = json.loads(out.read_text())
    assert report["summary"]["all"]["count"] == len(lines)
    assert report["summary"]["all"]["exec"] == (len(lines) - 1) / len(lines)
    assert [e["index"] for e in report["examples"]] == list(range(len(lines)))
    assert report["examples"][0]["exec"] == 0 and all(e["exec"] == 1 for e in report["examples"][1:])
    assert report["examples"][0]["exact"] == 0 and all(e["exact"] == 1 for e in report["examples"][1:])
    assert report["summary"]["all"]["exact"] == report["summary"]["all"]["exec"]


def test_evaluate_bad_files(sample_dir, tmp_path):
    (tmp_path / "gold.sql").write_text("SELECT 1\tshop\nSELECT 2 no tab\n")
    (tmp_path / "pred.sql").write_text("SELECT 1\n")
    base = SQLORA + ["evaluate", "--etype", "exec", "--pred", str(tmp_path / "pred.sql"), "--db", str(sample_dir / "database")]
    result = subprocess.run(base + ["--gold", str(tmp_path / "gold.sql")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / 'gold.sql'}:2: expected 'SQL<TAB>db_id'"
    (tmp_path / "gold.sql").write_text("SELECT 1\tshop\nSELECT 2\tshop\n")
    result = subprocess.run(base + ["--gold", str(tmp_path / "gold.sql")], capture_output=True, text=True)
    assert result.returncode == 2 and "1 predictions for 2 gold queries" in result.stderr
