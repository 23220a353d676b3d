"""What tests share besides fixtures: the repository's paths, the installed command, scripted models and
fault injection (``from tests.helpers import REPO, SQLORA``)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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


@contextmanager
def serving(app):
    """``app`` served by uvicorn on a free port of 127.0.0.1, in a thread of this process (so that a test may
    script or slow its model); yields the base URL once the server accepts connections."""
    import threading
    import time

    import uvicorn

    from tests.databases import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def sampling_distribution(logits, temperature: float, top_p: float):
    """The distribution our engine's sampling draws the next token from, over the whole vocabulary (rows of
    ``logits``): what its draws are checked against."""
    import torch

    from sqlora.infer.fast import _nucleus

    values, indexes = _nucleus(logits.float(), temperature, top_p)
    full = values if indexes is None else torch.zeros_like(logits, dtype=values.dtype).scatter_(-1, indexes, values)
    return full / full.sum(dim=-1, keepdim=True)


def constrained_distribution(checker, state, logits, temperature: float, top_p: float):
    """The distribution constrained sampling draws from, over the whole vocabulary (one row): see
    :meth:`sqlora.infer.constrained.TokenChecker.nucleus`."""
    import torch

    allowed, masses = checker.nucleus(state, logits.float(), temperature, top_p)
    full = torch.zeros(logits.shape[-1])
    full[allowed] = torch.tensor(masses)
    return full / full.sum()
