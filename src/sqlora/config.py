"""params.yaml → typed, validated dataclasses.

Every stage reads its slice of the parameters through :func:`load_params`, so a bad
value is reported once, the same way everywhere: one line naming the file and key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sqlora.errors import SqloraError

METHODS = ("lora", "qlora", "full", "none")
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
# model.dtype: the precision train, predict, ask and export compute in (auto: chosen by the hardware).
DTYPES = ("auto", "float32", "bfloat16", "float16")
DATASETS = ("sample", "spider", "bird", "cosql", "sparc", "wikisql", "custom")  # data.dataset: the layouts sqlora.data reads
SCHEMA_FORMATS = ("natural", "ddl", "ddl_rows", "compact")  # prompt.schema_format: how sqlora.data.schema describes a schema
DECODINGS = ("greedy", "beam", "sample", "self_consistency", "execution_guided")


@dataclass(frozen=True)
class DataParams:
    dataset: str = "sample"
    source: str = "data/sample"
    schema_source: str = ""  # CoSQL/SParC without their own tables.json: the Spider folder
    max_train_examples: int = 0
    max_dev_examples: int = 0
    skip_bad: bool = False
    validation: float = 0.0  # fraction of the train databases held out, whole, as the validation split (0: none)


@dataclass(frozen=True)
class PromptParams:
    schema_format: str = "natural"
    sample_rows: int = 3  # ddl_rows: rows shown per table
    chat_template: bool = False  # wrap the prompt in the model's chat template
    history_sql: bool = False  # CoSQL/SParC: show the gold SQL of earlier turns too
    values: bool = False  # hint the database values the question mentions (sqlora.data.values)


@dataclass(frozen=True)
class ModelParams:
    name: str = "smollm2-135m-instruct"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (see sqlora.model.loader.resolve_dtype)


@dataclass(frozen=True)
class LoraParams:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass(frozen=True)
class TrainParams:
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_length: int = 512
    logging_steps: int = 5
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    save_steps: int = 20  # checkpoint every N optimizer steps, so a killed run resumes (0: never)
    # Questions per shared-prefix row: their prompt prefix (the schema) computed once (sqlora.train.shared_prefix);
    # 1: every question a row of its own.
    shared_prefix: int = 8
    launch: str = "python"  # the train stage's launcher, e.g. "accelerate launch --config_file configs/accelerate/ddp.yaml"


@dataclass(frozen=True)
class PredictParams:
    # The model to generate with: the train stage's folder (base + adapter, full, or the base alone),
    # models/exported (the export stage's merged model), or any Hugging Face checkpoint folder.
    model: str = "models/finetuned"
    batch_size: int = 64  # sequences generated together (self_consistency: questions x num_samples)
    max_new_tokens: int = 128
    # greedy | beam | sample | self_consistency | execution_guided; sampling draws from the top-level seed
    decoding: str = "greedy"
    constrained: bool = False  # schema-constrained decoding: no identifier the question's database does not have
    num_beams: int = 4  # beam
    require_rows: bool = False  # execution_guided: the first candidate that runs *and returns rows* wins
    temperature: float = 0.7  # sample, self_consistency, execution_guided
    top_p: float = 0.95  # sample, self_consistency, execution_guided: nucleus sampling (1.0: off)
    # self_consistency: sampled candidates per question, voted on by their results; execution_guided: candidates
    # per question, the greedy answer then samples (our engine; the transformers fallback: beams, best first)
    num_samples: int = 5
    timeout_s: float = 10.0  # self_consistency, execution_guided: time limit of each candidate's query
    launch: str = "python"  # the predict stage's launcher, e.g. "torchrun --nproc_per_node 2": each process predicts a share


@dataclass(frozen=True)
class EvalParams:
    timeout_s: float = 30.0
    workers: int = 2
    skip_missing_databases: bool = False
    skip_bad_gold: bool = False  # list and leave out questions whose gold query fails, instead of stopping
    ves_iterations: int = 0  # BIRD: timed runs per correct prediction for VES (BIRD's own uses 100); 0: off
    # Where gold and predictions run: "" = the dataset's SQLite files; or a template with {db_id}, e.g.
    # postgresql://user@host/{db_id} or duck/{db_id}.duckdb (docs/evaluation.md).
    database: str = ""
    # Test-suite accuracy (TS) beside EX: the testsuite stage distils fuzzed instances of each dev database
    # (docs/evaluation.md#test-suite-accuracy-ts); suite_candidates: fuzzed instances tried per database.
    test_suite: bool = False
    suite_candidates: int = 100


@dataclass(frozen=True)
class GateParams:
    # The CI gate (`sqlora gate`): how far EX and EM (all questions, fractions as in metrics/eval.json)
    # may fall below the committed baseline before CI fails. 0.02 = 2 points.
    max_drop: float = 0.02


@dataclass(frozen=True)
class Params:
    seed: int = 42
    method: str = "lora"
    data: DataParams = field(default_factory=DataParams)
    prompt: PromptParams = field(default_factory=PromptParams)
    model: ModelParams = field(default_factory=ModelParams)
    lora: LoraParams = field(default_factory=LoraParams)
    train: TrainParams = field(default_factory=TrainParams)
    predict: PredictParams = field(default_factory=PredictParams)
    eval: EvalParams = field(default_factory=EvalParams)
    gate: GateParams = field(default_factory=GateParams)


def _build(cls: type, raw: Any, where: str, path: Path):
    """Instantiate dataclass ``cls`` from a mapping, checking keys and value types."""
    if not isinstance(raw, dict):
        raise SqloraError(f"{path}: '{where}' must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise SqloraError(f"{path}: unknown key '{key}' (known: {', '.join(fields)})")
    values = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        default = fields[name].default
        if default is dataclasses.MISSING:  # a nested group
            values[name] = _build(fields[name].default_factory, value, key, path)
            continue
        values[name] = _coerce(value, default, key, path)
    return cls(**values)


def _coerce(value: Any, default: Any, key: str, path: Path) -> Any:
    """Check ``value`` against the type of its default (YAML gives 1e-3 as a string, 1 as an int)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None:
            if isinstance(default, float):
                return number
            if number == int(number):
                return int(number)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if key == "lora.target_modules" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    expected = "a list of module names or 'all-linear'" if key == "lora.target_modules" else type(default).__name__
    raise SqloraError(f"{path}: '{key}' must be {expected}, got {value!r}")


def _check_choice(value: str, choices: tuple[str, ...], key: str, path: Path) -> None:
    if value not in choices:
        raise SqloraError(f"{path}: '{key}' is {value!r}; expected one of {', '.join(choices)}")


def _check_positive(value: float, key: str, path: Path, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise SqloraError(f"{path}: '{key}' must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SqloraError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SqloraError(f"{path}:{line} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    params: Params = _build(Params, raw or {}, "", path)

    _check_choice(params.method, METHODS, "method", path)
    _check_choice(params.data.dataset, DATASETS, "data.dataset", path)
    _check_choice(params.prompt.schema_format, SCHEMA_FORMATS, "prompt.schema_format", path)
    _check_choice(params.train.lr_scheduler, LR_SCHEDULERS, "train.lr_scheduler", path)
    _check_choice(params.model.dtype, DTYPES, "model.dtype", path)
    _check_choice(params.predict.decoding, DECODINGS, "predict.decoding", path)
    for key, value in [
        ("data.max_train_examples", params.data.max_train_examples),
        ("data.max_dev_examples", params.data.max_dev_examples),
        ("prompt.sample_rows", params.prompt.sample_rows),
        ("lora.dropout", params.lora.dropout),
        ("train.warmup_ratio", params.train.warmup_ratio),
        ("train.weight_decay", params.train.weight_decay),
        ("train.learning_rate", params.train.learning_rate),
        ("eval.ves_iterations", params.eval.ves_iterations),
        ("train.save_steps", params.train.save_steps),
        ("gate.max_drop", params.gate.max_drop),
    ]:
        _check_positive(value, key, path, allow_zero=True)
    for key, value in [
        ("lora.r", params.lora.r),
        ("lora.alpha", params.lora.alpha),
        ("train.epochs", params.train.epochs),
        ("train.batch_size", params.train.batch_size),
        ("train.grad_accum", params.train.grad_accum),
        ("train.max_length", params.train.max_length),
        ("train.logging_steps", params.train.logging_steps),
        ("train.shared_prefix", params.train.shared_prefix),
        ("predict.batch_size", params.predict.batch_size),
        ("predict.max_new_tokens", params.predict.max_new_tokens),
        ("predict.num_beams", params.predict.num_beams),
        ("predict.temperature", params.predict.temperature),
        ("predict.top_p", params.predict.top_p),
        ("predict.num_samples", params.predict.num_samples),
        ("predict.timeout_s", params.predict.timeout_s),
        ("eval.timeout_s", params.eval.timeout_s),
        ("eval.workers", params.eval.workers),
        ("eval.suite_candidates", params.eval.suite_candidates),
    ]:
        _check_positive(value, key, path)
    if params.eval.test_suite and params.eval.database:
        raise SqloraError(f"{path}: 'eval.test_suite' scores the dataset's SQLite files; it cannot be combined with 'eval.database'")
    if not 0 <= params.data.validation < 1:
        raise SqloraError(f"{path}: 'data.validation' must be in [0, 1) (a fraction of the train databases), got {params.data.validation}")
    if params.train.warmup_ratio >= 1:
        raise SqloraError(f"{path}: 'train.warmup_ratio' must be in [0, 1), got {params.train.warmup_ratio}")
    if params.predict.top_p > 1:
        raise SqloraError(f"{path}: 'predict.top_p' must be in (0, 1], got {params.predict.top_p}")
    if not params.lora.target_modules:
        raise SqloraError(f"{path}: 'lora.target_modules' is empty")
    return params
