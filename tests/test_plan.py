"""The decoding plan: predict.* resolved once (sqlora.infer.plan), and nothing else interprets it."""

import ast

import pytest

from sqlora.config import PredictParams
from sqlora.infer.plan import DecodingPlan, plan_decoding
from tests.helpers import REPO


@pytest.mark.parametrize(
    "params, expected",
    [
        (PredictParams(), dict(search="greedy", candidates=1, choose="only", beams=0, runs_candidates=False, draws=[False])),
        (PredictParams(decoding="sample"), dict(search="sample", candidates=1, choose="only", draws=[True])),
        (PredictParams(decoding="beam", num_beams=3), dict(search="beam", candidates=1, beams=3, choose="only", transformers_beams=3)),
        (
            PredictParams(decoding="beam", num_beams=3, constrained=True),
            dict(search="beam", candidates=3, beams=3, choose="first_resolving", runs_candidates=False),
        ),
        (
            PredictParams(decoding="self_consistency", num_samples=4),
            dict(search="sample", candidates=4, choose="vote", runs_candidates=True, draws=[True] * 4, transformers_beams=0),
        ),
        (
            PredictParams(decoding="execution_guided", num_samples=4, require_rows=True),
            dict(
                search="sample",
                candidates=4,
                choose="first_running",
                runs_candidates=True,
                draws=[False, True, True, True],
                transformers_beams=4,
                require_rows=True,
            ),
        ),  # fmt: skip
    ],
    ids=lambda v: getattr(v, "decoding", ""),
)
def test_each_decoding_is_one_plan(params, expected):
    plan = plan_decoding(params)
    assert isinstance(plan, DecodingPlan) and plan.decoding == params.decoding
    for key, value in expected.items():
        got = [plan.draws(k) for k in range(len(value))] if key == "draws" else getattr(plan, key)
        assert got == value, key
    assert plan.questions_per_batch == max(1, params.batch_size // plan.candidates)


def test_only_the_plan_reads_predict_decoding():
    """No module but the plan (and the params loader that validates it) reads `.decoding`, `.num_beams` or
    `.num_samples` of the predict params: engines and the prediction loop get the plan."""
    allowed = {"src/sqlora/infer/plan.py", "src/sqlora/config.py"}
    found = []
    for path in sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "stages").glob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("decoding", "num_beams", "num_samples"):
                base = ast.unparse(node.value)
                if base.endswith(("params", "predict")) and base != "plan":
                    found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found
