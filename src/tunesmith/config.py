"""Typed configuration. Every field is checked up front; all problems are reported at once with their path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith.errors import ProblemList, UserError

EMBEDDED_MODEL = "smollm2-135m-instruct"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentSpec(_Spec):
    """Paraphrases of training examples' user turns; synthetic examples never enter validation or test."""

    per_example: int = Field(1, ge=1, le=10, description="paraphrases tried per chosen example")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of training examples to paraphrase")
    model: str = Field(EMBEDDED_MODEL, description="local model that writes paraphrases (when no url is given)")
    url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    endpoint_model: str | None = Field(None, description="model name to ask the endpoint for")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's key")
    max_new_tokens: int = Field(256, ge=8, le=4096)


class PrepareSpec(_Spec):
    """The steps `data prepare` runs between reading a file and writing the dataset, each switchable."""

    mapping: dict[str, str] = Field(default_factory=dict, description="canonical field -> the file's field, e.g. {prompt: question}")
    clean: bool = Field(True, description="Unicode repair, whitespace normalisation, empty examples dropped, output-style lint")
    normalise_outputs: bool = Field(False, description="rewrite label spelling variants to the most common one")
    pii: Literal["off", "report", "redact", "drop"] = Field("report", description="what to do with personal data found")
    pii_ner: bool = Field(True, description="also find person names with spaCy NER (slower)")
    dedup: bool = Field(True, description="remove exact duplicates")
    near_dedup: bool = Field(True, description="also remove near-duplicates (MinHash LSH)")
    near_threshold: float = Field(0.85, gt=0.0, le=1.0, description="Jaccard similarity at or above which two examples are near-duplicates")
    group_by: str | None = Field(None, description="meta field whose groups never straddle splits, e.g. customer_id")
    validation_file: Path | None = Field(None, description="use this file as the validation split instead of carving one out")
    test_file: Path | None = Field(None, description="use this file as the test split instead of carving one out")
    augment: AugmentSpec | None = Field(None, description="paraphrase training examples (off unless given)")


class DataSpec(_Spec):
    """Where the examples come from: a registered dataset name, or a file prepared on the fly."""

    dataset: str | None = Field(None, description="name of a dataset made by `tunesmith data prepare`")
    path: Path | None = Field(None, description="a JSONL/JSON/CSV/Parquet file; prepared when the run starts")
    format: Literal["messages", "prompt_completion", "input_output", "alpaca", "sharegpt", "classification"] | None = None
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    prepare: PrepareSpec = Field(default_factory=PrepareSpec)

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of data.dataset (a prepared dataset) or data.path (a file)")
        if abs(sum(self.split_ratios) - 1.0) > 1e-6 or min(self.split_ratios) < 0:
            raise ValueError("split_ratios must be three non-negative numbers adding up to 1, e.g. [0.8, 0.1, 0.1]")
        return self


class ModelSpec(_Spec):
    name: str = Field(EMBEDDED_MODEL, description="the embedded default's name, a local HF folder, or a hub id")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trust_remote_code: bool = False


class LoraSpec(_Spec):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainSpec(_Spec):
    method: Literal["lora", "full"] = "lora"
    epochs: int = Field(2, ge=1, le=1000)
    lr: float = Field(1e-3, gt=0, le=1.0, description="peak learning rate")
    batch_size: int = Field(8, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=1024)
    max_seq_len: int = Field(512, ge=16, le=1_000_000)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    evals_per_epoch: int = Field(1, ge=1, le=100, description="validation loss (and a checkpoint) this many times per epoch")
    train_on: Literal["assistant", "all"] = "assistant"
    seed: int = 0
    lora: LoraSpec = Field(default_factory=LoraSpec)

    @model_validator(mode="after")
    def _lr_fits_method(self) -> "TrainSpec":
        if self.method == "full" and self.lr > 1e-3:
            raise ValueError(f"lr {self.lr} is far too high for full fine-tuning and would wreck the model; use 1e-5 to 1e-4")
        return self


class EvalSpec(_Spec):
    split: Literal["validation", "test"] = "test"
    max_new_tokens: int = Field(64, ge=1, le=8192)
    batch_size: int = Field(16, ge=1, le=1024)
    limit: int | None = Field(None, ge=1, description="evaluate only the first N examples")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 decodes greedily (reproducible); above 0 samples")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (only when temperature > 0)")
    seed: int = Field(0, description="seeds sampling, so a sampled evaluation can be repeated")
    metrics: list[str] | None = Field(None, description="metric names (see `tunesmith score --help`); None chooses by task")
    custom_metrics: list[str] = Field(default_factory=list, description="your metrics as module:function, fn(predictions, references) -> float | dict")
    perplexity: bool = Field(True, description="perplexity of the reference answers under each model (from its loss on them)")
    system_prompt: str | None = Field(None, description="system prompt for the `system` prompting baseline")
    shots: int = Field(3, ge=1, le=64, description="training examples shown as prior turns in the `few-shot` baseline")
    forgetting_threshold: float = Field(0.05, ge=0.0, le=1.0, description="warn when the general-skills probe score drops by more than this")


class RunSpec(_Spec):
    name: str | None = Field(None, description="a label for the run; the run id is derived from it")
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        path = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting; check the spelling (see examples/ for every setting)"
        out.append(f"{path}: {message}")
    return out


def validate_spec(cls: type[BaseModel], data: dict[str, Any], source: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ProblemList(f"invalid configuration in {source}", _problems(exc), fix="correct the fields named above") from None


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"cannot set {dotted}: '{key}' is not a section", fix="check the config file")
    node[leaf] = value


def load_run_spec(path: Path | None, overrides: dict[str, Any] | None = None) -> RunSpec:
    """A YAML file (optional) plus command-line overrides given as dotted paths (`train.lr`)."""
    data: dict[str, Any] = {}
    source = str(path) if path else "command-line flags"
    if path is not None:
        if not path.is_file():
            raise UserError(f"no such config file: {path}", fix="check the path; examples/ has ready-made configs")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise UserError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where, fix="fix the YAML syntax at that line") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError("the config must be a mapping of sections (model, data, train, eval)", where=str(path))
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, dotted, value)
    if "data" not in data:
        raise UserError(f"no data given in {source}", fix="pass --data NAME_OR_FILE or set data.dataset / data.path in the config")
    return validate_spec(RunSpec, data, source)


def spec_to_yaml(spec: BaseModel, extra: dict[str, Any] | None = None) -> str:
    payload = spec.model_dump(mode="json")
    if extra:
        payload = {**extra, **payload}
    return yaml.safe_dump(payload, sort_keys=False)
