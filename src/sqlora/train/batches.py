"""Training batches: records tokenized with the prompt masked out of the labels, padded by a collator that
also counts tokens, and the loss over the response tokens only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sqlora.data.prompt import encode_prompt, encode_response
from sqlora.data.records import Record

IGNORE_INDEX = -100  # label value the loss skips: prompt tokens and padding


@dataclass(frozen=True)
class TokenizedSet:
    features: list[dict]  # input_ids, attention_mask, labels
    too_long: int  # examples left out because prompt + SQL exceed max_length

    @property
    def tokens(self) -> int:
        return sum(len(f["input_ids"]) for f in self.features)


def tokenize_records(records: list[Record], tokenizer, max_length: int, chat_template: bool = False) -> TokenizedSet:
    """Prompt + SQL + EOS, with labels masked on the prompt so the loss is on the response only."""
    features, too_long = [], 0
    for record in records:
        prompt = encode_prompt(tokenizer, record.prompt, chat_template)
        response = encode_response(tokenizer, record.output)
        if len(prompt) + len(response) > max_length:
            too_long += 1  # never cut: a truncated SQL target would teach the model wrong SQL
            continue
        ids = prompt + response
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * len(prompt) + response})
    return TokenizedSet(features=features, too_long=too_long)


def predicted_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is a label in some row: the only logits the loss needs."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


class ResponseCollator:
    """Dynamic padding, plus ``logits_to_keep`` so the model projects onto the vocabulary only where
    the loss looks: on the SQL, not on the (much longer) schema prompt. Saves most of the LM-head
    compute and nearly all of the logits memory."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        self.pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
        self.examples = 0  # examples batched so far (this process)
        self.real_tokens = 0  # their tokens
        self.row_tokens = 0  # the rows' tokens: the same, one example per row
        self.padded_tokens = 0  # the batches' size with padding

    def __call__(self, features: list[dict]) -> dict:
        batch = self.pad(features)
        batch["logits_to_keep"] = predicted_positions(batch["labels"])
        self.examples += len(features)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.row_tokens = self.real_tokens
        self.padded_tokens += batch["attention_mask"].numel()
        return batch


def response_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Next-token cross-entropy on the kept positions, summed and divided by the number of label tokens
    (over the whole accumulated batch when the Trainer passes it), as transformers' own causal-LM loss."""
    targets = labels[:, predicted_positions(labels) + 1]
    logits = outputs.logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    return loss / count
