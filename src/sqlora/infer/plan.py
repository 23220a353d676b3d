"""The decoding plan: ``predict.*`` resolved once into what generation does, handed to the engines and the
prediction loop, so that no other code interprets ``predict.decoding`` (as LLaMA-Factory's chat engines get
one typed contract chosen by one string)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlora.config import PredictParams

SEARCHES = ("greedy", "sample", "beam")  # how each candidate's tokens are chosen
CHOICES = ("only", "first_resolving", "vote", "first_running")  # how a question's answer is chosen among them


@dataclass(frozen=True)
class DecodingPlan:
    decoding: str  # predict.decoding, recorded with every generation
    search: str  # greedy | sample | beam
    candidates: int  # sequences generated per question
    # only: the one candidate; first_resolving: the first beam whose names resolve (constrained beam search);
    # vote: the result most candidates agree on (self_consistency); first_running: the first that runs (execution_guided)
    choose: str = "only"
    beams: int = 0  # beam search width
    greedy_first: bool = False  # sample: the first candidate is the greedy answer, the others are drawn
    temperature: float = 0.7
    top_p: float = 0.95
    constrained: bool = False  # only identifiers the question's schema has
    require_rows: bool = False  # first_running: the first that runs and returns rows
    timeout_s: float = 10.0  # vote, first_running: each candidate's query time limit
    max_new_tokens: int = 128
    batch_size: int = 64  # sequences generated together

    @property
    def questions_per_batch(self) -> int:
        return max(1, self.batch_size // self.candidates)

    @property
    def runs_candidates(self) -> bool:
        """Whether choosing runs the candidates on the question's database."""
        return self.choose in ("vote", "first_running")

    def draws(self, candidate: int) -> bool:
        """Whether candidate number ``candidate`` of a question is sampled (else greedy)."""
        return self.search == "sample" and not (self.greedy_first and candidate == 0)

    @property
    def transformers_beams(self) -> int:
        """The beams transformers' generate() searches with: beam search's, and for greedy-first candidates
        (which its generate() cannot mix with samples) that many beams, best first; 0: no beam search."""
        return self.beams if self.search == "beam" else self.candidates if self.greedy_first else 0


def plan_decoding(params: PredictParams) -> DecodingPlan:
    """The plan for ``params`` (predict.*, validated by the params loader)."""
    common = dict(
        decoding=params.decoding,
        temperature=params.temperature,
        top_p=params.top_p,
        constrained=params.constrained,
        require_rows=params.require_rows,
        timeout_s=params.timeout_s,
        max_new_tokens=params.max_new_tokens,
        batch_size=params.batch_size,
    )
    if params.decoding == "greedy":
        return DecodingPlan(search="greedy", candidates=1, **common)
    if params.decoding == "sample":
        return DecodingPlan(search="sample", candidates=1, **common)
    if params.decoding == "beam":
        if params.constrained:  # every beam comes back, the first whose aliases resolve is kept
            return DecodingPlan(search="beam", beams=params.num_beams, candidates=params.num_beams, choose="first_resolving", **common)
        return DecodingPlan(search="beam", beams=params.num_beams, candidates=1, **common)
    if params.decoding == "self_consistency":
        return DecodingPlan(search="sample", candidates=params.num_samples, choose="vote", **common)
    if params.decoding == "execution_guided":
        return DecodingPlan(search="sample", greedy_first=True, candidates=params.num_samples, choose="first_running", **common)
    raise ValueError(f"predict.decoding {params.decoding!r}")
