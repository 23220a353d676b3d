"""Test-suite accuracy: distilled suites (sqlora.testsuite.distill), TS in evaluate, the testsuite stage, the CLI."""

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sqlora.data.schema import read_sqlite_schema, spider_entry
from sqlora.errors import SqloraError
from sqlora.evaluate.execution import Gold, evaluate
from sqlora.testsuite.distill import SuiteSettings, build_suite, gold_literals
from tests.helpers import REPO

SCHEMA = """
CREATE TABLE team (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT);
CREATE TABLE player (id INTEGER PRIMARY KEY, name TEXT NOT NULL, age INTEGER, team_id INTEGER REFERENCES team(id));
"""
ROWS = """
INSERT INTO team VALUES (1, 'Ajax', 'Amsterdam'), (2, 'PSV', 'Eindhoven');
INSERT INTO player VALUES (1, 'Ann', 15, 1), (2, 'Bob', 25, 1), (3, 'Cid', 35, 2), (4, 'Dee', 45, 2);
"""
# gold, and a wrong prediction that the original data cannot tell from it (EX 1, TS 0)
FALSE_POSITIVES = [
    ("SELECT name FROM player WHERE age >= 25", "SELECT name FROM player WHERE age > 24"),  # right: integers
    ("SELECT name FROM player WHERE age >= 30", "SELECT name FROM player WHERE age > 30"),  # no 30 in the data
    ("SELECT count(*) FROM player WHERE team_id = 1", "SELECT count(*) FROM player WHERE team_id < 2"),  # no team 0 ...
    (
        "SELECT T1.name FROM player AS T1 JOIN team AS T2 ON T1.team_id = T2.id WHERE T2.city = 'Eindhoven'",
        "SELECT T1.name FROM player AS T1 JOIN team AS T2 ON T1.team_id = T2.id WHERE T2.name = 'PSV'",
    ),  # one team per city here
    ("SELECT name FROM player ORDER BY age DESC LIMIT 1", "SELECT name FROM player WHERE age = 45"),  # the oldest is 45 here
]


def make_db(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA + ROWS)
    conn.commit()
    conn.close()
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    db = make_db(root / "dbs" / "league" / "league.sqlite")
    before = digest(db)
    golds = [(gold, "league") for gold, _ in FALSE_POSITIVES]
    report = build_suite(golds, root / "dbs", root / "suite", SuiteSettings(seed=0, candidates=60), workers=2)
    assert digest(db) == before  # the source database is never written
    return root, report


def test_suite_keeps_the_original_and_fuzzed_instances(suite):
    root, report = suite
    files = sorted(p.name for p in (root / "suite/database/league").iterdir())
    assert files[0] == "league.sqlite" and digest(root / "suite/database/league/league.sqlite") == digest(root / "dbs/league/league.sqlite")
    (league,) = report.databases
    assert len(files) == 1 + league.kept and 1 <= league.kept <= league.tried <= 60
    assert league.neighbours > 20 and league.by_original + league.by_fuzzed + league.undistinguished == league.neighbours
    assert league.by_fuzzed > 0 and report.totals()["distinguished"] > 0.8
    saved = json.loads((root / "suite/suite.json").read_text())
    assert saved["totals"] == report.totals() and saved["databases"][0]["kept"] == league.kept


def test_test_suite_catches_what_execution_accuracy_misses(suite):
    root, _ = suite
    golds = [Gold(gold, "league", f"gold:{i}") for i, (gold, _) in enumerate(FALSE_POSITIVES, 1)]
    preds = [pred for _, pred in FALSE_POSITIVES]
    report = evaluate(golds, preds, root / "dbs", etype="exec", suite_dir=root / "suite/database", workers=2)
    ex = [e.exec for e in report.examples]
    ts = [e.ts for e in report.examples]
    assert ex == [1, 1, 1, 1, 1]
    assert ts[0] == 1 and ts[1:] == [0, 0, 0, 0]  # the equivalent rewrite stays right, the false positives do not
    assert all(e.ts_failed_on.startswith("league_") for e in report.examples[1:])
    assert report.summary["all"]["ts"] == pytest.approx(0.2)


def test_gold_scores_full_marks_and_ts_never_exceeds_ex(suite):
    root, _ = suite
    golds = [Gold(gold, "league", f"gold:{i}") for i, (gold, _) in enumerate(FALSE_POSITIVES, 1)]
    right = evaluate(golds, [g.sql for g in golds], root / "dbs", etype="exec", suite_dir=root / "suite/database", workers=1)
    assert right.summary["all"]["ts"] == 1.0 and right.summary["all"]["exec"] == 1.0
    preds = ["SELECT name FROM player", "SELECT nme FROM player", *[pred for _, pred in FALSE_POSITIVES[2:]]]
    mixed = evaluate(golds, preds, root / "dbs", etype="exec", suite_dir=root / "suite/database", workers=1)
    assert all(e.ts <= e.exec for e in mixed.examples)
    assert mixed.examples[1].ts == 0 and mixed.examples[1].ts_failed_on == "league.sqlite"  # wrong on the original already


def test_suites_are_reproducible_per_seed(suite, tmp_path):
    root, report = suite
    golds = [(gold, "league") for gold, _ in FALSE_POSITIVES]
    again = build_suite(golds, root / "dbs", tmp_path / "again", SuiteSettings(seed=0, candidates=60), workers=1)
    assert again.totals() | {"seconds": 0} == report.totals() | {"seconds": 0}
    for path in sorted((root / "suite/database/league").iterdir()):
        assert digest(tmp_path / "again/database/league" / path.name) == digest(path)


def test_a_suite_whose_gold_fails_is_an_error_naming_the_file(suite, tmp_path):
    root, _ = suite
    broken = tmp_path / "broken"
    shutil.copytree(root / "suite/database", broken)
    conn = sqlite3.connect(broken / "league/league_1.sqlite")
    conn.execute("DROP TABLE team")
    conn.commit()
    conn.close()
    gold = FALSE_POSITIVES[3][0]
    with pytest.raises(SqloraError, match=r"gold:1: gold query fails on test-suite database .*league_1\.sqlite"):
        evaluate([Gold(gold, "league", "gold:1")], [gold], root / "dbs", etype="exec", suite_dir=broken, workers=1)


def test_gold_literals_feed_the_fuzzer():
    assert gold_literals("SELECT * FROM t WHERE a >= 30 AND b = \"PSV\" AND c LIKE '%ams%' AND d < 2.5") == [30, "PSV", "%ams%", 2.5]


# --- the stages and the CLI -----------------------------------------------------------------------


@pytest.fixture()
def workdir(tmp_path) -> Path:
    make_db(tmp_path / "dbs" / "league" / "league.sqlite")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["eval"] |= {"test_suite": True, "suite_candidates": 30, "workers": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "predictions").mkdir()
    records = [{"db_id": "league", "instruction": "schema", "input": "q", "output": gold} for gold, _ in FALSE_POSITIVES]
    (tmp_path / "data/prepared/dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tables = tmp_path / "tables.json"  # as prepare writes it for a custom dataset: read from the SQLite file
    tables.write_text(json.dumps([spider_entry(read_sqlite_schema(tmp_path / "dbs/league/league.sqlite", "league"))]))
    (tmp_path / "data/prepared/meta.json").write_text(
        json.dumps({"dataset": "custom", "database_dir": str(tmp_path / "dbs"), "tables_json": str(tables)})
    )
    (tmp_path / "predictions/dev.sql").write_text("".join(pred + "\n" for _, pred in FALSE_POSITIVES))
    return tmp_path


def run(workdir: Path, stage: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / f"stages/{stage}.py")], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def test_the_stages_report_ts_beside_ex_on_a_users_own_database(workdir):
    assert "testsuite: 1 databases" in run(workdir, "testsuite").stdout
    assert json.loads((workdir / "metrics/testsuite.json").read_text())["enabled"] is True
    run(workdir, "evaluate")
    metrics = json.loads((workdir / "metrics/eval.json").read_text())
    assert metrics["ex"]["all"] == 1.0 and metrics["ts"]["all"] == pytest.approx(0.2) and "em" in metrics
    examples = json.loads((workdir / "reports/eval_examples.json").read_text())["examples"]
    assert [e["ts"] for e in examples] == [1, 0, 0, 0, 0] and examples[1]["ts_failed_on"].startswith("league_")
    assert {row["metric"] for row in json.loads((workdir / "reports/plots/hardness.json").read_text())} == {"EX", "EM", "TS"}


def test_the_stages_without_a_suite_report_ex_alone(workdir):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["eval"]["test_suite"] = False
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    run(workdir, "testsuite")
    assert sorted(p.name for p in (workdir / "data/testsuite").iterdir()) == ["suite.json"]
    run(workdir, "evaluate")
    assert "ts" not in json.loads((workdir / "metrics/eval.json").read_text())


def test_cli_builds_a_suite_and_scores_an_official_layout(tmp_path):
    make_db(tmp_path / "dbs" / "league" / "league.sqlite")
    (tmp_path / "gold.sql").write_text("".join(f"{gold}\tleague\n" for gold, _ in FALSE_POSITIVES))
    (tmp_path / "pred.sql").write_text("".join(f"{pred}\n" for _, pred in FALSE_POSITIVES))
    cli = [sys.executable, "-m", "sqlora.cli"]
    built = subprocess.run([*cli, "testsuite", "--gold", str(tmp_path / "gold.sql"), "--db", str(tmp_path / "dbs"),
                            "--out", str(tmp_path / "suite"), "--candidates", "40", "--workers", "1"], capture_output=True, text=True)  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout.splitlines()[-1])["databases"] == 1
    scored = subprocess.run([*cli, "evaluate", "--gold", str(tmp_path / "gold.sql"), "--pred", str(tmp_path / "pred.sql"), "--db",
                             str(tmp_path / "dbs"), "--etype", "exec", "--test-suite", str(tmp_path / "suite/database"),
                             "--workers", "1", "--no-gold-cache"], capture_output=True, text=True)  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    assert "TEST-SUITE ACCURACY" in scored.stdout and "EXECUTION ACCURACY" in scored.stdout


def test_test_suite_with_another_engine_is_refused(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["eval"] |= {"test_suite": True, "database": "duck/{db_id}.duckdb"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    from sqlora.config import load_params

    with pytest.raises(SqloraError, match="'eval.test_suite' scores the dataset's SQLite files"):
        load_params(tmp_path / "params.yaml")
