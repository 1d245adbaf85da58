"""Typed configuration. Every field is checked up front; all problems are reported at once with their path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_serializer, model_validator

from tunesmith.errors import ProblemList, UserError

EMBEDDED_MODEL = "smollm2-135m-instruct"
# The default for `train.task: classification`: the all-MiniLM-L6-v2 encoder shipped in a PyPI package.
EMBEDDED_ENCODER = "all-minilm-l6-v2"


class _Spec(BaseModel):
    # allow_inf_nan=False: every number in every section must be finite (a NaN passes any `ge`/`le`
    # check, and an infinite weight decay or price would train or report nonsense).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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
    skip_invalid: bool = Field(False, description="leave out lines that cannot be read as examples (listed in the manifest) instead of refusing the file")
    clean: bool = Field(True, description="Unicode repair, whitespace normalisation, empty examples dropped, output-style lint")
    normalise_outputs: bool = Field(False, description="rewrite label spelling variants to the most common one")
    pii: Literal["off", "report", "redact", "drop"] = Field("report", description="what to do with personal data found")
    pii_ner: bool = Field(True, description="also find person names with spaCy NER (slower)")
    pii_allow: list[str] = Field(default_factory=list, description="terms never treated as personal data, e.g. a product or machine name")
    dedup: bool = Field(True, description="remove exact duplicates")
    near_dedup: bool = Field(True, description="also remove near-duplicates (MinHash LSH)")
    near_threshold: float = Field(0.85, gt=0.0, le=1.0, description="Jaccard similarity at or above which two examples are near-duplicates")
    group_by: str | None = Field(None, description="meta field whose groups never straddle splits, e.g. customer_id")
    validation_file: Path | None = Field(None, description="use this file as the validation split instead of carving one out")
    test_file: Path | None = Field(None, description="use this file as the test split instead of carving one out")
    augment: AugmentSpec | None = Field(None, description="paraphrase training examples (off unless given)")


class ReplaySpec(_Spec):
    """Examples of another dataset mixed into every epoch, so the model keeps what it already did well."""

    dataset: str | None = Field(None, description="name of a prepared dataset whose training split is replayed")
    path: Path | None = Field(None, description="a file, prepared when the run starts")
    fraction: float = Field(0.1, gt=0.0, le=0.9, description="share of each epoch's examples drawn from the replay data (fresh seeded draw per epoch)")

    @model_validator(mode="after")
    def _one_source(self) -> ReplaySpec:
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of data.replay.dataset or data.replay.path")
        return self


class KeepGeneralSpec(_Spec):
    """Self-distilled replay against forgetting: the base model's own greedy answers to general prompts shipped
    with tunesmith (eval/probes/general_prompts.jsonl, none of them a probe question), generated once per base
    model and cached in the workspace, mixed into every epoch as data.replay mixes a dataset. The model is then
    asked to keep answering general requests as it did, while it learns the task. On by default for causal-LM
    runs at 0.2: on the quickstart (2 epochs) it kept the general-skills probe where the base had it (drop 0.00,
    95% interval -0.06 to +0.06, against 0.33 unguarded) with exact match 0.90 (docs/forgetting.md)."""

    fraction: float = Field(
        0.2,
        gt=0.0,
        le=0.9,
        description="share of each epoch's examples that are the base model's own answers to general prompts (0.2: measured on the quickstart, docs/forgetting.md)",
    )
    max_new_tokens: int = Field(64, ge=8, le=2048, description="length limit of those answers; one cut off by it ends at its last full sentence")
    target: Literal["answer", "distribution"] = Field(
        "answer",
        description=(
            "what a replayed answer teaches: the base model's greedy tokens (cross-entropy, the default), or at each of its tokens"
            " the base model's whole next-token distribution (KL divergence to the base, read with the adapters switched off;"
            " adapter methods only, one more forward pass per step)"
        ),
    )


class DataSpec(_Spec):
    """Where the examples come from: a registered dataset name, or a file prepared on the fly."""

    dataset: str | None = Field(None, description="name of a dataset made by `tunesmith data prepare`")
    path: Path | None = Field(None, description="a JSONL/JSON/CSV/Parquet file; prepared when the run starts")
    format: Literal["messages", "prompt_completion", "input_output", "alpaca", "sharegpt", "classification", "preference", "prompt_chosen_rejected"] | None = (
        None
    )
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    prepare: PrepareSpec = Field(default_factory=PrepareSpec)
    replay: ReplaySpec | None = Field(None, description="mix another dataset's training examples into each epoch against forgetting")
    keep_general: KeepGeneralSpec | None = Field(
        default_factory=KeepGeneralSpec,
        description="keep general skills while learning the task: mix the base model's own answers to general prompts into each epoch "
        "(self-distilled replay; causal_lm runs; on by default at 0.2, `false` or null turns it off; docs/forgetting.md)",
    )

    @field_validator("keep_general", mode="before")
    @classmethod
    def _false_is_off(cls, value: Any) -> Any:
        return None if value is False else value  # `keep_general: false` reads as naturally as null

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of data.dataset (a prepared dataset) or data.path (a file)")
        if abs(sum(self.split_ratios) - 1.0) > 1e-6 or min(self.split_ratios) < 0:
            raise ValueError("split_ratios must be three non-negative numbers adding up to 1, e.g. [0.8, 0.1, 0.1]")
        return self


REMOTE_CODE_ENV = "TUNESMITH_TRUST_REMOTE_CODE"


def remote_code_allowed() -> bool:
    """The one rule for running a model folder's own Python (an `auto_map` in its config.json or
    tokenizer_config.json): only when the person running the command asks, with --trust-remote-code
    or TUNESMITH_TRUST_REMOTE_CODE=1. Never because a file says so: a run folder's config.yaml, a
    tokenizer or adapter config all travel with shared data, and would run their code on whoever opens it."""
    return os.environ.get(REMOTE_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


def allow_remote_code() -> None:
    """--trust-remote-code: the environment carries it, so launched training processes inherit it."""
    os.environ[REMOTE_CODE_ENV] = "1"


class ModelSpec(_Spec):
    name: str = Field(EMBEDDED_MODEL, description="the embedded default's name, a local HF folder, or a hub id")
    from_run: str | None = Field(
        None,
        description="continue tuning this run (id, name or folder): start from its adapter or weights, on its base, with its chat template (docs/training.md)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trust_remote_code: bool = Field(
        False, description="a record of whether the run allowed the model's own code; only --trust-remote-code (or TUNESMITH_TRUST_REMOTE_CODE=1) allows it"
    )


class LoraSpec(_Spec):
    """Low-rank adapters; used by methods lora, qlora and dora."""

    r: int = Field(16, ge=1, le=1024, description="rank of each adapter")
    alpha: int = Field(32, ge=1, description="scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="layer names to adapt, or all-linear")


class QloraSpec(_Spec):
    """4-bit quantisation of the frozen base (bitsandbytes) under LoRA adapters; used by method qlora."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen weights; NF4 is the QLoRA paper's")
    double_quant: bool = Field(True, description="also quantise the quantisation constants (saves ~0.4 bit per weight)")
    gradient_checkpointing: bool = Field(True, description="recompute activations in the backward pass: less memory, ~30% more compute")


class PromptTuningSpec(_Spec):
    """Learned virtual tokens prepended to the input embeddings; used by method prompt_tuning."""

    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="how many virtual tokens are learned")
    init: Literal["sample_vocab", "random", "text"] = Field(
        "sample_vocab", description="start from embeddings of random vocabulary tokens, from N(0,1) noise, or from init_text"
    )
    init_text: str | None = Field(None, description="with init: text, the words whose embeddings start the virtual tokens")

    @model_validator(mode="after")
    def _text_given(self) -> PromptTuningSpec:
        if (self.init == "text") != (self.init_text is not None):
            raise ValueError("init: text needs init_text, and init_text is only read with init: text")
        return self


class PrefixTuningSpec(_Spec):
    """Learned key/value prefixes in every attention layer; used by method prefix_tuning."""

    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="length of the learned prefix")
    projection: bool = Field(False, description="reparameterise the prefix through a 2-layer MLP (more parameters, steadier training)")
    projection_hidden_size: int | None = Field(None, ge=1, description="hidden size of that MLP (default: the model's hidden size)")


# Which settings section each method reads; a section given for a method that ignores it is refused.
METHOD_SECTIONS = {
    "lora": ("lora",),
    "qlora": ("lora", "qlora"),
    "dora": ("lora",),
    "prompt_tuning": ("prompt_tuning",),
    "prefix_tuning": ("prefix_tuning",),
    "full": (),
}
CLASSIFICATION_METHODS = ("full", "lora", "dora")
VIRTUAL_TOKEN_METHODS = ("prompt_tuning", "prefix_tuning")
# Generation during training needs a model that writes; a classifier only picks a label.
CAUSAL_LM_ONLY = ("generation_eval", "forgetting_every_steps")


# Peak learning rate of each method at the reference effective batch of 8 examples. LoRA's is
# what the demo learns well with on SmolLM2-135M (1e-3 to 2e-3); full fine-tuning moves every
# weight, so 50x lower keeps a pretrained model from being wrecked.
DEFAULT_LR = {"lora": 1e-3, "qlora": 1e-3, "dora": 1e-3, "full": 2e-5, "prompt_tuning": 3e-2, "prefix_tuning": 1e-2}
AUTO_RULE = (
    "auto: batch_size 4 on CPU, 8 on a GPU under 40 GiB, 16 above; effective batch (batch_size x grad_accum) "
    "n/100 clamped to 4..32 and rounded down to a power of 2 (n = training examples, replay included); "
    "epochs ceil(1000/n) clamped to 1..5; lr the method's default x sqrt(effective batch / 8)"
)


AUTO_INT_LIMITS = {"epochs": 1000, "batch_size": 4096, "grad_accum": 1024}


def _int_or_auto(value: Any, low: int, high: int) -> Any:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be a whole number from {low} to {high}, or 'auto'")
    return value


class GenerationEvalSpec(_Spec):
    """Generate on a fixed validation sample during training and score it like `tunesmith eval`."""

    every_steps: int = Field(..., ge=1, description="generate and score at every multiple of this many optimizer steps")
    sample_size: int = Field(32, ge=1, le=100_000, description="validation examples generated each time (the same ones every time)")
    max_new_tokens: int = Field(64, ge=1, le=8192)


PREFERENCE_BETA = {"dpo": 0.1, "simpo": 2.0, "orpo": 0.1}


class PreferenceSpec(_Spec):
    """How `train.task: preference` learns from pairs (docs/preference.md)."""

    objective: Literal["dpo", "simpo", "orpo"] = Field(
        "dpo",
        description="dpo: against the base model's log-probabilities (computed once before training); simpo and orpo: reference-free",
    )
    beta: float | None = Field(
        None,
        gt=0,
        le=100,
        description="strength: DPO's and SimPO's reward scale, ORPO's weight of the odds-ratio term; default "
        + ", ".join(f"{k} {v:g}" for k, v in PREFERENCE_BETA.items()),
    )
    simpo_gamma: float = Field(0.5, ge=0, le=10, description="SimPO's target reward margin (read by objective simpo only)")

    @property
    def strength(self) -> float:
        return self.beta if self.beta is not None else PREFERENCE_BETA[self.objective]


class TrainSpec(_Spec):
    task: Literal["causal_lm", "classification", "preference"] = Field(
        "causal_lm",
        description="causal_lm: learn to write the assistant's answer; classification: a classifier head predicts the example's label; "
        "preference: learn from preferred/rejected answer pairs (DPO, SimPO, ORPO)",
    )
    method: Literal["lora", "qlora", "dora", "full", "prompt_tuning", "prefix_tuning"] = Field(
        "lora", description="which parameters learn; see the methods table in docs/training.md"
    )
    epochs: int | Literal["auto"] = Field(2, description=f"passes over the training split (ignored when max_steps is set). {AUTO_RULE}")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps; overrides epochs")
    lr: float | Literal["auto"] | None = Field(
        None,
        description=f"peak learning rate; default: the method's ({', '.join(f'{k} {v:g}' for k, v in DEFAULT_LR.items())}); 'auto' scales it with the batch",
    )
    lr_multiplier: float | None = Field(None, gt=0, le=100, description="peak lr as a multiple of the method's default (instead of lr)")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="lr after warm-up: linear or cosine decay to 0, or constant")
    batch_size: int | Literal["auto"] = Field(8, description="examples per micro-batch")
    grad_accum: int | Literal["auto"] = Field(1, description="micro-batches per optimiser step")
    max_seq_len: int = Field(512, ge=16, le=1_000_000)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="share of the steps over which the lr rises linearly to its peak")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    evals_per_epoch: int = Field(1, ge=1, le=100, description="validation loss (and a checkpoint) this many times per epoch")
    save_every_steps: int | None = Field(
        None, ge=1, description="also write a resumable checkpoint every N steps (default: at each validation only); the latest and the best are kept"
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many validations without a new best validation loss; the best checkpoint is the result"
    )
    train_on: Literal["assistant", "all"] = "assistant"
    packing: Literal["auto"] | bool = Field(
        "auto",
        description="lay each batch's examples end to end in rows of up to max_seq_len tokens, with no attention "
        "across examples (same loss, less padding); auto packs whenever padding would be needed on models that take "
        "per-example attention (flat rows, no padding at all), else when length-grouped batches would be over 10% padding",
    )
    tokens_per_forward: int | None = Field(
        None,
        ge=16,
        description="split each batch into forward passes of at most this many tokens (padding included): less memory, "
        "same result; default max(max_seq_len, 1024) on CPU, no split on GPU",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute each layer's activations in the backward pass instead of keeping them: activation memory "
        "of one layer instead of all (long sequences, large models) for about a third more compute; qlora has its own "
        "switch, on by default",
    )
    seed: int = 0
    lora: LoraSpec = Field(default_factory=LoraSpec, description="settings of lora, qlora and dora")
    qlora: QloraSpec = Field(default_factory=QloraSpec, description="settings of qlora's quantised base")
    prompt_tuning: PromptTuningSpec = Field(default_factory=PromptTuningSpec, description="settings of prompt_tuning")
    prefix_tuning: PrefixTuningSpec = Field(default_factory=PrefixTuningSpec, description="settings of prefix_tuning")
    preference: PreferenceSpec = Field(default_factory=PreferenceSpec, description="settings of task preference: objective and beta")
    price_per_hour: float | None = Field(None, ge=0, description="what an hour of this machine costs; the estimate shows the run's cost")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="also send every metrics record to these trackers (offline: files in the run folder or the workspace)"
    )
    generation_eval: GenerationEvalSpec | None = Field(
        None, description="task metrics from generation on a validation sample during training (off unless given)"
    )
    forgetting_every_steps: int | None = Field(
        None,
        ge=1,
        description="score the general-skills probe (see `tunesmith eval --forgetting`) every N optimizer steps, logged as forgetting/* records (off unless given)",
    )

    @field_validator("method")
    @classmethod
    def _method_fits_task(cls, method: str, info: ValidationInfo) -> str:
        if info.data.get("task") == "classification" and method not in CLASSIFICATION_METHODS:
            raise ValueError(f"train.task classification trains with {', '.join(CLASSIFICATION_METHODS)}, not {method}")
        return method

    @field_validator("lora", "qlora", "prompt_tuning", "prefix_tuning")
    @classmethod
    def _section_fits_method(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs only for sections the user wrote: settings that would be silently ignored are a mistake to report.
        method = info.data.get("method")
        if method is not None and info.field_name not in METHOD_SECTIONS[method]:
            readers = [m for m, sections in METHOD_SECTIONS.items() if info.field_name in sections]
            raise ValueError(f"only read by method {' or '.join(readers)}, but train.method is {method}; remove this section or change the method")
        return value

    @model_serializer(mode="wrap")
    def _only_sections_in_use(self, handler: Any) -> Any:
        # The resolved config.yaml shows the settings that took effect, and loads again under the rule above.
        data = handler(self)
        if isinstance(data, dict):
            for section in ("lora", "qlora", "prompt_tuning", "prefix_tuning"):
                if section not in METHOD_SECTIONS[self.method]:
                    data.pop(section, None)
            if self.task != "preference":
                data.pop("preference", None)
        return data

    @model_validator(mode="after")
    def _packing_fits_method(self) -> TrainSpec:
        if self.packing is True and self.method in VIRTUAL_TOKEN_METHODS:
            raise ValueError(
                f"train.packing true cannot be used with {self.method}: its virtual tokens precede a whole row, not each packed example; use packing auto or false"
            )
        return self

    @model_validator(mode="after")
    def _preference_settings(self) -> TrainSpec:
        if "preference" in self.model_fields_set and self.task != "preference":
            raise ValueError(f"train.preference is read by task preference only, but train.task is {self.task}; remove the section or set task: preference")
        return self

    @model_validator(mode="after")
    def _classification_settings(self) -> TrainSpec:
        # Settings a classifier would ignore are refused, not dropped silently.
        if self.task == "classification":
            unsupported = [name for name in CAUSAL_LM_ONLY if getattr(self, name) is not None]
            if unsupported:
                raise ValueError(
                    f"train.task classification does not support {', '.join(unsupported)}: a classifier writes no text to score; remove them or use task causal_lm"
                )
            if self.packing is True:
                raise ValueError("train.packing true cannot be used with task classification: the head reads one example per row; use packing auto or false")
        return self

    @field_validator("epochs", "batch_size", "grad_accum", mode="before")
    @classmethod
    def _whole_or_auto(cls, value: Any, info: ValidationInfo) -> Any:
        return _int_or_auto(value, 1, AUTO_INT_LIMITS[info.field_name])

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_fits_method(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1.0:
            raise ValueError("must be a number above 0 and at most 1.0, or 'auto'")
        if info.data.get("method") == "full" and value > 1e-3:
            raise ValueError(f"lr {value} is far too high for full fine-tuning and would wreck the model; use 1e-5 to 1e-4")
        return float(value)

    @field_validator("lr_multiplier")
    @classmethod
    def _one_lr(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("lr") is not None:
            raise ValueError("give train.lr or train.lr_multiplier, not both")
        method = info.data.get("method")
        if value is not None and method == "full" and value * DEFAULT_LR["full"] > 1e-3:
            raise ValueError(f"{value} x the full fine-tuning default ({DEFAULT_LR['full']:g}) is far too high and would wreck the model")
        return value


class EvalSpec(_Spec):
    split: Literal["validation", "test"] = "test"
    max_new_tokens: int = Field(64, ge=1, le=8192)
    batch_size: int = Field(
        32, ge=1, le=1024, description="prompts generated together; batched generation ran 7x one-at-a-time at 32 on a 2-core CPU (benchmarks/README.md)"
    )
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

    @model_validator(mode="after")
    def _encoder_for_classification(self) -> RunSpec:
        # The chat model is the default for generation; a classifier defaults to the embedded encoder instead.
        if self.train.task == "classification" and "name" not in self.model.model_fields_set:
            self.model.name = EMBEDDED_ENCODER
        return self

    @model_validator(mode="after")
    def _no_replay_for_classification(self) -> RunSpec:
        # The classifier trains on its own labels only; a replay set would be silently ignored.
        if self.train.task != "causal_lm" and self.data.replay is not None:
            raise ValueError(f"data.replay mixes in examples for causal_lm runs only; remove it for train.task {self.train.task}")
        if self.train.task != "causal_lm" and self.data.keep_general is not None:
            if "keep_general" in self.data.model_fields_set:
                raise ValueError(f"data.keep_general mixes in answers for causal_lm runs only; set it to null for train.task {self.train.task}")
            self.data.keep_general = None  # the default is for causal LMs; the resolved config shows it off
        return self

    @model_validator(mode="after")
    def _base_distribution_needs_adapters(self) -> RunSpec:
        # The base's distribution comes from the same weights with the adapters switched off; a full
        # fine-tune or a prompt method has no such switch, and a second copy of the model would double its memory.
        keep = self.data.keep_general
        if keep is not None and keep.target == "distribution" and "lora" not in METHOD_SECTIONS[self.train.method]:
            raise ValueError(
                f"data.keep_general.target distribution reads the base model with the adapters switched off, and method {self.train.method}"
                " has none; use method lora, qlora or dora, or target answer"
            )
        return self


NO_DATA = "no data given; pass --data NAME_OR_FILE or set data.dataset / data.path in the config"


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        path = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting; check the spelling (see examples/ for every setting)"
        elif error["type"] == "missing" and tuple(error["loc"]) == ("data",):
            message = NO_DATA
        out.append(f"{path}: {message}")
    return out


def validate_spec(cls: type[BaseModel], data: dict[str, Any], source: str, problems: list[str] | None = None) -> Any:
    """`data` checked against `cls`; every problem (with `problems` found before, e.g. in flags) raised as one list."""
    found = list(problems or [])
    try:
        spec = cls.model_validate(data)
    except ValidationError as exc:
        found += _problems(exc)
    if found:
        raise ProblemList(f"invalid configuration in {source}", found, fix="correct the fields named above")
    return spec


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> str | None:
    """Sets `value` at the dotted path; the problem, if a section on the way is not a mapping."""
    node = data
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            section = ".".join(parents[: depth + 1])
            return f"{dotted}: cannot be set, {section} is not a section (it is {type(node).__name__} in the config)"
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        # A section given whole (--data's source) updates the config's section, a None in it removing
        # that key: replacing the section would silently drop the config's other settings in it.
        node[leaf] = {key: item for key, item in {**node[leaf], **value}.items() if item is not None}
        return None
    node[leaf] = value
    return None


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no such config file: {path}", fix="check the path; examples/ has ready-made configs")
    from tunesmith.files import read_yaml

    loaded = read_yaml(path, fix="fix the YAML syntax at that line")
    if loaded is not None and not isinstance(loaded, dict):
        raise UserError("the config must be a mapping of sections (model, data, train, eval)", where=str(path))
    return loaded or {}


def load_run_spec(path: Path | None, overrides: dict[str, Any] | None = None, problems: list[str] | None = None) -> RunSpec:
    """A YAML file (optional) plus command-line overrides given as dotted paths (`train.lr`).
    Every problem is raised at once as a ProblemList: `problems` (found in the flags by the caller),
    overrides that cannot be placed, unknown or invalid settings and a missing data source, each with its path."""
    found = list(problems or [])
    flags = found or any(value is not None for value in (overrides or {}).values())
    source = f"{path} and the command-line flags" if path and flags else str(path) if path else "command-line flags"
    try:
        data = _read_config(path) if path is not None else {}
    except UserError as exc:
        if not found:
            raise
        # An unreadable file leaves nothing to check the flags against: its error, and the flags' own.
        head = f"{exc.where}: {exc}" if exc.where else str(exc)
        raise ProblemList(
            f"invalid configuration in {source}", [f"{head}; {exc.fix}" if exc.fix else head, *found], fix="correct the problems named above"
        ) from None
    for dotted, value in (overrides or {}).items():
        if value is not None and (problem := _set_path(data, dotted, value)):
            found.append(problem)
    return run_spec_from(data, source, found)


def run_spec_from(data: dict[str, Any] | RunSpec, source: str, problems: list[str] | None = None) -> RunSpec:
    """A run spec from a mapping (a parsed config, or one a program built) or a RunSpec, checked the same
    way whatever its origin, every problem at once (`problems`: found before, in flags); `source` names it
    in error messages. model.trust_remote_code is never taken from the spec itself (see
    remote_code_allowed). A RunSpec given is copied, not changed."""
    if isinstance(data, RunSpec):
        spec = data.model_copy(deep=True)
    else:
        spec = validate_spec(RunSpec, data, source, problems)
    if spec.model.trust_remote_code and not remote_code_allowed():
        from tunesmith.ui import console

        console.print(f"[yellow]model.trust_remote_code in {source} is not obeyed[/]: the model's own code runs only with --trust-remote-code", soft_wrap=True)
    spec.model.trust_remote_code = remote_code_allowed()  # the run's config.yaml records what was in effect
    return spec


def spec_to_yaml(spec: BaseModel, extra: dict[str, Any] | None = None) -> str:
    payload = spec.model_dump(mode="json")
    if extra:
        payload = {**extra, **payload}
    return yaml.safe_dump(payload, sort_keys=False)
