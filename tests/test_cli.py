import json
import subprocess

from tests.helpers import SQLORA


def test_prepare_command(sample_dir, tmp_path):
    out = tmp_path / "dev.jsonl"
    result = subprocess.run(
        SQLORA + ["prepare", "--source", str(sample_dir), "--split", "dev", "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(json.loads((sample_dir / "dev.json").read_text()))
    assert set(records[0]) == {"db_id", "instruction", "input", "output"}


def test_bad_source_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        SQLORA + ["prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "x.jsonl")], capture_output=True, text=True
    )
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
        SQLORA
        + [
            "evaluate",
            "--gold",
            str(gold),
            "--pred",
            str(tmp_path / "pred.sql"),
            "--db",
            str(sample_dir / "database"),
            "--table",
            str(sample_dir / "tables.json"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
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


def run_evaluate(sample_dir, tmp_path, gold_lines, pred_lines, *extra):
    (tmp_path / "gold.sql").write_text("".join(line + "\n" for line in gold_lines))
    (tmp_path / "pred.sql").write_text("".join(line + "\n" for line in pred_lines))
    return subprocess.run(
        SQLORA
        + [
            "evaluate",
            "--gold",
            str(tmp_path / "gold.sql"),
            "--pred",
            str(tmp_path / "pred.sql"),
            "--db",
            str(sample_dir / "database"),
            "--table",
            str(sample_dir / "tables.json"),
            "--out",
            str(tmp_path / "report.json"),
            *extra,
        ],
        capture_output=True,
        text=True,
    )


def sample_gold(sample_dir, n):
    return (sample_dir / "dev_gold.sql").read_text().splitlines()[:n]


def test_evaluate_match_only(sample_dir, tmp_path):
    golds = sample_gold(sample_dir, 3)
    preds = [golds[0].split("\t")[0], "SELECT", golds[2].split("\t")[0] + "\tignored after a tab"]
    result = run_evaluate(sample_dir, tmp_path, golds, preds, "--etype", "match")
    assert result.returncode == 0, result.stderr
    assert "EXACT MATCHING ACCURACY" in result.stdout and "EXECUTION ACCURACY" not in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(e["exact"], e["exec"]) for e in report["examples"]] == [(1, None), (0, None), (1, None)]
    assert report["examples"][1]["exact_error"]


def test_evaluate_bad_gold_is_an_error_or_a_listed_skip(sample_dir, tmp_path):
    golds = sample_gold(sample_dir, 2)
    db_id = golds[1].split("\t")[1]
    golds[1] = f"SELECT no_such_column FROM no_such_table\t{db_id}"
    preds = [g.split("\t")[0] for g in golds]
    result = run_evaluate(sample_dir, tmp_path, golds, preds)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'gold.sql'}:2: gold query fails on {db_id}.sqlite")
    assert result.stderr.strip().count("\n") == 0 and not (tmp_path / "report.json").exists()
    result = run_evaluate(sample_dir, tmp_path, golds, preds, "--skip-bad-gold")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 questions whose gold query fails" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["all"]["count"] == 1
    assert [s["where"] for s in report["skipped_bad_gold"]] == [f"{tmp_path / 'gold.sql'}:2"]


def test_evaluate_unknown_db_id_names_the_line(sample_dir, tmp_path):
    golds = sample_gold(sample_dir, 2)
    golds[1] = golds[1].split("\t")[0] + "\tno_such_db"
    result = run_evaluate(sample_dir, tmp_path, golds, [g.split("\t")[0] for g in golds])
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'gold.sql'}:2: ")
    assert "'no_such_db'" in result.stderr and result.stderr.strip().count("\n") == 0


def test_evaluate_malformed_tables_json_is_one_line(sample_dir, tmp_path):
    tables = json.loads((sample_dir / "tables.json").read_text())
    del tables[1]["column_names_original"]
    (tmp_path / "tables.json").write_text(json.dumps(tables))
    golds = sample_gold(sample_dir, 1)
    result = run_evaluate(sample_dir, tmp_path, golds, [golds[0].split("\t")[0]], "--table", str(tmp_path / "tables.json"))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'tables.json'}[1]: missing key 'column_names_original' (db_id {tables[1]['db_id']!r})"
    )


def test_evaluate_empty_prediction_lines_score_zero(sample_dir, tmp_path):
    golds = sample_gold(sample_dir, 3)
    preds = [golds[0].split("\t")[0], "", golds[2].split("\t")[0]]
    result = run_evaluate(sample_dir, tmp_path, golds, preds)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [e["exec"] for e in report["examples"]] == [1, 0, 1]
    assert report["examples"][1]["error"] == "parse/execution error: empty SQL"
