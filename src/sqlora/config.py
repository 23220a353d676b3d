"""params.yaml → typed, validated dataclasses.

Every stage reads its slice of the parameters through :func:`load_params`, so a bad
value is reported once, the same way everywhere: one line naming the file and key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from sqlora.errors import SqloraError

METHODS = ("lora", "qlora", "full", "none")
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
# model.dtype: the precision train, predict, ask and export compute in (auto: chosen by the hardware).
DTYPES = ("auto", "float32", "bfloat16", "float16")
DATASETS = ("sample", "spider", "bird", "cosql", "sparc", "wikisql", "custom")  # data.dataset: the layouts sqlora.data reads
SCHEMA_FORMATS = ("natural", "ddl", "ddl_rows", "compact")  # prompt.schema_format: how sqlora.data.schema describes a schema
DECODINGS = ("greedy", "beam", "sample", "self_consistency", "execution_guided")


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # YAML's true is not the number 1
        raise ValueError("must be a number, not true or false")
    return value


def _module_names(value: Any) -> Any:
    if isinstance(value, str) and value or isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise ValueError("must be a list of module names or 'all-linear'")


# Field types: YAML gives 1e-3 as a string and 2 as an int; pydantic (lax) turns them into the field's type.
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
Count = Annotated[int, BeforeValidator(_not_bool), Field(ge=0)]  # 0 allowed (often: none, or off)
Positive = Annotated[int, BeforeValidator(_not_bool), Field(gt=0)]
PositiveFloat = Annotated[float, BeforeValidator(_not_bool), Field(gt=0)]
NonNegativeFloat = Annotated[float, BeforeValidator(_not_bool), Field(ge=0)]
Fraction = Annotated[float, BeforeValidator(_not_bool), Field(ge=0, lt=1)]  # [0, 1)
Modules = Annotated[str | list[str], BeforeValidator(_module_names)]

# Every group: frozen, and a key it does not know is an error (a typo must not fall back to a default).
dataclass = _pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))


@dataclass
class DataParams:
    dataset: Literal[DATASETS] = "sample"
    source: str = "data/sample"
    schema_source: str = ""  # CoSQL/SParC without their own tables.json: the Spider folder
    max_train_examples: Count = 0
    max_dev_examples: Count = 0
    skip_bad: StrictBool = False
    validation: Fraction = 0.0  # fraction of the train databases held out, whole, as the validation split (0: none)


@dataclass
class PromptParams:
    schema_format: Literal[SCHEMA_FORMATS] = "natural"
    sample_rows: Count = 3  # ddl_rows: rows shown per table
    chat_template: StrictBool = False  # wrap the prompt in the model's chat template
    history_sql: StrictBool = False  # CoSQL/SParC: show the gold SQL of earlier turns too
    values: StrictBool = False  # hint the database values the question mentions (sqlora.data.values)


@dataclass
class ModelParams:
    name: str = "smollm2-135m-instruct"
    dtype: Literal[DTYPES] = "auto"  # see sqlora.model.loader.resolve_dtype


@dataclass
class LoraParams:
    r: Positive = 16
    alpha: Positive = 32
    dropout: NonNegativeFloat = 0.0
    target_modules: Modules = "all-linear"


@dataclass
class TrainParams:
    epochs: PositiveFloat = 1.0
    batch_size: Positive = 8
    grad_accum: Positive = 1
    learning_rate: NonNegativeFloat = 1e-3
    lr_scheduler: Literal[LR_SCHEDULERS] = "cosine"
    warmup_ratio: Fraction = 0.05
    weight_decay: NonNegativeFloat = 0.0
    max_length: Positive = 512
    logging_steps: Positive = 5
    gradient_checkpointing: StrictBool = False  # recompute activations in backward: less memory, ~30% more time
    save_steps: Count = 20  # checkpoint every N optimizer steps, so a killed run resumes (0: never)
    # Questions per shared-prefix row: their prompt prefix (the schema) computed once (sqlora.train.shared_prefix);
    # 1: every question a row of its own.
    shared_prefix: Positive = 8
    launch: str = "python"  # the train stage's launcher, e.g. "accelerate launch --config_file configs/accelerate/ddp.yaml"


@dataclass
class PredictParams:
    # The model to generate with: the train stage's folder (base + adapter, full, or the base alone),
    # models/exported (the export stage's merged model), or any Hugging Face checkpoint folder.
    model: str = "models/finetuned"
    batch_size: Positive = 64  # sequences generated together (self_consistency: questions x num_samples)
    max_new_tokens: Positive = 128
    # greedy | beam | sample | self_consistency | execution_guided; sampling draws from the top-level seed
    decoding: Literal[DECODINGS] = "greedy"
    constrained: StrictBool = False  # schema-constrained decoding: no identifier the question's database does not have
    num_beams: Positive = 4  # beam
    require_rows: StrictBool = False  # execution_guided: the first candidate that runs *and returns rows* wins
    temperature: PositiveFloat = 0.7  # sample, self_consistency, execution_guided
    # sample, self_consistency, execution_guided: nucleus sampling (1.0: off)
    top_p: Annotated[float, BeforeValidator(_not_bool), Field(gt=0, le=1)] = 0.95
    # self_consistency: sampled candidates per question, voted on by their results; execution_guided: candidates
    # per question, the greedy answer then samples (our engine; the transformers fallback: beams, best first)
    num_samples: Positive = 5
    timeout_s: PositiveFloat = 10.0  # self_consistency, execution_guided: time limit of each candidate's query
    launch: str = "python"  # the predict stage's launcher, e.g. "torchrun --nproc_per_node 2": each process predicts a share


@dataclass
class EvalParams:
    timeout_s: PositiveFloat = 30.0
    workers: Positive = 2
    skip_missing_databases: StrictBool = False
    skip_bad_gold: StrictBool = False  # list and leave out questions whose gold query fails, instead of stopping
    ves_iterations: Count = 0  # BIRD: timed runs per correct prediction for VES (BIRD's own uses 100); 0: off
    # Where gold and predictions run: "" = the dataset's SQLite files; or a template with {db_id}, e.g.
    # postgresql://user@host/{db_id} or duck/{db_id}.duckdb (docs/evaluation.md).
    database: str = ""
    # Test-suite accuracy (TS) beside EX: the testsuite stage distils fuzzed instances of each dev database
    # (docs/evaluation.md#test-suite-accuracy-ts); suite_candidates: fuzzed instances tried per database.
    test_suite: StrictBool = False
    suite_candidates: Positive = 100


@dataclass
class GateParams:
    # The CI gate (`sqlora gate`): how far EX and EM (all questions, fractions as in metrics/eval.json)
    # may fall below the committed baseline before CI fails. 0.02 = 2 points.
    max_drop: NonNegativeFloat = 0.02


@dataclass
class Params:
    seed: Int = 42
    method: Literal[METHODS] = "lora"
    data: DataParams = field(default_factory=DataParams)
    prompt: PromptParams = field(default_factory=PromptParams)
    model: ModelParams = field(default_factory=ModelParams)
    lora: LoraParams = field(default_factory=LoraParams)
    train: TrainParams = field(default_factory=TrainParams)
    predict: PredictParams = field(default_factory=PredictParams)
    eval: EvalParams = field(default_factory=EvalParams)
    gate: GateParams = field(default_factory=GateParams)


def load_params(path: str | Path = "params.yaml") -> Params:
    """``path`` validated into Params; SqloraError, one line naming the file and the first bad key, otherwise."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SqloraError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SqloraError(f"{path}:{line} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict | None):
        raise SqloraError(f"{path}: must be a mapping of parameters, got {type(raw).__name__}")
    try:
        params = TypeAdapter(Params).validate_python(raw or {})
    except ValidationError as exc:
        raise SqloraError(f"{path}: {_describe(exc.errors()[0])}") from None
    if params.eval.test_suite and params.eval.database:
        raise SqloraError(f"{path}: 'eval.test_suite' scores the dataset's SQLite files; it cannot be combined with 'eval.database'")
    return params


def _describe(error: dict) -> str:
    """pydantic's error as one line naming the key: 'train.epochs' must be greater than 0, got 0."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "unexpected_keyword_argument":
        group: Any = Params
        for part in loc[:-1]:
            group = {f.name: f for f in dataclasses.fields(group)}[part].default_factory
        return f"unknown key '{key}' (known: {', '.join(f.name for f in dataclasses.fields(group))})"
    if error["type"] == "literal_error":
        return f"'{key}' is {error['input']!r}; expected one of {error['ctx']['expected'].replace(' or ', ', ').replace(chr(39), '')}"
    message = error["msg"].removeprefix("Value error, ")
    message = message.replace("Input should be", "must be", 1)
    return f"'{key}' {message[0].lower() + message[1:]}, got {error['input']!r}"
