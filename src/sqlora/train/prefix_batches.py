"""Supervised fine-tuning in shared-prefix rows (:mod:`sqlora.train.shared_prefix`): which questions share
a row, and which rows share a step.

- **groups**: questions whose prompts share a long prefix (one database's schema), as prediction's engine
  groups them (:func:`sqlora.data.prompt.prefix_groups`);
- **rows**: each epoch, every group's questions are shuffled and cut into rows of at most ``per_row``;
  a row's prefix is the longest common prefix of its questions' encoded prompts (token level, so chat
  templates count as they are);
- **steps**: ``batch_size`` still counts questions, so every step but an epoch's last holds exactly
  that many, as with separate rows. Rows are laid out in megabatches of similar lengths (little
  padding), a step's rows come from different groups wherever the remaining rows allow, and a row
  is split where a step needs only part of it. The order depends on the seed and the epoch only, so
  a resumed run replays it, and every process of a distributed run draws the same steps.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import groupby

import torch

from sqlora.data.prompt import prefix_groups, shared_prefix
from sqlora.model.attention import routing_problem
from sqlora.train.batches import IGNORE_INDEX, ResponseCollator
from sqlora.train.shared_prefix import Continuation, collate_rows, pack_row, packed_attention_for, shared_prefix_problem

MEGABATCH_STEPS = 50  # steps whose rows are sorted by length together (as transformers' LengthGroupedSampler)


def prompt_length(feature: dict) -> int:
    """The prompt's tokens: those before the first label (labels are the response, EOS included)."""
    return next(i for i, label in enumerate(feature["labels"]) if label != IGNORE_INDEX)


def question_groups(features: list[dict]) -> list[list[int]]:
    """Indexes of the features whose prompts share a prefix."""
    return prefix_groups([f["input_ids"][: prompt_length(f)] for f in features])


class SharedPrefixSampler(torch.utils.data.Sampler):
    """Feature indexes in training order: every ``batch_size`` consecutive ones are one step, and within a
    step the questions of one row are consecutive (the collator reads rows back by ``group``)."""

    def __init__(self, features: list[dict], groups: list[list[int]], batch_size: int, per_row: int, seed: int):
        self.batch_size, self.per_row, self.seed, self.epoch = batch_size, min(per_row, batch_size), seed, 0
        self.groups = groups
        self.group_of = {i: g for g, members in enumerate(groups) for i in members}
        self.lengths = [len(f["input_ids"]) for f in features]
        self.prefix = [shared_prefix([features[i]["input_ids"][: prompt_length(features[i])] for i in members]) for members in groups]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.group_of)

    def __iter__(self):
        for step in self.steps(self.epoch):
            for row in step:
                yield from row

    def row_length(self, row: list[int]) -> int:
        shared = self.prefix[self.group_of[row[0]]]
        return shared + sum(self.lengths[i] - shared for i in row)

    def steps(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's steps, each a list of rows, each a list of feature indexes."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        rows = []
        for members in self.groups:
            members = members[:]
            rng.shuffle(members)
            rows += [members[i : i + self.per_row] for i in range(0, len(members), self.per_row)]
        rng.shuffle(rows)
        per_megabatch = max(1, MEGABATCH_STEPS * self.batch_size // self.per_row)
        ordered = []
        for start in range(0, len(rows), per_megabatch):
            ordered += sorted(rows[start : start + per_megabatch], key=self.row_length, reverse=True)
        steps = self._fill(ordered)
        # Steps of similar lengths in random order; a last step with fewer questions stays last (the data
        # loader cuts the stream of indexes every batch_size).
        whole = len(steps) - (sum(len(row) for row in steps[-1]) < self.batch_size if steps else 0)
        for start in range(0, whole, MEGABATCH_STEPS):
            window = steps[start : min(start + MEGABATCH_STEPS, whole)]
            rng.shuffle(window)
            steps[start : start + len(window)] = window
        return steps

    def _fill(self, pending: list[list[int]]) -> list[list[list[int]]]:
        """Rows (in order) into steps of exactly ``batch_size`` questions (the last: what is left). A step
        takes the next row, then the next rows of other groups that fit; if none fits, part of one."""
        steps = []
        while pending:
            step = [pending.pop(0)]
            need = self.batch_size - len(step[0])
            taken = {self.group_of[step[0][0]]}
            index = 0
            while need and index < len(pending):
                row = pending[index]
                if self.group_of[row[0]] not in taken and len(row) <= need:
                    step.append(pending.pop(index))
                    need -= len(row)
                    taken.add(self.group_of[row[0]])
                else:
                    index += 1
            while need and pending:  # no whole row fits: part of the next one, of another group where there is one
                index = next((k for k, row in enumerate(pending) if self.group_of[row[0]] not in taken), 0)
                row = pending[index]
                step.append(row[:need])
                taken.add(self.group_of[row[0]])
                if len(row) > need:
                    pending[index] = row[need:]
                else:
                    pending.pop(index)
                need -= len(step[-1])
            steps.append(step)
        return steps


class SharedPrefixCollator:
    """A step's features as shared-prefix rows: consecutive features of one group (their ``group`` key) form
    a row of at most ``per_row``. Counts, for the metrics, the examples, the tokens they hold as separate
    rows (``real_tokens``), the rows' tokens (``row_tokens``) and the batches' (``padded_tokens``)."""

    def __init__(self, tokenizer, per_row: int):
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.per_row = per_row
        self.examples = self.real_tokens = self.row_tokens = self.padded_tokens = 0

    def __call__(self, features: list[dict]) -> dict:
        rows = []
        for _, run in groupby(features, key=lambda f: f["group"]):
            run = list(run)
            for start in range(0, len(run), self.per_row):
                rows.append(self.row(run[start : start + self.per_row]))
        batch = collate_rows(rows, self.pad)
        self.examples += len(features)
        self.real_tokens += sum(row["real_tokens"] for row in rows)
        self.row_tokens += sum(len(row["input_ids"]) for row in rows)
        self.padded_tokens += batch["input_ids"].numel()
        return batch

    @staticmethod
    def row(features: list[dict]) -> dict:
        prefix = shared_prefix([f["input_ids"][: prompt_length(f)] for f in features])
        ids = features[0]["input_ids"][:prefix]
        return pack_row(ids, [Continuation(f["input_ids"][prefix:], f["labels"][prefix:]) for f in features])


# --- the choice -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batching:
    """How a run batches its questions, decided once before training: shared-prefix rows of up to
    ``per_row`` questions (with the sampler that lays them out), or separate rows (``per_row`` 1)."""

    per_row: int
    sampler: SharedPrefixSampler | None = None
    reason: str = ""  # why rows hold fewer questions than train.shared_prefix asks, if they do

    def collator(self, tokenizer):
        return SharedPrefixCollator(tokenizer, self.per_row) if self.sampler else ResponseCollator(tokenizer)

    def dataset(self, features: list[dict]) -> list[dict]:
        if self.sampler is None:
            return features
        return [{**f, "group": self.sampler.group_of[i]} for i, f in enumerate(features)]

    def attention(self, model):
        """The attention the model trains with: packed for shared-prefix rows, its own otherwise."""
        return packed_attention_for(model) if self.sampler else nullcontext()

    def describe(self, asked: int) -> str:
        """The train log's line on how questions are batched (``asked``: train.shared_prefix)."""
        if self.sampler is not None:
            because = f" ({self.reason})" if self.reason else ""
            return (
                f"train: shared-prefix rows of up to {self.per_row} questions{because}, {len(self.sampler.groups)} distinct prompt prefixes"
            )
        if asked > 1:
            return f"train: separate rows, not shared-prefix ones: {self.reason}"
        return "train: separate rows (train.shared_prefix 1)"


def choose_batching(
    model,
    features: list[dict],
    asked: int,
    batch_size: int,
    seed: int,
    probe: bool = True,
    data_parallel: bool = False,
) -> Batching:
    """Shared-prefix rows of ``asked`` questions (at most ``batch_size``: a step holds that many) where
    they are exact for ``model`` (:func:`sqlora.train.shared_prefix.shared_prefix_problem`; ``probe``
    False skips the probe, e.g. where weights are sharded across processes) and some questions share a
    prefix; separate rows otherwise, with the reason. ``data_parallel``: the Trainer would split each
    batch across several GPUs of one process (torch's DataParallel), cutting rows from their layout."""
    if asked <= 1:
        return Batching(1)
    if data_parallel:
        return Batching(
            1,
            reason="several GPUs in one process (DataParallel) split a batch's rows from their layout; "
            "run one process per GPU (train.launch: accelerate launch or torchrun)",
        )
    groups = question_groups(features)
    if max(len(g) for g in groups) < 2:
        return Batching(1, reason="no two questions share a prompt prefix")
    longest = max(len(f["input_ids"]) for f in features)
    problem = shared_prefix_problem(model, longest) if probe else routing_problem(model)
    if problem is not None:
        return Batching(1, reason=problem)
    per_row = min(asked, batch_size)
    reason = f"a step holds train.batch_size {batch_size} questions" if per_row < asked else ""
    return Batching(per_row, SharedPrefixSampler(features, groups, batch_size, per_row, seed), reason)
