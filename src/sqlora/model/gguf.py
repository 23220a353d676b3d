"""GGUF export: a fine-tuned model folder -> one GGUF file for llama.cpp and Ollama, plus a Modelfile.

llama.cpp, Ollama and LM Studio run a model from one GGUF file: weights, hyperparameters, tokenizer
and prompt template in one place, quantised so a small model answers on a laptop CPU. We write it
ourselves with the ``gguf`` package (llama.cpp's own writer) rather than shelling out to llama.cpp's
``convert_hf_to_gguf.py``, which is not installed with any package and changes with llama.cpp:

- the model is merged exactly as ``sqlora export`` merges it (:func:`sqlora.model.export.merged_model`);
- tensors get llama.cpp's names (``gguf.get_tensor_name_map``) and llama.cpp's conventions, which its
  converter applies and every consumer undoes: Llama's q/k rows permuted for its RoPE layout, Gemma's
  zero-centred norms stored as ``w + 1``, a tied output matrix stored once as the embedding;
- the tokenizer is the one training used (its tokenizer.json), as llama.cpp's ``gpt2`` (byte-level BPE:
  merges and a pre-tokenizer name) or ``llama`` (sentencepiece BPE: merge ranks as scores) vocabulary;
- ``tokenizer.chat_template`` is the *training prompt* as a chat template (system message: the schema
  described, user message: the question): the prompt this model answers, unlike its base's chat
  template. ``<name>.Modelfile`` gives Ollama the same prompt, greedy decoding and stops.

Quantisation: ``f16``; ``q8_0`` with gguf-py's bit-exact port of ggml's quantiser; ``q4_k_m`` only
through llama.cpp's own quantiser (llama-cpp-python, optional): gguf-py cannot quantise k-quants, and a
hand-written Q4_K would be an untested copy of ggml's. Architectures: the ones below, each checked
against what llama.cpp supports of it (rope scaling, attention scale); anything else is refused
before any weight is read.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

from sqlora.data.prompt import render_prompt
from sqlora.errors import SqloraError
from sqlora.io import atomic_path

QUANTS = ("f16", "q8_0", "q4_k_m")
LLAMA_CPP = "q4_k_m needs llama.cpp's quantiser: pip install llama-cpp-python (gguf-py cannot quantise k-quants)"


@dataclass(frozen=True)
class Arch:
    gguf_arch: str  # gguf.MODEL_ARCH member name
    permute_qk: bool = False  # llama.cpp's LLAMA graph wants q/k rows in its interleaved RoPE order
    norm_offset: float = 0.0  # Gemma: HF computes x * (1 + w), llama.cpp x * w'


ARCHS = {
    "LlamaForCausalLM": Arch("LLAMA", permute_qk=True),
    "MistralForCausalLM": Arch("LLAMA", permute_qk=True),  # llama.cpp runs Mistral as Llama
    "Qwen2ForCausalLM": Arch("QWEN2"),
    "Gemma3ForCausalLM": Arch("GEMMA3", norm_offset=1.0),
}


@dataclass(frozen=True)
class GgufExport:
    path: Path
    modelfile: Path
    architecture: str  # the Hugging Face class, e.g. Gemma3ForCausalLM
    quant: str
    tensors: int
    parameters: int
    bytes: int
    seconds: float


def check_architecture(config_path: Path) -> str:
    """The architecture a config.json names, if we can write it as GGUF; else one error naming both."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SqloraError(f"{config_path}: not a valid config.json ({exc})") from None
    names = config.get("architectures") or [config.get("model_type", "unknown")]
    if names[0] not in ARCHS:
        raise SqloraError(f"GGUF export of architecture {names[0]} ({config_path}) is not supported; supported: {', '.join(ARCHS)}")
    return names[0]


def check_request(out: Path, quant: str) -> None:
    """The output name and quant level, checked before anything is loaded or materialised."""
    if quant not in QUANTS:
        raise SqloraError(f"quant {quant!r}: expected one of {', '.join(QUANTS)}")
    if Path(out).suffix != ".gguf":
        raise SqloraError(f"{out}: a GGUF export is one file; name it *.gguf")
    if quant == "q4_k_m" and importlib.util.find_spec("llama_cpp") is None:
        raise SqloraError(f"{LLAMA_CPP}; available here: f16, q8_0")


def export_gguf(finetuned_dir: str | Path, base_dir: str | Path, out: str | Path, quant: str = "f16") -> GgufExport:
    """Write the model of a train-stage folder to ``out`` (a .gguf) and ``<out stem>.Modelfile``, atomically."""
    from sqlora.model.export import check_inputs, merged_model

    finetuned_dir, base_dir, out = Path(finetuned_dir), Path(base_dir), Path(out)
    check_request(out, quant)
    info = check_inputs(finetuned_dir, base_dir, out)
    method = info["method"]
    architecture = check_architecture((finetuned_dir if method == "full" else base_dir) / "config.json")

    start = time.perf_counter()
    model, tokenizer = merged_model(finetuned_dir, base_dir, method)
    chat_template = prompt_template(tokenizer, bool((info.get("prompt") or {}).get("chat_template")))
    modelfile = out.with_suffix(".Modelfile")
    with atomic_path(out) as tmp, atomic_path(modelfile) as tmp_modelfile:
        if quant == "q4_k_m":  # llama.cpp quantises from an f16 file
            tensors = _write(tmp.with_suffix(".f16.gguf"), model, tokenizer, ARCHS[architecture], "f16", chat_template, finetuned_dir.name)
            _llama_cpp_quantize(tmp.with_suffix(".f16.gguf"), tmp)
        else:
            tensors = _write(tmp, model, tokenizer, ARCHS[architecture], quant, chat_template, finetuned_dir.name)
        tmp_modelfile.write_text(ollama_modelfile(out.name, tokenizer, model, chat_template), encoding="utf-8")
        for file in (tmp, tmp_modelfile):
            file.chmod(0o644)
        size = tmp.stat().st_size
    return GgufExport(
        path=out,
        modelfile=modelfile,
        architecture=architecture,
        quant=quant,
        tensors=tensors,
        parameters=sum(p.numel() for p in model.parameters()),
        bytes=size,
        seconds=time.perf_counter() - start,
    )


# --- the prompt ------------------------------------------------------------------------------------

_SYSTEM, _USER = "\x00system\x00", "\x00user\x00"  # placeholders no schema or question contains


def prompt_template(tokenizer, chat_template: bool) -> str:
    """The training prompt as a Jinja chat template: the system message is the instruction (the schema
    as sqlora describes it), the last user message the input (the question). A model trained inside its
    chat template (``prompt.chat_template``) gets that template around it, as ``encode_prompt`` does."""
    reads = (
        "{%- set ns = namespace(instruction='', input='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{%- set ns.instruction = message['content'] -%}"
        "{%- elif message['role'] == 'user' -%}{%- set ns.input = message['content'] -%}{%- endif -%}"
        "{%- endfor -%}"
    )
    if not chat_template:
        return reads + render_prompt("{{ ns.instruction }}", "{{ ns.input }}")
    if not getattr(tokenizer, "chat_template", None):
        raise SqloraError("the model was trained with prompt.chat_template but its tokenizer has no chat template")
    parts = [json.dumps(part) for part in render_prompt("\x00", "\x00").split("\x00")]  # JSON strings are Jinja strings
    prompt = f"{parts[0]} ~ ns.instruction ~ {parts[1]} ~ ns.input ~ {parts[2]}"
    return reads + f"{{%- set messages = [{{'role': 'user', 'content': {prompt}}}] -%}}" + tokenizer.chat_template


def render_template(tokenizer, template: str, instruction: str, question: str) -> str:
    """What ``template`` makes of a schema and a question, as transformers renders a chat template."""
    messages = [{"role": "system", "content": instruction}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def ollama_modelfile(gguf_name: str, tokenizer, model, chat_template: str) -> str:
    """An Ollama Modelfile: the GGUF, the training prompt as a Go template, greedy decoding, its stops."""
    text = render_template(tokenizer, chat_template, _SYSTEM, _USER)
    if tokenizer.bos_token and text.startswith(tokenizer.bos_token) and _adds_bos(tokenizer):
        text = text[len(tokenizer.bos_token) :]  # llama.cpp adds BOS itself (tokenizer.ggml.add_bos_token)
    template = text.replace(_SYSTEM, "{{ .System }}").replace(_USER, "{{ .Prompt }}")
    if '"""' in template:
        raise SqloraError('the model\'s chat template contains """, which a Modelfile cannot quote')
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos, tokenizer.eos_token_id]
    stops = dict.fromkeys([tokenizer.convert_ids_to_tokens(i) for i in eos if i is not None] + [";", "###"])
    from sqlora.model.loader import context_limit

    context, _ = context_limit(model.config, tokenizer)
    lines = [
        "# Made by `sqlora export --format gguf`. The system message is the database schema as sqlora describes",
        "# it (the prompt's ###Instruction), the prompt the question: ollama create sqlora -f <this file>,",
        '# then the API\'s "system" and "prompt" fields, or /set system in `ollama run sqlora`.',
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
        # Greedy, as predict and ask decode; Ollama's default repeat penalty (1.1) would change the SQL.
        "PARAMETER temperature 0",
        "PARAMETER top_k 1",
        "PARAMETER repeat_penalty 1",
        *(f"PARAMETER stop {json.dumps(stop)}" for stop in stops),  # the ends sqlora's SQL extraction stops at
        "PARAMETER num_predict 128",  # sqlora ask's --max-new-tokens
        f"PARAMETER num_ctx {min(context, 4096)}",  # room for a large schema; the KV cache of these models is small
    ]
    return "\n".join(lines) + "\n"


# --- the file ---------------------------------------------------------------------------------------


def _write(path: Path, model, tokenizer, arch: Arch, quant: str, chat_template: str, name: str) -> int:
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch.gguf_arch]])
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    _hyperparameters(writer, config, arch)
    n_vocab = config.vocab_size
    _vocabulary(writer, tokenizer, n_vocab)
    writer.add_chat_template(chat_template)
    count = 0
    for tensor_name, data in _tensors(model, arch):
        _add_tensor(writer, tensor_name, data, quant)
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


def _rope_theta(rope: dict, what: str) -> float:
    if rope.get("rope_type", "default") != "default":  # llama.cpp would need its scaling keys / rope_freqs tensor
        raise SqloraError(f"GGUF export: {what} uses rope scaling {rope.get('rope_type')!r}; only plain RoPE is supported")
    return float(rope["rope_theta"])


def _hyperparameters(writer, config, arch: Arch) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    rope = config.rope_parameters
    if arch.gguf_arch != "GEMMA3":
        writer.add_rope_dimension_count(head_dim)  # transformers reads head_dim back from it
        writer.add_rope_freq_base(_rope_theta(rope, "the model"))
        if getattr(config, "attention_bias", False) and arch.permute_qk:
            raise SqloraError("GGUF export: Llama with attention biases is not supported")
        return
    # Gemma 3: local (sliding) and global layers, each with its RoPE base; llama.cpp scales queries by
    # 1/sqrt(head_dim) below 27B, so a model scaling by another query_pre_attn_scalar would compute otherwise.
    if config.query_pre_attn_scalar != head_dim or config.final_logit_softcapping or config.attn_logit_softcapping:
        raise SqloraError("GGUF export: this Gemma 3 variant (attention scaling or soft-capping) is not supported")
    writer.add_rope_freq_base(_rope_theta(rope["full_attention"], "full attention"))
    writer.add_rope_freq_base_swa(_rope_theta(rope["sliding_attention"], "sliding attention"))
    writer.add_sliding_window(config.sliding_window)
    writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in config.layer_types])


def _tensors(model, arch: Arch):
    """(GGUF name, float32 numpy array) for every weight, llama.cpp's conventions applied."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_arch], config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp uses token_embd when there is no output.weight
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SqloraError(f"GGUF export: the weight {hf_name} has no llama.cpp name for {arch.gguf_arch.lower()}")
        data = tensor.detach().float()
        if arch.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, heads)
        elif arch.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, kv_heads)
        if arch.norm_offset and hf_name.endswith("norm.weight"):
            data = data + arch.norm_offset
        yield name, data.numpy()


def _permute(weights, n_head: int):
    """llama.cpp's ``LlamaModel.permute``: each head's rows from HF's half-split RoPE order to interleaved."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _add_tensor(writer, name: str, data, quant: str) -> None:
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    if data.ndim < 2:  # norms and biases: f32, as llama.cpp stores them
        writer.add_tensor(name, data.astype(np.float32))
    elif quant == "q8_0" and data.shape[-1] % 32 == 0:  # Q8_0 blocks are 32 values of a row
        writer.add_tensor(name, quants.quantize(data, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))


def _llama_cpp_quantize(source: Path, target: Path) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise SqloraError(f"llama.cpp could not quantise {source.name} to q4_k_m")
    source.unlink()


# --- the tokenizer ----------------------------------------------------------------------------------


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def _vocabulary(writer, tokenizer, n_vocab: int) -> None:
    """tokenizer.ggml.*: tokens, types, merges or scores, special ids, whether BOS/EOS are added."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    bpe = spec["model"]
    if bpe["type"] != "BPE":
        raise SqloraError(f"GGUF export: a {bpe['type']} tokenizer is not supported (only BPE: byte-level or sentencepiece)")
    if len(tokenizer) > n_vocab:
        raise SqloraError(f"GGUF export: the tokenizer has {len(tokenizer)} tokens, the model's embedding {n_vocab}")
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    types = [
        gguf.TokenType.CONTROL
        if added.get(t)
        else gguf.TokenType.USER_DEFINED
        if t in added
        else gguf.TokenType.BYTE
        if bpe.get("byte_fallback") and len(t) == 6 and t.startswith("<0x") and t.endswith(">")
        else gguf.TokenType.NORMAL
        for t in tokens
    ]
    # Rows of the embedding no token uses (a vocabulary padded to a round size): llama.cpp wants one token each.
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
    types += [gguf.TokenType.UNUSED] * (n_vocab - len(types))
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    if bpe.get("byte_fallback"):  # sentencepiece BPE (Gemma, Llama 2, Mistral)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        # llama.cpp's sentencepiece tokenizer merges the pair whose result scores highest: the merge rank, negated.
        rank = {}
        for r, merge in enumerate(merges):
            rank.setdefault(merge.replace(" ", ""), r)
        vocab = tokenizer.get_vocab()
        scores = [-1000.0] * n_vocab
        for token, r in rank.items():
            if token in vocab and types[vocab[token]] == gguf.TokenType.NORMAL:
                scores[vocab[token]] = -float(r)
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(_prefix_space(spec))
    else:  # byte-level BPE (SmolLM2, Qwen2)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer(spec["pre_tokenizer"]))
        writer.add_token_merges(merges)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # Special ids and BOS/EOS as the tokenizer behaves: transformers 5 writes no add_bos_token to read back.
    for add, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(_adds_bos(tokenizer))
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id)


def _prefix_space(spec: dict) -> bool:
    """Whether the tokenizer puts "▁" before the text (Llama 2, Mistral) or not (Gemma)."""
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Prepend"' in text or ('"Metaspace"' in text and '"prepend_scheme": "never"' not in text)


def _pre_tokenizer(pre: dict | None) -> str:
    """llama.cpp's name for how a byte-level tokenizer splits text before its merges."""
    from transformers.integrations.gguf import gguf_tokenizer_mapping

    splits_by_name = gguf_tokenizer_mapping.GGUF_PRE_TOKENIZER_SPLITS
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # GPT-2's regex, as the HF ByteLevel pre-tokenizer applies it
    splits = [p for p in (pre or {}).get("pretokenizers", []) if p.get("type") == "Split"]
    if len(splits) == 1:
        regex = splits[0]["pattern"].get("Regex")
        # transformers maps llama.cpp's names to these regexes when it loads a GGUF: the inverse is ours.
        for name in ("llama-bpe", "qwen2", *splits_by_name):
            if splits_by_name.get(name) == regex:
                return name
    raise SqloraError(f"GGUF export: the tokenizer's pre-tokenizer ({json.dumps(pre)[:120]}) has no llama.cpp name")
