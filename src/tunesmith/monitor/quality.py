"""Quality: a seeded sample of the window's answers graded by the configured judge against the rubric
(eval/judge.py, the same prompts and parsing as `tunesmith eval judge`), set against the rubric means
the run got at training time."""

from __future__ import annotations

import random

from tunesmith.monitor.checks import CheckResult, Evidence, skipped
from tunesmith.monitor.config import JudgeOptions, Thresholds
from tunesmith.monitor.health import answered
from tunesmith.monitor.window import record_prompt
from tunesmith.serve.traffic import TrafficRecord


def quality_check(
    records: list[TrafficRecord], judge: JudgeOptions | None, limits: Thresholds, eval_quality: dict[str, float] | None, seed: int
) -> CheckResult:
    if judge is None:
        return skipped("quality", "no judge configured (monitor.yaml `judge:` with url and model)")
    from tunesmith.eval.judge import JudgeItem, check_readable, endpoint_judge, grade, summarize_grades

    pool = [r for r in records if answered(r) and (r.answer or "").strip()]
    if not pool:
        return skipped("quality", "no answers in the window to grade")
    sample = random.Random(seed).sample(pool, min(judge.sample, len(pool)))
    items = [JudgeItem(id=r.id, prompt=record_prompt(r), answer=r.answer or "") for r in sample]
    ask = endpoint_judge(judge.url, judge.model, api_key_env=judge.api_key_env, timeout=judge.timeout)
    grades = grade(items, judge.rubric, ask=ask)
    summary = summarize_grades(grades, judge.rubric)
    check_readable(summary.n, summary.unparseable, f"{judge.model} at {judge.url}", "rubric", "the monitor report")
    means = [v for v in summary.mean.values() if v is not None]
    value = sum(means) / len(means) if means else None
    if value is None:
        return skipped("quality", "the judge gave no readable grade")
    shared = [c for c in judge.rubric if eval_quality and c in eval_quality]
    baseline = sum(eval_quality[c] for c in shared) / len(shared) if eval_quality and shared else None
    limit = baseline - limits.quality_drop if baseline is not None else limits.quality_min
    status = "alert" if value < limit else "ok"
    by_id = {r.id: r for r in sample}
    worst = sorted((g for g in grades if g.scores), key=lambda g: sum(g.scores.values()) / len(g.scores))
    evidence = [
        Evidence(g.id or "", record_prompt(by_id[g.id]), by_id[g.id].answer, f"judge: {', '.join(f'{k} {v}' for k, v in g.scores.items())}; {g.reason[:160]}")
        for g in worst
        if g.id in by_id and sum(g.scores.values()) / len(g.scores) < limit
    ]
    per = ", ".join(f"{k} {v}" for k, v in summary.mean.items())
    against = (
        f"training-time evaluation {baseline:.2f}, alert below {limit:.2f}" if baseline is not None else f"no training-time grades; alert below {limit:.2f}"
    )
    return CheckResult(
        "quality",
        value,
        baseline,
        limit,
        status,
        f"mean rubric score {value:.2f} on {summary.n} sampled answers ({per}; unparseable {summary.unparseable}); {against}",
        evidence=evidence,
    )
