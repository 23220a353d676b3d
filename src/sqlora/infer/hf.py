"""transformers' batched ``generate()`` as an engine: beam search, and every model our engine cannot
run exactly. Batches are left-padded; each row ends at EOS, at ``max_new_tokens`` or, through
:class:`sqlora.infer.sql_text.SqlEnd`, once its statement is complete, as in our engine.

The decoding settings are set in full here, so a model's own ``generation_config`` (a
``repetition_penalty``, a ``top_k``) changes nothing: both engines decode the same way. Sampling draws
from torch's generator seeded per batch, so unlike our engine a question's draws depend on its batch.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch

from sqlora.infer.base import Batch, Engine, Row, share_time
from sqlora.infer.constrained import RowConstraint
from sqlora.infer.sql_text import SqlEnd, sql_complete


class TransformersEngine(Engine):
    name = "transformers"

    @property
    def sampling(self) -> bool:
        """Every row samples (its generate() samples all rows or none: greedy-first candidates are beams here)."""
        return self.plan.search == "sample" and not self.plan.transformers_beams

    def _config(self, samples: int):
        from transformers import GenerationConfig

        plan = self.plan
        decoding = {}
        if plan.transformers_beams:
            decoding = {"num_beams": plan.transformers_beams, "length_penalty": 1.0}
        elif self.sampling:
            # Constrained: the processor draws the nucleus over the allowed tokens itself (top_p 1 here).
            top_p = 1.0 if self.constraints else plan.top_p
            decoding = {"do_sample": True, "temperature": plan.temperature, "top_p": top_p, "top_k": 0}
        return GenerationConfig(
            max_new_tokens=plan.max_new_tokens,
            num_return_sequences=samples,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            pad_token_id=self.pad,
            eos_token_id=sorted(self.eos),
            use_cache=True,
            **({"do_sample": False, "num_beams": 1} | decoding),
        )

    def run(self, batches: list[Batch], encoded: list[list[int]], samples: int) -> Iterator[tuple[Batch, list[Row]]]:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        config = self._config(samples)
        for batch in batches:
            start = time.perf_counter()
            padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch.indexes]}, return_tensors="pt")
            width = padded["input_ids"].shape[1]
            if self.sampling:
                torch.manual_seed(self.seed * 1_000_003 + batch.indexes[0])
            processors = LogitsProcessorList()
            if self.constraints:
                names = [self.constraints[i] for i in batch.indexes]
                processors.append(SchemaConstraintProcessor(self, names, width))
            output = self.model.generate(
                input_ids=padded["input_ids"].to(self.dev),
                attention_mask=padded["attention_mask"].to(self.dev),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([SqlEnd(self.tokenizer, width)]),
                logits_processor=processors,
            )
            rows = [self._row(batch, batch.indexes[n // samples], n % samples, ids) for n, ids in enumerate(output[:, width:].tolist())]
            share_time(rows, time.perf_counter() - start)
            yield batch, rows

    def _row(self, batch: Batch, index: int, sample: int, ids: list[int]) -> Row:
        end = next((n for n, t in enumerate(ids) if t in self.eos or t == self.pad), len(ids))
        # SqlEnd stops a row as soon as its statement is complete: an EOS (or pad) after a complete
        # statement is the padding of a stopped row, not something the model wrote.
        if sql_complete(self.tokenizer.decode(ids[:end], skip_special_tokens=True)):
            return Row(index=index, sample=sample, batch=batch, tokens=ids[:end], stop="sql_end")
        if end < len(ids) and ids[end] in self.eos:
            return Row(index=index, sample=sample, batch=batch, tokens=ids[: end + 1], stop="eos")
        return Row(index=index, sample=sample, batch=batch, tokens=ids[:end])


class SchemaConstraintProcessor:
    """A logits processor for ``predict.constrained``: every row keeps only tokens its schema allows —
    greedy its best allowed token, beam search each beam's best 2 x num_beams (what beam search can
    pick from a beam), sampling the allowed nucleus of :meth:`TokenChecker.nucleus` (the engine runs
    top_p 1 then, so the nucleus is not cut twice). A row whose text already breaks the schema, or
    for which nothing is allowed, is left as it is. States are kept per generated prefix, so beams
    that trade places keep theirs."""

    def __init__(self, engine: TransformersEngine, names: list, prompt_length: int):
        self.engine, self.names, self.prompt_length = engine, names, prompt_length
        self.states: dict[tuple[int, ...], RowConstraint] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        engine, plan = self.engine, self.engine.plan
        per_prompt = input_ids.shape[0] // len(self.names)
        states: dict[tuple[int, ...], RowConstraint] = {}
        keep = torch.zeros_like(scores, dtype=torch.bool)
        for n, ids in enumerate(input_ids[:, self.prompt_length :].tolist()):
            names = self.names[n // per_prompt]
            if names is None:
                keep[n] = True
                continue
            key = tuple(ids)
            if key not in states:
                parent = self.states.get(key[:-1])
                constraint = RowConstraint(names) if parent is None else parent.copy()
                constraint.advance(engine.tokenizer.decode(ids, skip_special_tokens=True))
                states[key] = constraint
            state = states[key].state
            if state is None:
                keep[n] = True
                continue
            if engine.sampling:
                allowed, _ = engine.checker.nucleus(state, scores[n], plan.temperature, plan.top_p)
            else:
                allowed = engine.checker.first_allowed(state, scores[n], 2 * plan.transformers_beams or 1)
            if allowed:
                keep[n, allowed] = True
            else:
                keep[n] = True
        self.states = states
        return scores.masked_fill(~keep, float("-inf"))
