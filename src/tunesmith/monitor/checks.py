"""What every check returns: its figure, the reference figure, the limit, the verdict, and the requests
that show it (evidence for the alert)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "alert", "skipped"]
EXAMPLES_SHOWN = 3  # examples an alert carries; request_ids carries every evidence id (up to EVIDENCE_IDS)
EVIDENCE_IDS = 200


@dataclass
class Evidence:
    id: str
    prompt: str
    answer: str | None
    why: str


@dataclass
class CheckResult:
    """`value` is the window's figure and `baseline` the reference's (training data for drift, the
    earlier window for output health, the training-time evaluation for quality). `threshold` is what
    the verdict compares: for the tests judged by their p-value (input_embedding, input_language,
    input_vocabulary) the significance level `p_value` must fall below; otherwise the limit `value`
    may not pass (below it, for quality)."""

    name: str
    value: float | None
    baseline: float | None
    threshold: float | None
    status: Status
    message: str
    p_value: float | None = None
    evidence: list[Evidence] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "value": _round(self.value),
            "baseline": _round(self.baseline),
            "threshold": _round(self.threshold),
            "status": self.status,
            "p_value": _round(self.p_value, 6),
            "message": self.message,
        }


def skipped(name: str, why: str) -> CheckResult:
    return CheckResult(name, None, None, None, "skipped", why)


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def clip(text: str | None, n: int = 300) -> str | None:
    if text is None:
        return None
    return text if len(text) <= n else text[: n - 1] + "…"
