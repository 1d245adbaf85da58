"""The search space: which run settings a study varies and over what range. A default per training
method, changed or replaced by a small YAML file; every parameter is a dotted path into the run
config (`train.lr`, `train.lora.r`) and both ends of its range are checked against RunSpec's own
rules before any trial runs, so a bad range fails the command, not trial 7."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunesmith.config import RunSpec, run_spec_from, validate_spec
from tunesmith.errors import ProblemList, UserError


class Param(BaseModel):
    """One parameter: a range (low..high, log scale or a step) or a list of choices."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    low: float | None = Field(None, description="smallest value tried")
    high: float | None = Field(None, description="largest value tried")
    log: bool = Field(False, description="sample on a log scale (learning rates)")
    step: float | None = Field(None, gt=0, description="values on a grid of this step from low")
    choices: list[Any] | None = Field(None, min_length=1, description="try only these values")

    @model_validator(mode="after")
    def _range_or_choices(self) -> Param:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices (a list)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low above 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self

    @property
    def whole(self) -> bool:
        return self.choices is None and float(self.low or 0).is_integer() and float(self.high or 0).is_integer() and not self.log and self.step in (None, 1)

    def distribution(self, integer: bool) -> optuna.distributions.BaseDistribution:
        if self.choices is not None:
            return optuna.distributions.CategoricalDistribution(self.choices)
        assert self.low is not None and self.high is not None
        if integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def ends(self) -> list[Any]:
        """The values that bound the range, checked against the run config's rules."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


class SpaceFile(BaseModel):
    """space.yaml: `params` change or add to the method's default space (a `null` entry removes one);
    `use_defaults: false` starts from nothing instead."""

    model_config = ConfigDict(extra="forbid")
    use_defaults: bool = Field(True, description="start from the training method's default space")
    params: dict[str, Param | None] = Field(default_factory=dict, description="config path -> {low, high, log, step}, {choices: [...]} or a list of choices")

    @field_validator("params", mode="before")
    @classmethod
    def _list_is_choices(cls, value: Any) -> Any:
        # a bare list is the short form of {choices: [...]}: one shape to validate, so an error names one field
        if isinstance(value, dict):
            return {k: {"choices": v} if isinstance(v, list) else v for k, v in value.items()}
        return value


LORA = {
    "train.lr": Param(low=1e-5, high=1e-2, log=True),
    "train.lora.r": Param(choices=[4, 8, 16, 32, 64]),
    "train.lora.alpha": Param(choices=[8, 16, 32, 64, 128]),
    "train.epochs": Param(low=1, high=4),
    "train.lora.dropout": Param(low=0.0, high=0.2),
}
VIRTUAL = {"train.lr": Param(low=1e-3, high=1e-1, log=True), "train.epochs": Param(low=1, high=4)}
# Full fine-tuning: RunSpec refuses lr above 1e-3 for it (it wrecks a pretrained model).
DEFAULT_SPACES: dict[str, dict[str, Param]] = {
    "lora": LORA,
    "qlora": LORA,
    "dora": LORA,
    "full": {"train.lr": Param(low=1e-6, high=1e-4, log=True), "train.epochs": Param(low=1, high=4)},
    "prompt_tuning": {**VIRTUAL, "train.prompt_tuning.num_virtual_tokens": Param(choices=[8, 16, 32, 64])},
    "prefix_tuning": {**VIRTUAL, "train.prefix_tuning.num_virtual_tokens": Param(choices=[8, 16, 32, 64])},
}


class Space:
    """The parameters of one study, as Optuna distributions, and how a trial's values become a run config."""

    def __init__(self, params: dict[str, Param], base: RunSpec):
        self.params = params
        self.distributions = {name: param.distribution(_is_int(base, name)) for name, param in params.items()}

    def apply(self, base: RunSpec, values: dict[str, Any], source: str) -> RunSpec:
        """The base config with these values set; a searched lr replaces any lr_multiplier."""
        data = base.model_dump(mode="json", exclude_none=False)
        for name, value in values.items():
            node = data
            *parents, leaf = name.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        if "train.lr" in values:
            data["train"]["lr_multiplier"] = None
        return run_spec_from(data, source)

    def as_dict(self) -> dict[str, Any]:
        return {name: param.model_dump(exclude_none=True, exclude_defaults=True) for name, param in self.params.items()}


def _is_int(base: RunSpec, name: str) -> bool:
    """Whether the config field at `name` holds whole numbers (r, epochs) rather than any number."""
    value: Any = base
    for key in name.split("."):
        value = getattr(value, key, None)
    return isinstance(value, int) and not isinstance(value, bool) or (name == "train.epochs")


# The general-skills replay's share, searched only when the study limits the probe's drop: without that
# constraint the search would trade general skills away for the task metric, a trade nobody asked for.
REPLAY_SHARE = {"data.keep_general.fraction": Param(low=0.05, high=0.4)}


def default_space(base: RunSpec, *, keeps_general: bool = False) -> dict[str, Param]:
    params = dict(DEFAULT_SPACES[base.train.method])
    if base.train.max_steps is not None:
        params.pop("train.epochs", None)  # max_steps overrides epochs: searching epochs would change nothing
    if keeps_general and base.data.keep_general is not None:
        params.update(REPLAY_SHARE)
    return params


def build_space(base: RunSpec, path: Path | None = None, stored: dict[str, Any] | None = None, *, keeps_general: bool = False) -> Space:
    """The study's space: the method's default (with the replay's share when the study limits the
    general-skills drop), changed by the YAML file at `path`, or as a resumed study stored it."""
    if stored is not None:
        return Space({name: Param.model_validate(p) for name, p in stored.items()}, base)
    params = default_space(base, keeps_general=keeps_general)
    source = "the default search space"
    if path is not None:
        source = str(path)
        loaded = _read_space(path)
        if not loaded.use_defaults:
            params = {}
        for name, given in loaded.params.items():
            if given is None:
                params.pop(name, None)
            else:
                params[name] = given
    if not params:
        raise UserError(
            f"the search space in {source} has no parameters", fix="add at least one entry under params (e.g. train.lr: {low: 1e-5, high: 1e-2, log: true})"
        )
    _check_against_config(base, params, source)
    return Space(params, base)


def _read_space(path: Path) -> SpaceFile:
    from tunesmith.files import read_yaml

    if not path.is_file():
        raise UserError(f"no such space file: {path}", fix="check the path (docs/tune.md shows one)")
    data = read_yaml(path, fix="fix the YAML syntax at that line")
    if not isinstance(data, dict):
        raise UserError("the space file must be a mapping with a `params` section", where=str(path), fix="see docs/tune.md for an example")
    return validate_spec(SpaceFile, data, str(path))


def _check_against_config(base: RunSpec, params: dict[str, Param], source: str) -> None:
    """Each end of each range set into the run config and checked by RunSpec: an unknown path or a value the
    config refuses (lr 5, r 0) is named by its parameter, all at once."""
    problems = []
    for name, param in params.items():
        if param.choices is None and _is_int(base, name) and not param.whole:
            problems.append(f"params.{name}: {name} takes whole numbers; give low and high as integers (and no log/step other than 1)")
            continue
        for value in param.ends():
            value = int(value) if param.choices is None and _is_int(base, name) else value
            try:
                Space({}, base).apply(base, {name: value}, source)
            except ProblemList as exc:
                problems += [f"params.{name}: {value!r} is refused by the run config: {p}" for p in exc.problems]
            except UserError as exc:
                problems.append(f"params.{name}: {value!r} is refused by the run config: {exc}")
            except (AttributeError, TypeError):
                problems.append(f"params.{name}: not a setting of the run config")
    if problems:
        raise ProblemList(f"invalid search space in {source}", problems, fix="correct the parameters named above (docs/tune.md lists the defaults)")
