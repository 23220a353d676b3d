"""The one prompt, shared by training and inference so the two can never drift apart."""

from __future__ import annotations

from sqlora.errors import SqloraError

PROMPT_TEMPLATE = (
    "I want you to act as a SQL terminal in front of an example database. "
    "Below is an instruction that describes a task, Write a response that appropriately completes the request."
    "\n\n###Instruction:\n{instruction}\n\n###Input:\n{input}\n\n###Response: "
)


def render_prompt(instruction: str, input: str) -> str:
    return PROMPT_TEMPLATE.format(instruction=instruction, input=input)


def encode_prompt(tokenizer, prompt: str, chat_template: bool = False) -> list[int]:
    """Token ids of a prompt exactly as the model sees it, in training and in generation.

    With ``chat_template`` the prompt is the user turn of the model's chat template, followed by
    the assistant turn's opening, for instruction-tuned models trained on that format.
    """
    if not chat_template:
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise SqloraError(f"prompt.chat_template is true but the model's tokenizer ({tokenizer.name_or_path}) has no chat template")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_response(tokenizer, output: str) -> list[int]:
    """Token ids of the target SQL, ended by EOS so the model learns to stop."""
    return tokenizer(output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


# --- prompts sharing a prefix: the schema, read once (prediction's engine and shared-prefix training) ---


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens all ``prompts`` share (their longest common prefix)."""
    return min(common_prefix(prompts[0], p) for p in prompts)


def prefix_groups(encoded: list[list[int]]) -> list[list[int]]:
    """Indexes of encoded prompts grouped by the prefix they share, in an order fixed by the prompts alone.

    Sorted by their tokens, prompts with the same instruction and schema are neighbours; a run of
    neighbours sharing at least half of the shorter prompt is a group (its members in sorted order).
    Token-level, so a chat template's or a tokenizer's own leading tokens count as what they are.
    """
    if not encoded:
        return []
    order = sorted(range(len(encoded)), key=lambda i: encoded[i])
    groups = [[order[0]]]
    for a, b in zip(order, order[1:]):
        if common_prefix(encoded[a], encoded[b]) * 2 >= min(len(encoded[a]), len(encoded[b])):
            groups[-1].append(b)
        else:
            groups.append([b])
    return groups
