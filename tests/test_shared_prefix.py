"""Shared-prefix training rows (train.shared_prefix): the row layout and its mask, exactness against separate
rows (LoRA, QLoRA, full fine-tuning, gradient checkpointing), the steps the sampler lays out, the fallback
to separate rows, and train() with them. The architecture matrix is in test_architectures.py."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from sqlora.config import LoraParams, TrainParams
from sqlora.data.records import Record
from sqlora.model.loader import load_base_model, load_tokenizer
from sqlora.train.batches import IGNORE_INDEX, ResponseCollator, tokenize_records
from sqlora.train.prefix_batches import SharedPrefixCollator, SharedPrefixSampler, choose_batching, question_groups
from sqlora.train.shared_prefix import (
    Continuation,
    collate_rows,
    losses_and_grads,
    pack_row,
    packed_attention_for,
    packed_mask,
    shared_prefix_problem,
)  # fmt: skip
from sqlora.train.trainer import add_lora, train

IGN = IGNORE_INDEX


def test_a_row_holds_the_prefix_once_and_each_continuation_after_it():
    row = pack_row([1, 2, 3, 4], [Continuation([5, 6], [IGN, 6]), Continuation([7], [7])])
    # The prefix's last token starts every continuation: its logit predicts the continuation's first token.
    assert row["input_ids"] == [1, 2, 3, 4, 5, 6, 4, 7]
    assert row["position_ids"] == [0, 1, 2, 3, 4, 5, 3, 4]  # each continuation as if alone
    assert row["segments"] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert row["labels"] == [IGN, IGN, IGN, IGN, IGN, 6, IGN, 7]
    assert row["examples"] == 2 and row["real_tokens"] == (4 + 2) + (4 + 1)
    alone = pack_row([], [Continuation([5, 6], [IGN, 6]), Continuation([7, 8], [IGN, 8])])
    assert alone["position_ids"] == [0, 1, 0, 1] and alone["segments"] == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="continuation 2: empty"):
        pack_row([1], [Continuation([5], [5]), Continuation([], [])])
    with pytest.raises(ValueError, match="continuation 1: .*labels not one per token"):
        pack_row([1], [Continuation([5, 6], [5])])


def test_rows_are_padded_on_the_right_and_logits_kept_where_labels_follow():
    batch = collate_rows([pack_row([1, 2], [Continuation([3], [3])]), pack_row([1, 2, 3], [Continuation([4, 5], [IGN, 5])] * 2)], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 3, 4, 5]]
    assert batch["labels"].tolist()[0] == [IGN, IGN, 3, IGN, IGN, IGN, IGN, IGN]
    assert batch["position_ids"].tolist()[1] == [0, 1, 2, 3, 4, 2, 3, 4]
    assert torch.equal(batch["sqlora_positions"], batch["position_ids"])
    # Row 0 predicts 3 from position 1; row 1 predicts 5 from positions 3 and 6.
    assert batch["logits_to_keep"].tolist() == [1, 3, 6]
    assert not batch["sqlora_mask"][0, 0, :3, 3:].any()  # row 0's padding is no real token's key


def test_each_token_sees_the_prefix_and_its_own_continuation_only():
    seen = packed_mask(torch.tensor([[0, 0, 1, 1, 2, 2, -1]]))[0, 0].int().tolist()
    assert seen == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # the second continuation: the prefix, not the first continuation
        [1, 1, 0, 0, 1, 1, 0],
        [1, 1, 0, 0, 0, 0, 1],  # padding: never seen by a real token, sees itself (finite outputs)
    ]


@pytest.fixture(scope="module")
def spider_like(sample_dir, tiny_model_dir):
    """Tokenized sample questions, four of each of three databases, grouped by their prompt prefix."""
    from sqlora.config import DataParams, PromptParams
    from sqlora.data.prepare import prepare_split

    _, fitted, _ = prepare_split("train", DataParams(dataset="sample", source=str(sample_dir)), PromptParams())
    tokenizer = load_tokenizer(tiny_model_dir)
    features = tokenize_records(fitted.records[:120], tokenizer, max_length=512).features
    groups = [g for g in question_groups(features) if len(g) >= 4][:3]
    assert len(groups) == 3
    return tokenizer, [[{**features[i], "group": g} for i in members[:4]] for g, members in enumerate(groups)]


def model_for(method: str, tiny_model_dir, checkpointing: bool = False):
    torch.manual_seed(0)
    model = load_base_model(tiny_model_dir, method, torch.float32)
    if method != "full":
        model = add_lora(model, LoraParams(r=4, alpha=8), method)
        for name, p in model.named_parameters():  # LoRA's B starts at zero: make the adapter matter
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # checkpointing acts in training mode only (no dropout: lora.dropout 0)
    else:
        model.eval()
    return model


def compare(model, tokenizer, rows_of_features) -> tuple[float, float]:
    """Relative differences of the per-token losses and of the gradients: shared-prefix rows against the
    same questions as separate rows."""
    trained = [p for p in model.parameters() if p.requires_grad]
    collator = SharedPrefixCollator(tokenizer, per_row=8)
    packed = collator([f for row in rows_of_features for f in row])
    assert packed["input_ids"].shape[0] == len(rows_of_features)  # one row per group
    with packed_attention_for(model):
        losses, grads = losses_and_grads(model, packed, trained)
    own = ResponseCollator(tokenizer)([{k: v for k, v in f.items() if k != "group"} for row in rows_of_features for f in row])
    own_losses, own_grads = losses_and_grads(model, own, trained)
    for p in trained:
        p.grad = None
    assert collator.padded_tokens < own["input_ids"].numel()  # fewer tokens computed
    return float((losses - own_losses).norm() / own_losses.norm()), float((grads - own_grads).norm() / own_grads.norm())


@pytest.mark.slow  # models: loaded, probed or trained
@pytest.mark.parametrize("method,checkpointing", [("lora", False), ("lora", True), ("full", False), ("qlora", False)])
def test_shared_prefix_rows_give_the_loss_and_gradients_of_separate_rows(spider_like, tiny_model_dir, method, checkpointing):
    if method == "qlora":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    tokenizer, rows = spider_like
    model = model_for(method, tiny_model_dir, checkpointing)
    assert shared_prefix_problem(model, longest=512) is None
    loss_error, grad_error = compare(model, tokenizer, rows)
    assert loss_error < 1e-5 and grad_error < 1e-4, (loss_error, grad_error)


@pytest.mark.slow  # models: loaded, probed or trained
def test_a_model_that_ignores_the_mask_is_caught_and_trains_on_separate_rows(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Stand-in for an architecture or attention that ignores the custom mask: continuations that see
    each other (one dense causal pass over the packed row). The probe's losses differ, so train()
    falls back to separate rows and says why."""
    import sqlora.train.shared_prefix as shared

    def dense(module, query, key, value, attention_mask, *, original, sqlora_mask=None, sqlora_positions=None, sqlora_seen=None, **kwargs):
        if sqlora_seen is not None:
            sqlora_seen[module.layer_idx] = kwargs.get("sliding_window")
        return shared.attention_function(module, original)(module, query, key, value, None, **kwargs)

    monkeypatch.setattr(shared, "packed_attention", dense)
    model = model_for("lora", tiny_model_dir)
    problem = shared_prefix_problem(model)
    assert problem is not None and "differ from separate rows'" in problem, problem
    metrics = train(
        method="lora", base_dir=tiny_model_dir, records=RECORDS, out_dir=tmp_path / "ft", lora=LoraParams(r=4, alpha=8),
        params=FAST, seed=0, metrics_path=tmp_path / "train.json", live_dir=tmp_path / "live",
    )  # fmt: skip
    assert metrics["shared_prefix"] == 1 and "differ from separate rows'" in metrics["shared_prefix_reason"]
    assert (
        "train: separate rows, not shared-prefix ones: LlamaForCausalLM: the shared-prefix row's losses differ" in capsys.readouterr().out
    )


# --- the steps --------------------------------------------------------------------------------------


def fake_features(sizes: list[int], seed: int = 0) -> tuple[list[dict], list[list[int]]]:
    """Groups of questions of the given sizes: one prompt prefix per group, lengths varying by group."""
    rng = random.Random(seed)
    features, groups = [], []
    for g, size in enumerate(sizes):
        base = [1000 + g] * (50 + 10 * g)
        groups.append([])
        for _ in range(size):
            prompt = base + [rng.randrange(10, 99) for _ in range(rng.randrange(5, 15))]
            groups[-1].append(len(features))
            features.append({"input_ids": prompt + [7, 2], "labels": [IGN] * len(prompt) + [7, 2]})
    return features, groups


def test_steps_hold_batch_size_questions_in_rows_of_one_group():
    features, groups = fake_features([13, 3, 40, 7, 1, 22, 9, 16, 5, 2])
    assert sorted(map(sorted, question_groups(features))) == sorted(map(sorted, groups))
    sampler = SharedPrefixSampler(features, groups, batch_size=8, per_row=8, seed=0)
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(features)))  # every question once an epoch
        steps = sampler.steps(epoch)
        sizes = [sum(len(row) for row in step) for step in steps]
        assert all(n == 8 for n in sizes[:-1]) and 0 < sizes[-1] <= 8  # as many questions per step as separate rows
        assert len(steps) == -(-len(features) // 8)
        for step in steps:
            assert all(len({group_of[i] for i in row}) == 1 and len(row) <= 8 for row in step)
        # A step's rows come from different groups (prefixes) wherever the rows left allow it.
        mixed = [step for step in steps if len({group_of[row[0]] for row in step}) < len(step)]
        assert len(mixed) <= 1, mixed
        assert [i for step in steps for row in step for i in row] == order  # the stream is the steps, in order
    assert sampler.steps(1) == sampler.steps(1) and sampler.steps(0) != sampler.steps(1)  # seeded, reshuffled each epoch
    assert SharedPrefixSampler(features, groups, 8, 8, seed=1).steps(0) != sampler.steps(0)


def test_rows_of_similar_length_share_a_step():
    features, groups = fake_features([3, 5, 2, 6, 3, 7, 1, 4, 5, 3, 2, 6] * 4, seed=1)
    sampler = SharedPrefixSampler(features, groups, batch_size=8, per_row=4, seed=0)

    def padding(steps) -> float:
        padded = sum(len(step) * max(sampler.row_length(r) for r in step) for step in steps)
        return 1 - sum(sampler.row_length(r) for step in steps for r in step) / padded

    ours = padding(sampler.steps(0))
    rows = [row for step in sampler.steps(0) for row in step]
    random.Random(0).shuffle(rows)
    shuffled = sampler._fill(rows)
    assert ours < padding(shuffled) / 2, (ours, padding(shuffled))


def test_rows_never_hold_more_questions_than_a_step():
    features, groups = fake_features([20, 11])
    sampler = SharedPrefixSampler(features, groups, batch_size=4, per_row=16, seed=0)
    assert sampler.per_row == 4 and all(len(row) <= 4 for step in sampler.steps(0) for row in step)
    collated = SharedPrefixCollator(load_tokenizer_stub(), per_row=4)([{**features[i], "group": 0} for i in groups[0][:6]])
    assert collated["input_ids"].shape[0] == 2  # six questions of one group in a step: rows of 4 and 2


def load_tokenizer_stub():
    class Stub:
        pad_token_id, eos_token_id = 0, 2

    return Stub()


@pytest.mark.slow  # models: loaded, probed or trained
def test_batching_is_decided_once_with_its_reason(tiny_model_dir):
    features, groups = fake_features([9, 9])
    model = model_for("lora", tiny_model_dir)
    assert choose_batching(model, features, asked=1, batch_size=8, seed=0).per_row == 1
    shared = choose_batching(model, features, asked=8, batch_size=8, seed=0)
    assert shared.per_row == 8 and shared.sampler is not None and not shared.reason
    capped = choose_batching(model, features, asked=16, batch_size=8, seed=0)
    assert capped.per_row == 8 and capped.reason == "a step holds train.batch_size 8 questions"
    lonely, _ = fake_features([1, 1, 1])
    assert choose_batching(model, lonely, asked=8, batch_size=8, seed=0).reason == "no two questions share a prompt prefix"
    split = choose_batching(model, features, asked=8, batch_size=8, seed=0, data_parallel=True)
    assert split.per_row == 1 and split.reason.startswith("several GPUs in one process (DataParallel)")


# --- train() ----------------------------------------------------------------------------------------

# Two databases: their schemas (most of each prompt) differ, so their questions form two groups.
SCHEMAS = [" ".join(f"table_{name}_{k} has columns id, name, value_{k}." for k in range(6)) for name in ("red", "blue")]
RECORDS = [
    Record(db_id=f"d{i % 2}", instruction=f"d{i % 2} contains tables such as: {SCHEMAS[i % 2]}",
           input=f"How many rows in table number {i} are there?", output=f"SELECT count(*) FROM t{i}")
    for i in range(16)
]  # fmt: skip
FAST = TrainParams(epochs=1, batch_size=4, learning_rate=1e-3, logging_steps=1, max_length=256)


@pytest.mark.slow  # models: loaded, probed or trained
def test_train_with_shared_prefixes_records_what_it_computed(tiny_model_dir, tmp_path, capsys):
    common = dict(
        method="lora", base_dir=tiny_model_dir, records=RECORDS, lora=LoraParams(r=4, alpha=8), seed=0, live_dir=tmp_path / "live"
    )
    shared = train(**common, params=FAST, out_dir=tmp_path / "shared", metrics_path=tmp_path / "shared.json")
    assert (
        "train: shared-prefix rows of up to 4 questions (a step holds train.batch_size 4 questions), 2 distinct prompt prefixes"
        in capsys.readouterr().out
    )
    separate = train(
        **common, params=TrainParams(**{**FAST.__dict__, "shared_prefix": 1}), out_dir=tmp_path / "sep", metrics_path=tmp_path / "sep.json"
    )
    assert "train: separate rows (train.shared_prefix 1)" in capsys.readouterr().out
    assert json.loads((tmp_path / "shared.json").read_text()) == shared
    assert (
        shared["shared_prefix"] == 4
        and separate["shared_prefix"] == 1
        and shared["shared_prefix_reason"] == "a step holds train.batch_size 4 questions"
    )
    assert shared["steps"] == separate["steps"] == 4 and shared["train_examples"] == 16
    # The same questions: the same real tokens; far fewer computed with the prefix read once per row.
    assert shared["tokens"] == separate["tokens"]
    assert shared["tokens_computed"] < separate["tokens"] * 0.6 <= separate["tokens_computed"]
    assert shared["questions_per_s"] > 0 and 0 <= shared["padding_fraction"] < 1
    assert abs(shared["final_loss"] - separate["final_loss"]) < 0.5 * separate["final_loss"]


@pytest.mark.slow  # models: loaded, probed or trained
def test_each_step_holds_batch_size_questions_whatever_k(tiny_model_dir, tmp_path, monkeypatch):
    """The loss is normalised over a step's label tokens as with separate rows, and a step holds
    train.batch_size questions: what the collator saw, step by step."""
    import sqlora.train.prefix_batches as batches

    seen = []
    call = batches.SharedPrefixCollator.__call__
    monkeypatch.setattr(
        batches.SharedPrefixCollator,
        "__call__",
        lambda self, features: (seen.append([f["group"] for f in features]), call(self, features))[1],
    )
    params = TrainParams(**{**FAST.__dict__, "epochs": 2, "shared_prefix": 2})
    metrics = train(method="lora", base_dir=tiny_model_dir, records=RECORDS, out_dir=tmp_path / "ft", lora=LoraParams(r=4, alpha=8),
                    params=params, seed=0, metrics_path=tmp_path / "m.json", live_dir=tmp_path / "live")  # fmt: skip
    assert metrics["steps"] == 8 and [len(s) for s in seen] == [4] * 8
    assert all(Counter(step) == Counter({step[0]: 2, step[2]: 2}) for step in seen)  # two rows of two, two groups


@pytest.mark.slow  # models: loaded, probed or trained
@pytest.mark.parametrize("method", ["qlora", "full"])
def test_train_shares_prefixes_with_every_method_and_checkpointing(tiny_model_dir, tmp_path, method):
    """The stage itself, QLoRA and full fine-tuning with activation checkpointing: shared-prefix rows run
    through the Trainer, and the loss falls as with separate rows."""
    if method == "qlora":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    params = TrainParams(**{**FAST.__dict__, "gradient_checkpointing": True, "epochs": 2})
    metrics = train(method=method, base_dir=tiny_model_dir, records=RECORDS, out_dir=tmp_path / "ft", lora=LoraParams(r=4, alpha=8),
                    params=params, seed=0, metrics_path=tmp_path / "m.json", live_dir=tmp_path / "live")  # fmt: skip
    assert metrics["shared_prefix"] == 4 and metrics["tokens_computed"] < metrics["tokens"] and metrics["steps"] == 8
    assert metrics["final_loss"] < metrics["train_loss"] or metrics["min_loss"] < metrics["train_loss"]
