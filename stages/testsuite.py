"""The dev databases' test suite (eval.test_suite) → data/testsuite/ (database/<db_id>/*.sqlite, laid out as
the official suites, and suite.json) and metrics/testsuite.json. Off, it writes an empty suite: the evaluate
stage then scores EX alone.
"""

from sqlora.config import load_params
from sqlora.data.records import load_records, read_meta
from sqlora.errors import exit_on_error
from sqlora.io import atomic_path, write_json
from sqlora.testsuite.distill import SuiteSettings, build_suite

OUT = "data/testsuite"


@exit_on_error
def main() -> None:
    params = load_params()
    if not params.eval.test_suite:
        with atomic_path(OUT) as tmp:
            tmp.mkdir()
            write_json(tmp / "suite.json", {"enabled": False})
        write_json("metrics/testsuite.json", {"enabled": False})
        return
    records = load_records("data/prepared/dev.jsonl")
    meta = read_meta("data/prepared/meta.json")
    settings = SuiteSettings(seed=params.seed, candidates=params.eval.suite_candidates, bird=meta["dataset"] == "bird")
    report = build_suite([(r.output, r.db_id) for r in records], meta["database_dir"], OUT, settings, workers=params.eval.workers)
    totals = report.totals()
    write_json("metrics/testsuite.json", {"enabled": True, **totals, "missing_databases": len(report.missing)})
    print(f"testsuite: {totals['databases']} databases + {totals['kept']} fuzzed instances; {totals['neighbours']} near misses "
          f"of the gold queries, {totals['distinguished']:.1%} told apart ({totals['undistinguished']} not); {totals['seconds']} s of work")  # fmt: skip


if __name__ == "__main__":
    main()
