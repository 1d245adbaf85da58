"""monitor.yaml: the thresholds an alert fires at, how the drift tests are run, and the judge.

Every key has a default, so no file is needed; a file may set any subset. Unknown keys are refused
with their path (a misspelt threshold silently left at its default would be a monitor that never fires)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class Thresholds(BaseModel):
    """When a check alerts. `alpha` is the false-alarm rate per window for all drift tests together:
    each of the four tests runs at alpha / 4 (Bonferroni), so in-distribution traffic trips any of them
    in at most `alpha` of windows. The output-health shares are plain limits on what a user would call broken."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise false-alarm rate of the drift tests, per window")
    format_errors: float = Field(0.05, ge=0, le=1, description="share of answers breaking the trained format (invalid JSON, unknown label, missing field)")
    truncated: float = Field(0.05, ge=0, le=1, description="share of answers cut off at max_tokens (finish_reason length)")
    empty: float = Field(0.02, ge=0, le=1, description="share of empty answers")
    refusals: float = Field(0.05, ge=0, le=1, description="share of answers that refuse")
    error_rate: float = Field(0.05, ge=0, le=1, description="share of requests answered with an HTTP error")
    latency_p95_ms: float | None = Field(None, gt=0, description="p95 latency limit in ms; unset: latency_ratio x the earlier window's p95")
    latency_ratio: float = Field(2.0, gt=1, description="p95 latency alerts above this multiple of the earlier window's")
    quality_drop: float = Field(0.5, gt=0, description="mean rubric score (1-5) this far below the training-time evaluation alerts")
    quality_min: float = Field(3.0, ge=1, le=5, description="mean rubric score below this alerts when the run has no training-time judge grades")


class DriftOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_requests: int = Field(20, ge=5, description="fewer prompts in the window and the drift tests are skipped (too little to test)")
    window_sample: int = Field(300, ge=10, description="at most this many window prompts are embedded (a seeded sample)")
    reference_sample: int = Field(500, ge=20, description="at most this many training prompts are the embedding reference")
    permutations: int = Field(500, ge=100, description="permutations of the MMD test (its smallest p-value is 1/(n+1))")
    seed: int = 0


class JudgeOptions(BaseModel):
    """`tunesmith eval judge`'s options: an OpenAI-compatible endpoint and the rubric."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="the judge model's name at url")
    api_key_env: str = "OPENAI_API_KEY"
    rubric: list[str] = Field(default_factory=lambda: ["correctness", "helpfulness", "tone"], min_length=1)
    sample: int = Field(20, ge=1, description="answers graded per window (a seeded sample)")
    timeout: float = Field(60.0, gt=0)


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    drift: DriftOptions = Field(default_factory=DriftOptions)
    judge: JudgeOptions | None = None


def load_config(path: Path | None) -> MonitorConfig:
    """The defaults, or `path` (YAML) checked field by field; every problem is named at once."""
    if path is None:
        return MonitorConfig()
    from tunesmith.config import validate_spec
    from tunesmith.errors import UserError
    from tunesmith.files import read_yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such monitor config: {path}", fix="check the --config path (docs/monitoring.md, ## Configuration, shows one)")
    data = read_yaml(path, fix="fix the YAML syntax at that line") or {}
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a mapping of sections", fix="write sections such as `thresholds:`, `drift:`, `judge:`")
    return validate_spec(MonitorConfig, data, str(path))
