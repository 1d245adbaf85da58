"""Output health: what the served model answered, for the task it was trained on. Each share is the
window's; its baseline is the same share in the window just before (the model's own recent past)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tunesmith.monitor.answers import AnswerFormat, is_refusal
from tunesmith.monitor.checks import EVIDENCE_IDS, CheckResult, Evidence, skipped
from tunesmith.monitor.config import Thresholds
from tunesmith.monitor.window import record_prompt
from tunesmith.serve.traffic import TrafficRecord

HEALTH_CHECKS = ("output_format", "output_truncated", "output_empty", "output_refusals", "error_rate", "latency_p95")


def answered(r: TrafficRecord) -> bool:
    return r.status < 400 and r.error is None


def _text(r: TrafficRecord) -> str:
    return r.answer or ""


def _share_check(
    name: str,
    records: list[TrafficRecord],
    earlier: list[TrafficRecord],
    among: Callable[[TrafficRecord], bool],
    why: Callable[[TrafficRecord], str | None],
    limit: float,
    noun: str,
    of: str,
) -> CheckResult:
    def share(rs: list[TrafficRecord]) -> tuple[float | None, list[tuple[TrafficRecord, str]]]:
        pool = [r for r in rs if among(r)]
        hits = [(r, w) for r in pool if (w := why(r)) is not None]
        return (len(hits) / len(pool) if pool else None), hits

    value, hits = share(records)
    if value is None:
        return skipped(name, f"no {of} in the window")
    baseline, _ = share(earlier)
    status = "alert" if value > limit else "ok"
    evidence = [Evidence(r.id, record_prompt(r), r.answer, w) for r, w in hits]
    earlier_text = f"; earlier window {baseline:.1%}" if baseline is not None else ""
    return CheckResult(name, value, baseline, limit, status, f"{value:.1%} of {of} {noun} (limit {limit:.0%}{earlier_text})", evidence=evidence[:EVIDENCE_IDS])


def health_checks(records: list[TrafficRecord], earlier: list[TrafficRecord], answers: AnswerFormat | None, limits: Thresholds) -> list[CheckResult]:
    def complete(r: TrafficRecord) -> bool:  # a cut-off answer counts as truncated and a refusal as a refusal, not as a broken format
        return answered(r) and bool(_text(r).strip()) and r.finish_reason != "length" and not r.tool_calls and not is_refusal(_text(r))

    if answers is not None and answers.checkable:
        fmt = answers
        form = _share_check(
            "output_format",
            records,
            earlier,
            complete,
            lambda r: fmt.problem(_text(r)),
            limits.format_errors,
            f"break the trained format ({fmt.describe()})",
            "complete answers",
        )
    else:
        form = skipped(
            "output_format", "the run's training answers have no format to check (free text)" if answers else "no training data to learn the answer format from"
        )
    return [
        form,
        _share_check(
            "output_truncated",
            records,
            earlier,
            answered,
            lambda r: f"cut off at max_tokens={r.max_tokens}" if r.finish_reason == "length" else None,
            limits.truncated,
            "were cut off at the length limit",
            "answers",
        ),
        _share_check(
            "output_empty",
            records,
            earlier,
            answered,
            lambda r: "empty answer" if not _text(r).strip() and not r.tool_calls else None,
            limits.empty,
            "are empty",
            "answers",
        ),
        _share_check(
            "output_refusals",
            records,
            earlier,
            answered,
            lambda r: "refuses" if is_refusal(_text(r)) else None,
            limits.refusals,
            "refuse",
            "answers",
        ),
        _share_check(
            "error_rate",
            records,
            earlier,
            lambda r: True,
            lambda r: None if answered(r) else f"HTTP {r.status}: {(r.error or '')[:120]}",
            limits.error_rate,
            "failed",
            "requests",
        ),
        latency_check(records, earlier, limits),
    ]


def p95(records: list[TrafficRecord]) -> float | None:
    values = [r.latency_ms for r in records if answered(r)]
    return float(np.percentile(values, 95)) if values else None


def latency_check(records: list[TrafficRecord], earlier: list[TrafficRecord], limits: Thresholds) -> CheckResult:
    value, baseline = p95(records), p95(earlier)
    if value is None:
        return skipped("latency_p95", "no answered requests in the window")
    if limits.latency_p95_ms is not None:
        limit, rule = limits.latency_p95_ms, f"limit {limits.latency_p95_ms:.0f} ms"
    elif baseline is not None:
        limit, rule = limits.latency_ratio * baseline, f"limit {limits.latency_ratio:g} x the earlier window's {baseline:.0f} ms"
    else:
        return CheckResult("latency_p95", value, None, None, "ok", f"p95 latency {value:.0f} ms (no earlier window and no latency_p95_ms to compare with)")
    status = "alert" if value > limit else "ok"
    slow = sorted((r for r in records if answered(r) and r.latency_ms > limit), key=lambda r: -r.latency_ms)
    evidence = [Evidence(r.id, record_prompt(r), r.answer, f"{r.latency_ms:.0f} ms") for r in slow]
    return CheckResult("latency_p95", value, baseline, limit, status, f"p95 latency {value:.0f} ms ({rule})", evidence=evidence[:EVIDENCE_IDS])
