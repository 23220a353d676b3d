"""GGUF export: the file loads back in real consumers (transformers' GGUF loader; llama.cpp when
llama-cpp-python is installed) and computes, tokenizes and prompts as the merged HF model does."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sqlora.cli import main
from sqlora.data.prompt import PROMPT_TEMPLATE
from sqlora.data.records import Record
from sqlora.model.export import merged_model
from sqlora.model.gguf import export_gguf, prompt_template, render_template
from sqlora.model.loader import MODEL_INFO
from tests.test_export import PROMPTS, make_adapter

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (optional)")
TEXTS = [*PROMPTS, "  two  spaces\tand a tab, ünïcödé 😀 1234567 <|im_end|>\n\n\nSELECT count(*) FROM t;"]


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def greedy(model, ids: list[int], n: int = 8) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids) :].tolist()


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def load_gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    values = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.") and k != "tokenizer.ggml.merges"}
    return values | {"tensor_types": {t.name: t.tensor_type.name for t in reader.tensors}}


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """(adapter folder, the merged HF model, its tokenizer, {quant: .gguf path})."""
    root = tmp_path_factory.mktemp("gguf")
    make_adapter(tiny_model_dir, root / "finetuned", "lora")
    model, tokenizer = merged_model(root / "finetuned", tiny_model_dir, "lora")
    paths = {q: export_gguf(root / "finetuned", tiny_model_dir, root / f"sql-{q}.gguf", quant=q).path for q in ("f16", "q8_0")}
    return root / "finetuned", model, tokenizer, paths


@pytest.mark.slow  # loads models back from GGUF: seconds each
def test_f16_computes_what_the_merged_model_does(exported):
    _, merged, tokenizer, paths = exported
    model = load_gguf(paths["f16"])
    for prompt in PROMPTS:
        ids = ids_of(tokenizer, prompt)
        # f16 rounds each weight by at most 2^-11 of itself: logits agree to about 1e-3 here.
        torch.testing.assert_close(logits(model, ids), logits(merged, ids), rtol=1e-2, atol=5e-3)
        assert greedy(model, ids) == greedy(merged, ids)


@pytest.mark.slow  # loads models back from GGUF: seconds each
def test_q8_0_is_quantised_and_close(exported):
    _, merged, tokenizer, paths = exported
    info = fields(paths["q8_0"])
    assert info["general.file_type"] == 7  # MOSTLY_Q8_0
    assert {t for name, t in info["tensor_types"].items() if name.endswith("norm.weight")} == {"F32"}
    assert "Q8_0" in info["tensor_types"].values() and paths["q8_0"].stat().st_size < paths["f16"].stat().st_size
    model = load_gguf(paths["q8_0"])
    ids = ids_of(tokenizer, PROMPTS[0])
    # Q8_0: 8 bits per weight, one scale per 32: about 30x f16's error, still small next to the logits' spread.
    assert (logits(model, ids) - logits(merged, ids)).abs().max() < 0.1


@pytest.mark.slow  # loads models back from GGUF: seconds each
def test_tokenizer_round_trip_gives_identical_ids(exported):
    _, _, tokenizer, paths = exported
    loaded = load_gguf_tokenizer(paths["f16"])
    for text in TEXTS:
        assert ids_of(loaded, text) == ids_of(tokenizer, text)
    assert (loaded.bos_token_id, loaded.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    info = fields(paths["f16"])
    assert info["general.architecture"] == "llama" and info["tokenizer.ggml.model"] == "gpt2"
    assert info["tokenizer.ggml.add_bos_token"] is False  # as SmolLM2's tokenizer: no BOS before the prompt
    assert "output.weight" not in info["tensor_types"]  # tied embeddings: stored once


def test_chat_template_is_the_training_prompt(exported, tiny_model_dir):
    _, _, tokenizer, paths = exported
    template = fields(paths["f16"])["tokenizer.chat_template"]
    record = Record(db_id="d", instruction="d contains tables such as t.", input="How many rows?", output="")
    assert render_template(tokenizer, template, record.instruction, record.input) == record.prompt
    # A model trained inside its chat template (prompt.chat_template): the training prompt is the user turn.
    wrapped = prompt_template(tokenizer, chat_template=True)
    expected = tokenizer.apply_chat_template([{"role": "user", "content": record.prompt}], tokenize=False, add_generation_prompt=True)
    assert render_template(tokenizer, wrapped, record.instruction, record.input) == expected


def test_modelfile(exported):
    _, _, tokenizer, paths = exported
    text = paths["q8_0"].with_suffix(".Modelfile").read_text()
    assert "FROM ./sql-q8_0.gguf\n" in text
    template = PROMPT_TEMPLATE.format(instruction="{{ .System }}", input="{{ .Prompt }}")
    assert f'TEMPLATE """{template}"""\n' in text
    for line in (
        "PARAMETER temperature 0",
        "PARAMETER repeat_penalty 1",
        f'PARAMETER stop "{tokenizer.eos_token}"',
        'PARAMETER stop ";"',
        "PARAMETER num_predict 128",
        "PARAMETER num_ctx 1024",
    ):
        assert line + "\n" in text


def test_export_command(exported, tiny_model_dir, tmp_path, capsys):
    main(
        [
            "export",
            "--model",
            str(exported[0]),
            "--base",
            str(tiny_model_dir),
            "--format",
            "gguf",
            "--quant",
            "q8_0",
            "--out",
            str(tmp_path / "m.gguf"),
        ]
    )
    assert f"export: LlamaForCausalLM -> {tmp_path / 'm.gguf'} (q8_0, " in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.Modelfile", "m.gguf"]  # no temporary files left


def expect_exit_2(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_unsupported_architecture_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys):
    from transformers import GPT2Config

    ft = tmp_path / "ft"
    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(
        ft
    )  # refused from its config: no weights needed
    (ft / MODEL_INFO).write_text(json.dumps({"method": "full", "base": str(tiny_model_dir)}))
    err = expect_exit_2(
        ["export", "--model", str(ft), "--base", str(tiny_model_dir), "--format", "gguf", "--out", str(tmp_path / "o.gguf")], capsys
    )
    assert "architecture GPT2LMHeadModel" in err and "LlamaForCausalLM" in err and "Gemma3ForCausalLM" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]


@pytest.mark.parametrize("case", ["quant with hf", "dtype with gguf", "not .gguf", "q4_k_m without llama.cpp"])
def test_bad_flags(case, exported, tiny_model_dir, tmp_path, capsys):
    if case == "q4_k_m without llama.cpp" and HAS_LLAMA_CPP:
        pytest.skip("llama-cpp-python is installed: q4_k_m works")
    flags, expected = {
        "quant with hf": (["--quant", "q8_0"], "--quant applies to --format gguf only"),
        "dtype with gguf": (["--format", "gguf", "--dtype", "float16"], "--dtype applies to --format hf only"),
        "not .gguf": (["--format", "gguf", "--out", str(tmp_path / "o.bin")], "name it *.gguf"),
        "q4_k_m without llama.cpp": (["--format", "gguf", "--quant", "q4_k_m"], "q4_k_m needs llama.cpp's quantiser"),
    }[case]
    out = [] if "--out" in flags else ["--out", str(tmp_path / "o.gguf")]
    err = expect_exit_2(["export", "--model", str(exported[0]), "--base", str(tiny_model_dir), *out, *flags], capsys)
    assert expected in err
    assert not list(tmp_path.iterdir())


def tiny_config(arch: str, tokenizer):
    from transformers import Gemma3TextConfig, MistralConfig, Qwen2Config

    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": True,
    }
    if arch == "gemma3":  # Gemma 3's pattern: 5 sliding layers, then a global one, each kind with its RoPE base
        # (transformers' GGUF loader rebuilds layer_types from that default pattern, llama.cpp reads them from the
        # file), and head_dim 256: the query scale transformers' loader assumes and llama.cpp computes.
        return Gemma3TextConfig(**shape | {"num_hidden_layers": 6}, head_dim=256, query_pre_attn_scalar=256, sliding_window=8)
    return {"qwen2": Qwen2Config, "mistral": MistralConfig}[arch](**shape)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gemma3"])
def test_other_architectures_load_back_with_the_same_logits(arch, tiny_model_dir, tmp_path):
    """Qwen2 (biases), Mistral (Llama's permutation), Gemma 3 (norms stored + 1, sliding layers)."""
    from transformers import AutoModelForCausalLM

    from sqlora.model.loader import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "bias")):
                p.normal_(0, 0.5)  # init leaves them constant: a mistake in their conversion would not show
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / MODEL_INFO).write_text(json.dumps({"method": "none", "base": str(tmp_path / "base")}))
    path = export_gguf(tmp_path / "ft", tmp_path / "base", tmp_path / "m.gguf").path
    loaded = load_gguf(path)
    ids = ids_of(tokenizer, PROMPTS[0])[:64]  # Gemma: past the sliding window of 8
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=1e-2, atol=5e-3)
    if HAS_LLAMA_CPP:
        import llama_cpp
        import numpy as np

        llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, n_threads=2, verbose=False)
        llm.eval(ids)
        np.testing.assert_allclose(np.array(llm.scores[: len(ids)]), logits(model, ids).numpy(), atol=5e-3)
        llm.close()


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("quant", ["f16", "q4_k_m"])
def test_llama_cpp_runs_it(quant, exported, tiny_model_dir, tmp_path):
    """llama.cpp itself: its tokenizer gives our ids, and in f16 its logits are the merged model's."""
    import llama_cpp
    import numpy as np

    adapter, merged, tokenizer, paths = exported
    path = paths.get(quant) or export_gguf(adapter, tiny_model_dir, tmp_path / f"m-{quant}.gguf", quant=quant).path
    llm = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, n_threads=2, verbose=False)
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids_of(tokenizer, text)
    ids = ids_of(tokenizer, PROMPTS[0])
    llm.eval(ids)
    if quant == "f16":
        np.testing.assert_allclose(np.array(llm.scores[: len(ids)]), logits(merged, ids).numpy(), atol=5e-3)
    else:
        assert fields(path)["general.file_type"] == 15  # MOSTLY_Q4_K_M
    llm.close()


# The published Gemma 3's export on a fresh clone: tests/test_published.py (it shares that module's materialised base).
