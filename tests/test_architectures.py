"""The architecture matrix: tiny random models of twelve architectures, each LoRA-trained for a step by
the train stage's code (in shared-prefix rows, whose loss and gradients must equal separate rows'),
then predicted by the predict stage's code. Greedy and beam must write exactly
what the same model's own generate() writes one prompt at a time, in batches of 1, 4, 8 and 64, on
prompts longer than the sliding windows; sampling must draw from the model's own distribution.

Floating-point near-ties are guarded: where a row differs, it counts as a difference only if the
reference's own top-1/top-2 logit gap at the first differing step is clearly above numeric noise;
rows skipped as ties are counted, and only a few may be, so ties can neither hide nor fake a difference.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import StoppingCriteriaList

from sqlora.config import LoraParams, PredictParams, TrainParams
from sqlora.data.prompt import encode_prompt
from sqlora.infer.engine import generate, select_engine
from sqlora.infer.loading import load_for_inference
from sqlora.infer.plan import plan_decoding
from sqlora.infer.sql_text import SqlEnd
from sqlora.model.loader import load_tokenizer
from sqlora.train.trainer import train

pytestmark = pytest.mark.slow  # trains models, runs the pipeline or stages in processes

WINDOW = 64  # sliding windows, shorter than every prompt (200-260 tokens)
NEW_TOKENS = 12
BATCH_SIZES = (1, 4, 8, 64)
# name -> (transformers config class, its settings beyond the shared tiny ones, the engine expected)
ARCHITECTURES = {
    "llama": ("LlamaConfig", {}, "sqlora"),
    "qwen2": ("Qwen2Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}, "sqlora"),
    "qwen3": ("Qwen3Config", {"head_dim": 16}, "sqlora"),
    "mistral": ("MistralConfig", {"sliding_window": WINDOW, "head_dim": 16}, "sqlora"),
    "phi3": ("Phi3Config", {"sliding_window": WINDOW}, "sqlora"),
    "gemma2": ("Gemma2Config", {"sliding_window": WINDOW, "head_dim": 16, "query_pre_attn_scalar": 16}, "sqlora"),
    "gemma3": (
        "Gemma3TextConfig",
        {"sliding_window": WINDOW, "head_dim": 16, "query_pre_attn_scalar": 16, "layer_types": ["sliding_attention", "full_attention"]},
        "sqlora",
    ),
    "starcoder2": ("Starcoder2Config", {"sliding_window": WINDOW}, "sqlora"),
    "gpt_neox": ("GPTNeoXConfig", {}, "sqlora"),
    # Falcon's attention does not go through transformers' AttentionInterface: transformers' generate() runs it.
    "falcon": ("FalconConfig", {"num_kv_heads": 2, "new_decoder_architecture": True}, "transformers"),
    "qwen3_moe": ("Qwen3MoeConfig", {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}, "sqlora"),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None}, "sqlora"),
}
# LoRA dropout per architecture: peft adapts fused MoE experts only without dropout (qwen3_moe: experts
# adapted; mixtral: the default dropout, so LoRA on its linear layers only).
DROPOUT = {"qwen3_moe": 0.0}


def tiny_model(name: str, tokenizer_dir: Path, out: Path) -> Path:
    import transformers

    config_class, extra, _ = ARCHITECTURES[name]
    tokenizer = load_tokenizer(tokenizer_dir)
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
        # Large random weights give outputs that depend on every detail of the context, far from ties;
        # Gemma scales its embeddings by sqrt(hidden) and collapses with them, so it keeps small ones.
        initializer_range=0.02 if name.startswith("gemma") else 1.0, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sample_records(sample_dir):
    from sqlora.config import DataParams, PromptParams
    from sqlora.data.prepare import prepare_split

    splits = {}
    for split in ("train", "dev"):
        _, fitted, _ = prepare_split(split, DataParams(dataset="sample", source=str(sample_dir)), PromptParams())
        splits[split] = fitted.records
    by_db: dict[str, list] = {}
    for record in splits["dev"]:
        by_db.setdefault(record.db_id, []).append(record)
    dev = [r for records in by_db.values() for r in records[:5]]  # 15 questions on 3 databases
    return splits["train"][:8], dev


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def trained(request, tiny_model_dir, sample_records, tmp_path_factory):
    """(architecture, model, tokenizer, train metrics): a tiny model after one LoRA step, loaded for inference."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    base = tiny_model(name, tiny_model_dir, root / "base")
    train_records, _ = sample_records
    metrics = train(
        method="lora", base_dir=base, records=train_records, out_dir=root / "finetuned",
        lora=LoraParams(r=4, alpha=8, dropout=DROPOUT.get(name, 0.05)), seed=0, metrics_path=root / "train.json",
        live_dir=root / "live", params=TrainParams(epochs=1, batch_size=8, learning_rate=1e-3, logging_steps=1, max_length=512),
    )  # fmt: skip
    # fp32: the comparison is exact there (bf16 rounds to three digits; bench-predict reports its agreement).
    model, tokenizer = load_for_inference(root / "finetuned", base, dtype="float32")
    yield name, model, tokenizer, metrics
    shutil.rmtree(root, ignore_errors=True)


def reference(model, tokenizer, prompt: str, new_tokens: int = NEW_TOKENS, **settings) -> tuple[list[int], list[torch.Tensor]]:
    """The model's own generate(), one prompt alone, greedy unless told otherwise: new tokens and each step's logits."""
    ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=model.device)
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True, **settings,
    )  # fmt: skip
    return out.sequences[0, ids.shape[1] :].tolist(), [step[0].float() for step in out.logits]


def near_tie(logits: torch.Tensor) -> bool:
    """The two best logits within numeric noise of each other."""
    top = logits.topk(2).values
    return float(top[0] - top[1]) < 1e-3 * max(1.0, float(top[0].abs()))


def compare(generations, references) -> tuple[list[str], int]:
    """Differences (described) and near-ties skipped: each generation must be the start of its
    reference (ours stops at the end of the SQL or EOS; it ran to max_new_tokens only if the reference did)."""
    differences, ties = [], 0
    for n, (g, (ref, logits)) in enumerate(zip(generations, references)):
        ours = list(g.tokens)
        if ref[: len(ours)] == ours and (g.stop != "max_new_tokens" or len(ours) == len(ref)):
            continue
        step = next((k for k, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
        if step < len(logits) and near_tie(logits[step]):
            ties += 1
        else:
            differences.append(f"#{n} at step {step}: ours {ours} reference {ref}")
    return differences, ties


def test_lora_trains_a_step(trained):
    name, _, _, metrics = trained
    assert metrics["steps"] == 1 and metrics["trainable_params"] > 0
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    # Shared-prefix rows (train.shared_prefix) wherever they are exact; Falcon trains on separate rows, saying why.
    if name == "falcon":
        assert (
            metrics["shared_prefix"] == 1
            and "does not route its attention through transformers' AttentionInterface" in metrics["shared_prefix_reason"]
        )
    else:
        assert metrics["shared_prefix"] == 8 and metrics["tokens_computed"] < metrics["tokens"]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_shared_prefix_rows_train_as_separate_rows(name, tiny_model_dir, sample_records, tmp_path):
    """The loss and the LoRA gradients of shared-prefix rows (three databases' questions, five per row, on
    prompts longer than the sliding windows) equal those of the same questions as separate rows, in fp32;
    where they cannot (Falcon's attention is not transformers' AttentionInterface), the check says why."""
    from transformers import AutoModelForCausalLM

    from sqlora.train.batches import ResponseCollator, tokenize_records
    from sqlora.train.prefix_batches import SharedPrefixCollator, question_groups
    from sqlora.train.shared_prefix import losses_and_grads, packed_attention_for, shared_prefix_problem
    from sqlora.train.trainer import add_lora

    tokenizer = load_tokenizer(tiny_model_dir)
    features = tokenize_records(sample_records[1], tokenizer, max_length=512).features
    groups = question_groups(features)
    assert [len(g) for g in groups] == [5, 5, 5] and min(len(f["input_ids"]) for f in features) > 2 * WINDOW
    base = AutoModelForCausalLM.from_pretrained(tiny_model(name, tiny_model_dir, tmp_path / "base"), dtype=torch.float32)
    model = add_lora(base, LoraParams(r=4, alpha=8, dropout=DROPOUT.get(name, 0.05)), "lora")
    torch.manual_seed(1)
    for parameter_name, p in model.named_parameters():  # LoRA's B starts at zero: make the adapter matter
        if "lora_B" in parameter_name:
            torch.nn.init.normal_(p, std=0.1)
    model.eval()
    problem = shared_prefix_problem(model, longest=512)
    if name == "falcon":
        assert problem == "FalconForCausalLM does not route its attention through transformers' AttentionInterface"
        return
    assert problem is None
    trained = [p for p in model.parameters() if p.requires_grad]
    packed = SharedPrefixCollator(tokenizer, per_row=8)([{**features[i], "group": g} for g, members in enumerate(groups) for i in members])
    assert packed["input_ids"].shape[0] == 3
    with packed_attention_for(model):
        losses, grads = losses_and_grads(model, packed, trained)
    own_losses, own_grads = losses_and_grads(model, ResponseCollator(tokenizer)([features[i] for g in groups for i in g]), trained)
    assert len(losses) == len(own_losses)
    assert float((losses - own_losses).norm() / own_losses.norm()) < 1e-5
    assert float((grads - own_grads).norm() / own_grads.norm()) < 1e-4


def test_the_engine_is_the_expected_one(trained):
    name, model, tokenizer, _ = trained
    choice = select_engine(model, tokenizer, plan_decoding(PredictParams(max_new_tokens=NEW_TOKENS)), longest=400)
    assert choice.name == ARCHITECTURES[name][2], choice.reason


def test_greedy_writes_what_generate_writes_alone(trained, sample_records):
    name, model, tokenizer, _ = trained
    prompts = [r.prompt for r in sample_records[1]]
    assert min(len(encode_prompt(tokenizer, p)) for p in prompts) > 2 * WINDOW  # the windows are crossed
    references = [reference(model, tokenizer, p) for p in prompts]
    skipped = 0
    for batch_size in BATCH_SIZES:
        generations = generate(model, tokenizer, prompts, batch_size, NEW_TOKENS, progress=False)
        differences, ties = compare(generations, references)
        assert not differences, f"{name}, batch_size {batch_size}: {differences[:2]}"
        skipped += ties
    assert skipped <= len(BATCH_SIZES), f"{name}: {skipped} near-ties skipped: too many to trust the comparison"


def test_beam_search_writes_what_generate_writes_alone(trained, sample_records):
    name, model, tokenizer, _ = trained
    prompts = [r.prompt for r in sample_records[1][::2]]  # 8 questions, every database
    settings = {"num_beams": 3, "num_return_sequences": 1}
    references = []
    for p in prompts:  # the same stopping rule as ours: each beam ends with its statement
        width = len(encode_prompt(tokenizer, p))
        stop = StoppingCriteriaList([SqlEnd(tokenizer, width)])
        references.append(reference(model, tokenizer, p, stopping_criteria=stop, **settings))
    skipped = 0
    for batch_size in BATCH_SIZES:
        generations = generate(model, tokenizer, prompts, batch_size, NEW_TOKENS, progress=False, decoding="beam", num_beams=3)
        differences, ties = compare(generations, references)
        assert not differences, f"{name}, batch_size {batch_size}: {differences[:2]}"
        skipped += ties
    assert skipped <= len(BATCH_SIZES), f"{name}: {skipped} near-ties skipped"


def test_sampling_draws_from_the_models_distribution(trained, sample_records):
    """Many candidates of one question, one token each: every draw inside the reference's nucleus, and
    the most probable token drawn as often as its probability says (within 4 standard deviations)."""
    from tests.helpers import sampling_distribution

    name, model, tokenizer, _ = trained
    prompt = sample_records[1][0].prompt
    temperature, top_p, draws = 0.7, 0.9, 200
    [generation] = generate(
        model, tokenizer, [prompt], batch_size=draws, max_new_tokens=1, progress=False, decoding="self_consistency",
        num_samples=draws, temperature=temperature, top_p=top_p, seed=3,
    )  # fmt: skip
    _, [logits] = reference(model, tokenizer, prompt, new_tokens=1)
    probs = sampling_distribution(logits[None], temperature, top_p)[0]
    tokens = [c.tokens[0] for c in generation.candidates]
    assert all(probs[t] > 0 for t in tokens), f"{name}: a draw outside the nucleus"
    best, p = int(probs.argmax()), float(probs.max())
    count = tokens.count(best)
    assert abs(count - draws * p) <= 4 * (draws * p * (1 - p)) ** 0.5 + 1, f"{name}: {count} of {draws}, p={p:.3f}"


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_moe_lora_adapts_the_experts_only_without_dropout(tiny_model_dir, tmp_path, capsys, dropout):
    """peft adapts fused MoE expert weights (3-D parameters) only with lora.dropout 0; with dropout the
    linear layers are adapted and the experts left alone, and the stage says so."""
    from transformers import AutoModelForCausalLM

    from sqlora.train.trainer import add_lora, fused_experts

    base = AutoModelForCausalLM.from_pretrained(tiny_model(name="qwen3_moe", tokenizer_dir=tiny_model_dir, out=tmp_path / "moe"))
    experts = fused_experts(base)
    assert experts == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    adapted = add_lora(base, LoraParams(r=4, alpha=8, dropout=dropout), "lora", announce=True)
    on_experts = [n for n, _ in adapted.named_parameters() if ".mlp.experts." in n and "lora_" in n]
    elsewhere = [n for n, _ in adapted.named_parameters() if ".self_attn." in n and "lora_" in n]
    assert elsewhere and bool(on_experts) == (dropout == 0)
    assert ("LoRA adapts the 8 linear layers only" in capsys.readouterr().out) == (dropout > 0)
