"""Export: the merged checkpoint loads with plain transformers and computes what base + adapter did."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sqlora.data.prompt import encode_prompt
from sqlora.data.records import Record
from sqlora.errors import SqloraError
from sqlora.infer.engine import generate
from sqlora.model.export import EXPORT_INFO, export_model
from sqlora.model.loader import MODEL_INFO, check_checkpoint_folder, dtype_name, load_base_model, load_tokenizer, resolve_dtype
from tests.helpers import REPO, SQLORA

PROMPTS = [
    Record(db_id="d", instruction=f"d contains tables such as t{i}.", input=f"How many rows in t{i}?", output="").prompt for i in range(3)
]


def make_adapter(base_dir: Path, out: Path, method: str):
    """A LoRA adapter saved as the train stage saves it; random non-zero B (init_lora_weights=False), so merging matters."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(load_base_model(base_dir, method, torch.float32), config).eval()  # qlora: on the NF4 base, as training does
    model.save_pretrained(out)
    (out / MODEL_INFO).write_text(json.dumps({"method": method, "base": str(base_dir)}))
    return model


def logits(model, tokenizer, prompt: str = PROMPTS[0]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([encode_prompt(tokenizer, prompt)])).logits.float()


@pytest.fixture(scope="module")
def lora(tiny_model_dir, tmp_path_factory):
    """(adapter folder, the peft model, its export in fp32)."""
    root = tmp_path_factory.mktemp("export")
    model = make_adapter(tiny_model_dir, root / "finetuned", "lora")
    export_model(root / "finetuned", tiny_model_dir, root / "exported", dtype="float32")
    return root / "finetuned", model, root / "exported"


def test_exported_folder_is_a_plain_checkpoint(lora, tiny_model_dir):
    adapter_dir, _, out = lora
    names = {p.name for p in out.iterdir()}
    assert any(n.endswith(".safetensors") for n in names) and not any(n.endswith(".bin") for n in names)
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= names
    assert not {"adapter_config.json", "adapter_model.safetensors", MODEL_INFO} & names
    assert json.loads((out / EXPORT_INFO).read_text()) == {
        "method": "lora",
        "base": str(tiny_model_dir),
        "source": str(adapter_dir),
        "dtype": "float32",
        "prompt": {},
    }
    assert not list(out.parent.glob(".exported.*"))  # the temporary folder is gone
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in out.iterdir())  # readable by a server running as another user


def test_merged_logits_and_greedy_tokens_equal_the_adapters(lora, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    _, peft_model, out = lora
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = load_tokenizer(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for prompt in PROMPTS:
        torch.testing.assert_close(logits(merged, tokenizer, prompt), logits(peft_model, tokenizer, prompt), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(logits(base, tokenizer), logits(merged, tokenizer), atol=1e-2)  # the adapter mattered
    expected = generate(peft_model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=8, progress=False)
    assert generate(merged, tokenizer, PROMPTS, batch_size=2, max_new_tokens=8, progress=False) == expected


@pytest.mark.slow
def test_loads_and_generates_without_peft(lora):
    """What a server does: transformers alone, in a fresh process; peft is never imported."""
    _, peft_model, out = lora
    tokenizer = load_tokenizer(out)
    ids = encode_prompt(tokenizer, PROMPTS[1])
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"out = model.generate(torch.tensor([{ids!r}]), max_new_tokens=8, do_sample=False)\n"
        "print(json.dumps({'tokens': out[0].tolist(), 'peft': 'peft' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["peft"] is False
    with torch.no_grad():
        expected = peft_model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert seen["tokens"] == expected[0].tolist()


def test_bfloat16_export(lora, tiny_model_dir, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    result = export_model(lora[0], tiny_model_dir, tmp_path / "bf16", dtype="bfloat16")
    assert result.dtype == "bfloat16" and result.parameters == AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters()
    for file in (tmp_path / "bf16").glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


def state_dict(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_method_none_saves_the_base(tiny_model_dir, tmp_path):
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / MODEL_INFO).write_text(json.dumps({"method": "none", "base": str(tiny_model_dir)}))
    result = export_model(tmp_path / "ft", tiny_model_dir, tmp_path / "out", dtype="float32")
    assert result.method == "none" and result.dtype == "float32"
    assert_same_weights(tmp_path / "out", tiny_model_dir)


def test_method_full_resaves_the_checkpoint(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.5)  # "fine-tuned": differs from the base
    model.save_pretrained(tmp_path / "ft")
    (tmp_path / "ft" / MODEL_INFO).write_text(json.dumps({"method": "full", "base": str(tiny_model_dir)}))
    export_model(tmp_path / "ft", tiny_model_dir, tmp_path / "out", dtype="float32")
    assert_same_weights(tmp_path / "out", tmp_path / "ft")
    assert (tmp_path / "out" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_qlora_merges_into_the_unquantised_base(tiny_model_dir, tmp_path):
    """Exactly base + adapter in full precision; close to (not equal to) the NF4 model the adapter was trained on."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    nf4_model = make_adapter(tiny_model_dir, tmp_path / "ft", "qlora")
    result = export_model(tmp_path / "ft", tiny_model_dir, tmp_path / "out", dtype="float32")
    assert result.method == "qlora" and "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    tokenizer = load_tokenizer(tiny_model_dir)
    merged = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "out"), tokenizer)
    full_precision = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "ft").eval()
    torch.testing.assert_close(merged, logits(full_precision, tokenizer), rtol=1e-4, atol=1e-5)
    # The NF4 rounding of the base is the only difference, and small next to what the adapter changes.
    adapter_effect = (logits(nf4_model, tokenizer) - logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)).abs().max()
    assert 0 < (merged - logits(nf4_model, tokenizer)).abs().max() < adapter_effect / 4


def test_adapter_for_another_base(lora, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2
    )
    LlamaForCausalLM(other).save_pretrained(tmp_path / "other")
    with pytest.raises(SqloraError, match="the adapter does not fit the base"):
        export_model(lora[0], tmp_path / "other", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize(("text", "reason"), [("{not json", "not a valid config.json"), ("[1, 2]", "expected a JSON object")])
def test_invalid_config_json_is_one_error_naming_the_file(tmp_path, text, reason):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(SqloraError) as err:
        check_checkpoint_folder(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'config.json'}: {reason}") and "\n" not in str(err.value)


def test_output_must_not_overwrite_an_input(lora, tiny_model_dir):
    with pytest.raises(SqloraError, match="must differ"):
        export_model(lora[0], tiny_model_dir, tiny_model_dir)


def run_cli(*args: str):
    return subprocess.run(SQLORA + ["export", *args], capture_output=True, text=True)


def test_export_command(lora, tiny_model_dir, tmp_path, capsys):
    from sqlora.cli import main

    main(["export", "--model", str(lora[0]), "--base", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--dtype", "float16"])
    printed = capsys.readouterr().out
    assert f"export: lora model -> {tmp_path / 'out'} (3,219,776 parameters, float16, " in printed
    assert json.loads((tmp_path / "out" / EXPORT_INFO).read_text())["dtype"] == "float16"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no folder", "no model info", "no base", "no adapter"])
def test_bad_input_is_one_line_and_exit_2(case, lora, tiny_model_dir, tmp_path):
    model, base = tmp_path / "ft", tiny_model_dir
    expected = {
        "no folder": f"error: {model}: no such fine-tuned model folder",
        "no model info": f"error: {model}: no {MODEL_INFO}",
        "no base": f"error: {tmp_path / 'base'}: no such base model folder",
        "no adapter": f"error: {model}: method 'lora' but no PEFT adapter",
    }[case]
    if case != "no folder":
        model.mkdir()
    if case in ("no base", "no adapter"):
        (model / MODEL_INFO).write_text(json.dumps({"method": "lora", "base": str(base)}))
    if case == "no base":
        (model / "adapter_config.json").write_text((lora[0] / "adapter_config.json").read_text())
        (model / "adapter_model.safetensors").write_bytes((lora[0] / "adapter_model.safetensors").read_bytes())
        base = tmp_path / "base"
    result = run_cli("--model", str(model), "--base", str(base), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.startswith(expected) and result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_stage(lora, tiny_model_dir, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "finetuned").symlink_to(lora[0])
    (tmp_path / "models" / "base").symlink_to(tiny_model_dir)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())  # model.dtype: auto
    result = subprocess.run([sys.executable, str(REPO / "stages" / "export.py")], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "export: lora model -> models/exported" in result.stdout
    info = json.loads((tmp_path / "models" / "exported" / EXPORT_INFO).read_text())
    # auto: bf16 where the hardware has it natively (AVX512-BF16, AMX, a bf16 GPU), fp32 on other CPUs
    assert info["source"] == "models/finetuned" and info["dtype"] == dtype_name(resolve_dtype("auto"))
