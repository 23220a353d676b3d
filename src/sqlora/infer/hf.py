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

from sqlora.infer.engine import Batch, Engine, Row, share_time
from sqlora.infer.sql_text import SqlEnd, sql_complete


class TransformersEngine(Engine):
    name = "transformers"

    def _config(self, samples: int):
        from transformers import GenerationConfig

        params = self.params
        decoding = {"num_beams": params.num_beams, "length_penalty": 1.0} if params.decoding == "beam" else {}
        if self.sampling:
            decoding = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens, num_return_sequences=samples, repetition_penalty=1.0,
            no_repeat_ngram_size=0, pad_token_id=self.pad, eos_token_id=sorted(self.eos), use_cache=True,
            **({"do_sample": False, "num_beams": 1} | decoding),
        )  # fmt: skip

    def run(self, batches: list[Batch], encoded: list[list[int]], samples: int) -> Iterator[tuple[Batch, list[Row]]]:
        from transformers import StoppingCriteriaList

        config = self._config(samples)
        for batch in batches:
            start = time.perf_counter()
            padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch.indexes]}, return_tensors="pt")
            width = padded["input_ids"].shape[1]
            if self.sampling:
                torch.manual_seed(self.seed * 1_000_003 + batch.indexes[0])
            output = self.model.generate(
                input_ids=padded["input_ids"].to(self.dev), attention_mask=padded["attention_mask"].to(self.dev),
                generation_config=config, stopping_criteria=StoppingCriteriaList([SqlEnd(self.tokenizer, width)]),
            )  # fmt: skip
            rows = [
                self._row(batch, batch.indexes[n // samples], n % samples, ids)
                for n, ids in enumerate(output[:, width:].tolist())
            ]
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
