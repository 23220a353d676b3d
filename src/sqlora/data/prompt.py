"""The one prompt, shared by training and inference so the two can never drift apart."""

from __future__ import annotations

from dataclasses import dataclass

from sqlora.errors import SqloraError

PROMPT_TEMPLATE = (
    "I want you to act as a SQL terminal in front of an example database. "
    "Below is an instruction that describes a task, Write a response that appropriately completes the request."
    "\n\n###Instruction:\n{instruction}\n\n###Input:\n{input}\n\n###Response: "
)


@dataclass(frozen=True)
class Record:
    """One prepared example: the schema told in words, the question, the gold SQL."""

    db_id: str
    instruction: str
    input: str
    output: str
    # Kept for evaluation, where the dataset has them:
    difficulty: str | None = None  # BIRD
    interaction_id: str | None = None  # CoSQL / SParC
    turn: int | None = None  # CoSQL / SParC

    @property
    def prompt(self) -> str:
        return render_prompt(self.instruction, self.input)


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
