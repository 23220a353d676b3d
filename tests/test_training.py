"""Training, for every method, on a tiny random model: real code paths, seconds each."""

import json

import pytest

from sqlora.config import LoraParams, TrainParams
from sqlora.data.prompt import encode_prompt, encode_response
from sqlora.data.records import Record
from sqlora.errors import SqloraError
from sqlora.infer.engine import generate
from sqlora.infer.loading import load_for_inference
from sqlora.model.loader import MODEL_INFO, load_tokenizer
from sqlora.train.batches import IGNORE_INDEX, tokenize_records
from sqlora.train.trainer import last_checkpoint, peak_memory_mb, peak_rss_mb, train
from tests.helpers import fail_writes_halfway

RECORDS = [
    Record(db_id="d", instruction=f"d contains tables such as t{i}.", input=f"How many rows in t{i}?", output=f"SELECT count(*) FROM t{i}")
    for i in range(8)
]
FAST = TrainParams(epochs=1, batch_size=4, learning_rate=1e-3, logging_steps=1, max_length=256)


def test_loss_only_on_the_response(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    data = tokenize_records(RECORDS[:1], tokenizer, max_length=256)
    [feature] = data.features
    prompt = encode_prompt(tokenizer, RECORDS[0].prompt)
    response = encode_response(tokenizer, RECORDS[0].output)
    assert feature["input_ids"] == prompt + response
    assert feature["labels"] == [IGNORE_INDEX] * len(prompt) + response
    assert response[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response[:-1]) == RECORDS[0].output


def test_too_long_examples_are_left_out_not_cut(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    long = Record(db_id="d", instruction="x " * 400, input="q", output="SELECT 1")
    data = tokenize_records([long, *RECORDS[:2]], tokenizer, max_length=128)
    assert data.too_long == 1 and len(data.features) == 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora", "full", "none"])
def test_each_method_trains_and_predicts(tiny_model_dir, tmp_path, method):
    if method == "qlora":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    out = tmp_path / "finetuned"
    metrics = train(
        method=method,
        base_dir=tiny_model_dir,
        records=RECORDS,
        out_dir=out,
        lora=LoraParams(r=4, alpha=8),
        params=FAST,
        seed=0,
        metrics_path=tmp_path / "train.json",
        live_dir=tmp_path / "live",
    )
    assert json.loads((out / MODEL_INFO).read_text())["method"] == method
    assert json.loads((tmp_path / "train.json").read_text()) == metrics
    if method == "none":
        assert metrics["steps"] == 0
        assert sorted(p.name for p in out.iterdir()) == [MODEL_INFO]
    else:
        assert metrics["steps"] == 2 and metrics["train_examples"] == 8
        assert metrics["tokens_per_s"] > 0 and metrics["trainable_params"] > 0
        assert (tmp_path / "live" / "plots" / "metrics" / "loss.tsv").is_file()
        weights = "adapter_model.safetensors" if method in ("lora", "qlora") else "model.safetensors"
        assert (out / weights).is_file()
        if method == "lora":
            assert metrics["trainable_params"] < metrics["total_params"] / 10
        if method == "full":
            assert metrics["trainable_params"] == metrics["total_params"]
    model, tokenizer = load_for_inference(out, tiny_model_dir)
    generations = generate(model, tokenizer, [r.prompt for r in RECORDS[:3]], batch_size=2, max_new_tokens=4, progress=False)
    assert len(generations) == 3 and all(g.new_tokens <= 4 for g in generations)


@pytest.mark.slow
def test_lora_changes_the_model(tiny_model_dir, tmp_path):
    """The trained adapter is really applied at inference: its logits differ from the base model's."""
    import torch

    out = tmp_path / "ft"
    train(
        method="lora",
        base_dir=tiny_model_dir,
        records=RECORDS,
        out_dir=out,
        lora=LoraParams(r=4, alpha=8),
        params=FAST,
        seed=0,
        metrics_path=tmp_path / "m.json",
        live_dir=tmp_path / "live",
    )
    tuned, tokenizer = load_for_inference(out, tiny_model_dir)
    (out / MODEL_INFO).write_text(json.dumps({"method": "none", "base": str(tiny_model_dir)}))
    base, _ = load_for_inference(out, tiny_model_dir)
    ids = torch.tensor([encode_prompt(tokenizer, RECORDS[0].prompt)])
    with torch.no_grad():
        assert not torch.allclose(tuned(ids).logits, base(ids).logits)


def test_target_modules_that_match_nothing(tiny_model_dir, tmp_path):
    with pytest.raises(SqloraError, match="lora.target_modules"):
        train(
            method="lora",
            base_dir=tiny_model_dir,
            records=RECORDS,
            out_dir=tmp_path / "ft",
            lora=LoraParams(target_modules=["nope_proj"]),
            params=FAST,
            seed=0,
            metrics_path=tmp_path / "m.json",
            live_dir=tmp_path / "live",
        )
    assert not (tmp_path / "ft").exists() and not (tmp_path / "m.json").exists()


def test_method_none_writes_every_declared_output(tiny_model_dir, tmp_path):
    """Zero-shot trains nothing, yet the train stage's DVC outputs must all exist, or `dvc exp run
    -S method=none` fails on a fresh clone (no checkpoints folder left by an earlier run); an earlier
    run's curves are not left behind as this run's."""
    (tmp_path / "live" / "plots" / "metrics").mkdir(parents=True)
    (tmp_path / "live" / "plots" / "metrics" / "loss.tsv").write_text("step\tloss\n1\t2.0\n")
    metrics = train(
        method="none",
        base_dir=tiny_model_dir,
        records=RECORDS,
        out_dir=tmp_path / "ft",
        lora=LoraParams(),
        params=FAST,
        seed=0,
        metrics_path=tmp_path / "m.json",
        live_dir=tmp_path / "live",
        checkpoint_dir=tmp_path / "checkpoints",
    )
    assert metrics["steps"] == 0 and json.loads((tmp_path / "m.json").read_text())["method"] == "none"
    assert json.loads((tmp_path / "ft" / MODEL_INFO).read_text())["method"] == "none"
    assert (tmp_path / "live").is_dir() and (tmp_path / "checkpoints").is_dir()
    assert not any((tmp_path / "live").iterdir())


def test_nothing_fits_max_length(tiny_model_dir, tmp_path):
    short = TrainParams(max_length=8)
    with pytest.raises(SqloraError, match="longer than train.max_length=8"):
        train(
            method="lora",
            base_dir=tiny_model_dir,
            records=RECORDS,
            out_dir=tmp_path / "ft",
            lora=LoraParams(),
            params=short,
            seed=0,
            metrics_path=tmp_path / "m.json",
            live_dir=tmp_path / "live",
        )
    with pytest.raises(SqloraError, match="training set is empty"):
        train(
            method="lora",
            base_dir=tiny_model_dir,
            records=[],
            out_dir=tmp_path / "ft",
            lora=LoraParams(),
            params=short,
            seed=0,
            metrics_path=tmp_path / "m.json",
            live_dir=tmp_path / "live",
        )


def test_response_loss_equals_the_models_own_loss(tiny_model_dir):
    """Logits only where labels are must give exactly transformers' causal-LM loss on the full logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from sqlora.train.batches import ResponseCollator, response_loss

    tokenizer = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    records = [*RECORDS[:2], Record(db_id="d", instruction="a much longer schema " * 5, input="q", output="SELECT name FROM t WHERE x = 1")]
    batch = ResponseCollator(tokenizer)(tokenize_records(records, tokenizer, 256).features)
    labels = batch.pop("labels")
    keep = batch.pop("logits_to_keep")
    with torch.no_grad():
        full = model(**batch, labels=labels).loss
        sliced = model(**batch, logits_to_keep=keep)
    assert sliced.logits.shape[1] == len(keep) < labels.shape[1]
    torch.testing.assert_close(response_loss(sliced, labels), full)


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_training(tiny_model_dir, tmp_path):
    runs = {}
    for checkpointing in (False, True):
        out = tmp_path / str(checkpointing)
        runs[checkpointing] = train(
            method="lora",
            base_dir=tiny_model_dir,
            records=RECORDS,
            out_dir=out / "model",
            lora=LoraParams(r=4, alpha=8, dropout=0.0),
            params=TrainParams(epochs=1, batch_size=4, logging_steps=1, max_length=256, gradient_checkpointing=checkpointing),
            seed=0,
            metrics_path=out / "train.json",
            live_dir=out / "live",
        )
    assert runs[True]["final_loss"] == pytest.approx(runs[False]["final_loss"], rel=1e-4)


@pytest.mark.slow
def test_metrics_report_padding_and_the_tokens_per_second_curve(tiny_model_dir, tmp_path):
    metrics = train(
        method="lora",
        base_dir=tiny_model_dir,
        records=RECORDS,
        out_dir=tmp_path / "model",
        lora=LoraParams(r=4, alpha=8),
        params=FAST,
        seed=0,
        metrics_path=tmp_path / "train.json",
        live_dir=tmp_path / "live",
    )
    assert 0 <= metrics["padding_fraction"] < 0.5 and metrics["processes"] == 1 and "peak_rss_mb" in metrics
    curve = (tmp_path / "live/plots/metrics/tokens_per_s.tsv").read_text().splitlines()
    assert curve[0] == "step\ttokens_per_s" and len(curve) == 1 + metrics["steps"]


def test_qlora_without_4bit_support_fails_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    bnb_functional = pytest.importorskip("bitsandbytes.functional")

    def unsupported(*args, **kwargs):
        raise NotImplementedError("no 4-bit kernel for this device")

    monkeypatch.setattr(bnb_functional, "quantize_4bit", unsupported)
    with pytest.raises(SqloraError, match=r"method 'qlora': bitsandbytes cannot quantise to 4 bits on cpu .*use method 'lora'"):
        train(
            method="qlora",
            base_dir=tiny_model_dir,
            records=RECORDS,
            out_dir=tmp_path / "model",
            lora=LoraParams(r=4, alpha=8),
            params=FAST,
            seed=0,
            metrics_path=tmp_path / "train.json",
            live_dir=tmp_path / "live",
        )
    assert not (tmp_path / "model").exists() and not (tmp_path / "train.json").exists()


def test_last_checkpoint_skips_an_interrupted_save(tmp_path):
    """The Trainer writes trainer_state.json last: a checkpoint without it was cut mid-save."""
    (tmp_path / "fingerprint.txt").write_text("run\n")
    for step, complete in ((5, True), (20, True), (25, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"")
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-99-old").mkdir()  # not a checkpoint name
    assert last_checkpoint(tmp_path, "run") == str(tmp_path / "checkpoint-20")
    assert last_checkpoint(tmp_path, "another run") is None
    for step in (5, 20):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").unlink()
    assert last_checkpoint(tmp_path, "run") is None


def test_resuming_forgets_the_steps_logged_after_the_checkpoint(tmp_path, monkeypatch):
    """dvclive's plot files, before a resume from checkpoint-20: rows of later steps go, and the row
    the killed run was writing; the rewrite is atomic (a failure half-way leaves the file as it was)."""
    from sqlora.train.trainer import _drop_logged_steps_after

    metrics = tmp_path / "live" / "plots" / "metrics"
    (metrics / "eval").mkdir(parents=True)
    (metrics / "loss.tsv").write_text("step\tloss\n10\t2.5\n20\t1.5\n30\t1.0\n40\t0.5\n")
    (metrics / "eval" / "loss.tsv").write_text("step\tloss\n20\t1.6\n30\t1.2\n3")  # cut while writing step 3x
    (metrics / "empty.tsv").write_text("")
    original = (metrics / "loss.tsv").read_text()
    fail_writes_halfway(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        _drop_logged_steps_after(tmp_path / "live", 20)
    monkeypatch.undo()
    assert (metrics / "loss.tsv").read_text() == original and sorted(p.name for p in metrics.iterdir()) == [
        "empty.tsv",
        "eval",
        "loss.tsv",
    ]  # no temporary file left beside it

    _drop_logged_steps_after(tmp_path / "live", 20)
    assert (metrics / "loss.tsv").read_text() == "step\tloss\n10\t2.5\n20\t1.5\n"
    assert (metrics / "eval" / "loss.tsv").read_text() == "step\tloss\n20\t1.6\n"
    assert (metrics / "empty.tsv").read_text() == ""


def test_peak_rss_is_this_process_peak():
    assert 1 < peak_rss_mb() < 1e6
    if "peak_rss_mb" in peak_memory_mb():  # no GPU
        assert peak_memory_mb()["peak_rss_mb"] >= round(peak_rss_mb(), 1) - 1


@pytest.mark.slow
def test_precision_is_recorded_and_checked(tiny_model_dir, tmp_path):
    """model.dtype auto trains under bf16 autocast where the CPU has native bf16 (fp32 elsewhere), the
    base and the adapter in fp32; the metrics say which. fp16 is for CUDA GPUs only."""
    from sqlora.model.loader import dtype_name, resolve_dtype

    common = dict(method="lora", base_dir=tiny_model_dir, records=RECORDS, lora=LoraParams(r=4, alpha=8), params=FAST, seed=0,
                  live_dir=tmp_path / "live")  # fmt: skip
    metrics = train(**common, out_dir=tmp_path / "auto", metrics_path=tmp_path / "auto.json")
    assert metrics["dtype"] == dtype_name(resolve_dtype("auto")) and metrics["weights_dtype"] == "float32"
    fp32 = train(**common, out_dir=tmp_path / "fp32", metrics_path=tmp_path / "fp32.json", dtype="float32")
    assert fp32["dtype"] == "float32"
    with pytest.raises(SqloraError, match="fp16 training .* runs on CUDA GPUs only"):
        train(**common, out_dir=tmp_path / "fp16", metrics_path=tmp_path / "fp16.json", dtype="float16")
    assert not (tmp_path / "fp16").exists()


@pytest.mark.slow
def test_validation_runs_at_each_epoch_end_with_the_models_own_attention(tiny_model_dir, tmp_path):
    """validate() is called once per epoch, on the model in eval mode and attending as it was loaded (not
    through the packed shared-prefix attention it trains with); its results reach the metrics and dvclive."""
    seen = []

    def validate(model, tokenizer):
        seen.append((model.training, model.config._attn_implementation, tokenizer is not None))
        return {"ex": [0.25, 0.5, 0.375][len(seen) - 1], "questions": 3, "seconds": 0.1}

    params = TrainParams(epochs=3, batch_size=4, learning_rate=1e-3, logging_steps=1, max_length=256, shared_prefix=4)
    metrics = train(
        method="lora",
        base_dir=tiny_model_dir,
        records=RECORDS,
        out_dir=tmp_path / "ft",
        lora=LoraParams(r=4, alpha=8),
        params=params,
        seed=0,
        metrics_path=tmp_path / "train.json",
        live_dir=tmp_path / "live",
        validate=validate,
    )
    assert metrics["shared_prefix"] == 4  # the packed attention was in use between validations
    assert [s[0] for s in seen] == [False] * 3 and all(s[1] in ("sdpa", "eager") and s[2] for s in seen)
    assert [(r["epoch"], r["ex"]) for r in metrics["validation"]] == [(1, 0.25), (2, 0.5), (3, 0.375)]
    assert metrics["validation_ex"] == 0.375 and metrics["best_validation_epoch"] == 2
    rows = (tmp_path / "live" / "plots" / "metrics" / "validation_ex.tsv").read_text().splitlines()
    assert [float(r.split("\t")[-1]) for r in rows[1:]] == [0.25, 0.5, 0.375]
    assert [int(r.split("\t")[0]) for r in rows[1:]] == [r["step"] for r in metrics["validation"]]


def test_no_validation_no_validation_metrics(tiny_model_dir, tmp_path):
    metrics = train(
        method="lora",
        base_dir=tiny_model_dir,
        records=RECORDS,
        out_dir=tmp_path / "ft",
        lora=LoraParams(r=4, alpha=8),
        params=FAST,
        seed=0,
        metrics_path=tmp_path / "train.json",
        live_dir=tmp_path / "live",
    )
    assert "validation" not in metrics and not (tmp_path / "live" / "plots" / "metrics" / "validation_ex.tsv").exists()
