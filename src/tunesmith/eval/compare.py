"""Model B against model A on the same examples, for every metric: the delta, a 95% paired bootstrap
interval and a paired test, and which examples got better or worse.

Per-example metrics (exact match, ROUGE, JSON validity, reference loss ...) go through
`compare_paired` (McNemar for 0/1 scores, a sign-flip test otherwise). Corpus metrics that are not
a mean of per-example scores (macro-F1, BLEU, chrF, perplexity, custom functions) are recomputed on
every bootstrap resample of the example indices, and tested by swapping the two models' outputs on
random examples (a paired permutation test)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from tunesmith.errors import UserError
from tunesmith.eval.metrics import definition, metric_label
from tunesmith.eval.significance import changed_examples, compare_paired
from tunesmith.eval.toolcalls import TOOL_METRICS

N_BOOT = 1000
ALPHA = 0.05
PER_EXAMPLE = (
    "exact_match",
    "valid_json",
    "field_accuracy",
    "correct",
    "rouge1",
    "rouge2",
    "rougeL",
    "schema_valid",
    "length_chars",
    "length_words",
    "ref_nll",
    *TOOL_METRICS,
    "reward_accuracy",
    "preference_accuracy",
    "reward_margin",
)

Rows = list[dict[str, Any]]


def metric_delta(other: float, tuned: float) -> float:
    """The one delta every report shows: tuned (or model B) minus the model it is compared with."""
    return tuned - other


def per_example_value(row: dict[str, Any], name: str) -> float | None:
    if name == "field_accuracy":
        fields = row.get("fields") or {}
        return sum(fields.values()) / len(fields) if fields else None
    if name.startswith("field_accuracy."):
        value = (row.get("fields") or {}).get(name.split(".", 1)[1])
        return None if value is None else float(value)
    if name == "ref_nll":
        return row["ref_nll"] / row["ref_tokens"] if row.get("ref_tokens") else None
    value = row.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class SummedCounts:
    """A corpus metric that is a function of per-example counts summed over the corpus: BLEU and chrF
    (sacrebleu computes them so, from n-gram matches and totals) and macro-F1 (per-class true positives,
    references and predictions). The counts are taken once per model, so a bootstrap or permutation
    resample only adds rows of integers. Recomputing the metric from the rows on each of the 2 x 1000
    resamples took 15-30 s a metric on 30 examples (re-tokenising for sacrebleu, input validation for
    sklearn), and grows with the split."""

    def __init__(self, counts: Callable[[Rows], np.ndarray], score: Callable[[np.ndarray], float]) -> None:
        self.counts = counts  # one row of counts per example
        self.score = score  # the metric from the column sums

    def __call__(self, rows: Rows) -> float:
        return self.score(self.counts(rows).sum(axis=0))


def _macro_f1(labels: list[str]) -> SummedCounts:
    """sklearn's f1_score(average="macro", zero_division=0, labels=the labels among the scored rows'
    references), from per-class counts; `labels`: every reference label of the examples."""

    def counts(rows: Rows) -> np.ndarray:
        truth = np.array([[r["label"] == label for label in labels] for r in rows], dtype=np.int64).reshape(len(rows), -1)
        predicted = np.array([[r["predicted_label"] == label for label in labels] for r in rows], dtype=np.int64).reshape(len(rows), -1)
        return np.concatenate([truth * predicted, truth, predicted], axis=1)

    def score(summed: np.ndarray) -> float:
        hits, truth, predicted = summed.reshape(3, -1).astype(np.float64)
        present = truth > 0  # a resample may leave a class out: sklearn then averages over the others
        return float(np.mean(2.0 * hits[present] / (truth[present] + predicted[present])))

    return SummedCounts(counts, score)


def _sacrebleu(metric: Any) -> SummedCounts:
    def counts(rows: Rows) -> np.ndarray:
        found = metric._extract_corpus_statistics([r["prediction"] for r in rows], [[r["reference"] for r in rows]])
        return np.asarray(found, dtype=np.int64).reshape(len(rows), -1)

    return SummedCounts(counts, lambda summed: float(metric._compute_score_from_stats(summed.tolist()).score))


def _bleu() -> SummedCounts:
    from sacrebleu.metrics import BLEU

    return _sacrebleu(BLEU())  # sacrebleu.corpus_bleu's defaults


def _chrf() -> SummedCounts:
    from sacrebleu.metrics import CHRF

    return _sacrebleu(CHRF())  # sacrebleu.corpus_chrf's defaults


def _perplexity(rows: Rows) -> float:
    tokens = sum(r["ref_tokens"] for r in rows)
    return math.exp(sum(r["ref_nll"] for r in rows) / tokens) if tokens else float("nan")


def corpus_metrics(rows: Rows, metric_names: dict[str, float], custom: list[str]) -> dict[str, Callable[[Rows], float]]:
    """The corpus-level metrics these rows support, among those the evaluation reported."""
    from tunesmith.eval.metrics import run_custom_metric

    found: dict[str, Callable[[Rows], float]] = {}
    for name in ("label_macro_f1", "f1_macro"):
        if name in metric_names and all("label" in r and "predicted_label" in r for r in rows):
            found[name] = _macro_f1(sorted({r["label"] for r in rows}))
    if "bleu" in metric_names:
        found["bleu"] = _bleu()
    if "chrf" in metric_names:
        found["chrf"] = _chrf()
    if "perplexity" in metric_names and all(r.get("ref_tokens") for r in rows):
        found["perplexity"] = _perplexity
    for spec in custom:
        name = spec.partition(":")[2]
        for key in metric_names:
            if key == name or key.startswith(name + "."):
                found[key] = lambda rs, spec=spec, key=key: run_custom_metric(spec, [r["prediction"] for r in rs], [r["reference"] for r in rs])[key]
    return found


def resamples(n: int) -> int:
    """Fewer resamples for big sets: each recomputes the corpus metric over all n examples (BLEU on
    1,000 sentences takes ~0.1 s), and the interval's width is already stable at a few hundred."""
    return max(200, min(N_BOOT, 200_000 // max(1, n)))


def _corpus_comparison(fn: Callable[[Rows], float], a: Rows, b: Rows, seed: int, tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n = len(a)
    n_boot = n_perm = resamples(n)
    # A model's outputs as the metric reads them: its rows, or for BLEU and chrF their n-gram counts (one
    # row each). `pick` takes a resample of them; `mix` takes b's where `swap` is set and a's elsewhere.
    x_a: Any
    x_b: Any
    if isinstance(fn, SummedCounts):
        x_a, x_b = fn.counts(a), fn.counts(b)

        def score(x: Any) -> float:
            return fn.score(x.sum(axis=0))

        def pick(x: Any, idx: np.ndarray) -> Any:
            return x[idx]

        def mix(x: Any, y: Any, swap: np.ndarray) -> Any:
            return np.where(swap[:, None], y, x)
    else:
        x_a, x_b, score = a, b, fn

        def pick(x: Any, idx: np.ndarray) -> Any:
            return [x[i] for i in idx]

        def mix(x: Any, y: Any, swap: np.ndarray) -> Any:
            return [y[i] if s else x[i] for i, s in enumerate(swap)]

    value_a, value_b = score(x_a), score(x_b)
    deltas = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        deltas.append(score(pick(x_b, idx)) - score(pick(x_a, idx)))
        tick()
    low, high = np.nanquantile(deltas, [ALPHA / 2, 1 - ALPHA / 2])
    observed = abs(value_b - value_a)
    hits = 0
    for _ in range(n_perm):
        swap = rng.random(n) < 0.5
        hits += abs(score(mix(x_b, x_a, swap)) - score(mix(x_a, x_b, swap))) >= observed - 1e-12
        tick()
    p = (hits + 1) / (n_perm + 1)
    return {
        "n": n,
        "mean_a": value_a,
        "mean_b": value_b,
        "delta": metric_delta(value_a, value_b),
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": 1 - ALPHA,
        "test": "paired_permutation",
        "p_value": p,
        "significant": p < ALPHA,
        "n_boot": n_boot,
        "seed": seed,
    }


def compare_rows(a: Rows, b: Rows, metrics: dict[str, float], *, custom: list[str] | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{metric: comparison} of B against A (delta = B - A) for every metric both sets of rows carry."""
    ids_a, ids_b = [r["id"] for r in a], [r["id"] for r in b]
    if ids_a != ids_b:
        raise UserError(
            "the two models were not scored on the same examples in the same order",
            fix="evaluate both in one `tunesmith eval` call (same split, --limit and dataset)",
        )
    out: dict[str, dict[str, Any]] = {}
    fields = sorted({k for r in (*a, *b) for k in (r.get("fields") or {})})
    for name in (*PER_EXAMPLE, *(f"field_accuracy.{f}" for f in fields)):
        pairs = [(per_example_value(x, name), per_example_value(y, name)) for x, y in zip(a, b)]
        kept = [(i, x, y) for i, (x, y) in zip(ids_a, pairs) if x is not None and y is not None]
        if not kept:
            continue
        ids, xs, ys = [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]
        result = compare_paired(xs, ys, seed=seed).model_dump()
        result["delta"] = metric_delta(result["mean_a"], result["mean_b"])
        up, down = changed_examples(ids, xs, ys)
        direction = definition(name).direction
        # "improved" follows the metric's direction; a description (length) is neither better nor worse.
        better, worse = (down, up) if direction == "lower" else (up, down) if direction == "higher" else (None, None)
        result.update(improved=None if better is None else len(better), regressed=None if worse is None else len(worse))
        out[name] = {**result, **_direction(name), "improved_ids": better or [], "regressed_ids": worse or []}
    corpus = corpus_metrics(a, metrics, custom or [])
    if corpus:
        from tunesmith.ui import progress

        # Each resample recomputes the corpus metric over every example: minutes for BLEU/chrF on a large split.
        with progress() as bar:
            for name, fn in corpus.items():
                task = bar.add_task(f"bootstrap + permutation test of {name}", total=2 * resamples(len(a)), info=f"{len(a)} examples")
                out[name] = {**_corpus_comparison(fn, a, b, seed, lambda: bar.advance(task)), **_direction(name)}
    return out


def _direction(name: str) -> dict[str, Any]:
    d = definition(name)
    return {"higher_is_better": d.higher_is_better, "direction": d.direction, "kind": d.kind}


def better_or_worse(name: str, delta: float | None) -> str | None:
    """ "better", "worse" or None (no change, no delta, or a metric with no better direction)."""
    direction = definition(name).direction
    if delta is None or direction == "none" or not math.isfinite(delta) or abs(delta) < 1e-12:
        return None
    return "better" if (delta > 0) == (direction == "higher") else "worse"


def comparison_table(models: dict[str, dict[str, Any]], versus: dict[str, dict[str, Any]] | None = None, headline: str | None = None) -> list[dict[str, Any]]:
    """The rows every report prints (terminal, report.html), so no two of them can disagree: per metric
    its definition, each model's value and, for each model compared with the tuned one, the delta
    tuned - other (versus's paired delta where the comparison has one, else `metric_delta` of the
    two values) and whether that is better or worse. `models` maps model id -> metrics; "tuned"
    (when present) is the model the others are compared with."""
    from tunesmith.eval.metrics import headline_first

    versus = versus or {}
    others = [m for m in models if m != "tuned"]
    names = headline_first({k for metrics in models.values() for k, v in metrics.items() if isinstance(v, (int, float))} - {"n"}, headline)
    rows = []
    for name in names:
        d = definition(name)
        values = {m: models[m].get(name) for m in models}
        deltas: dict[str, dict[str, Any]] = {}
        if "tuned" in models:
            for other in others:
                comparison = versus.get(other, {}).get(name)
                tuned_value, other_value = values["tuned"], values[other]
                if comparison is not None and _same_values(comparison, other_value, tuned_value):
                    delta = comparison["delta"]
                elif isinstance(tuned_value, (int, float)) and isinstance(other_value, (int, float)):
                    delta = metric_delta(other_value, tuned_value)
                else:
                    delta = None
                deltas[other] = {
                    "delta": delta,
                    "change": better_or_worse(name, delta),
                    "significant": None if comparison is None else comparison.get("significant"),
                }
        rows.append({"name": name, "direction": d.direction, "kind": d.kind, "values": values, "deltas": deltas})
    return rows


def _same_values(comparison: dict[str, Any], other: Any, tuned: Any) -> bool:
    """A paired comparison's delta is the table's delta when it compared the values the table shows
    (field accuracy pooled over fields is not the mean of per-example field shares, for one)."""
    if not isinstance(other, (int, float)) or not isinstance(tuned, (int, float)):
        return False
    return math.isclose(comparison["mean_a"], other, rel_tol=1e-3, abs_tol=1e-3) and math.isclose(comparison["mean_b"], tuned, rel_tol=1e-3, abs_tol=1e-3)


def verdict_line(comparison: dict[str, Any], metric: str, name_b: str, name_a: str) -> str:
    """One plain sentence: did B beat A on this metric beyond chance?"""
    c = comparison
    stats = (
        f"{metric} {c['mean_b']:.3f} vs {c['mean_a']:.3f}, delta {c['delta']:+.3f} "
        f"(95% CI {c['ci_low']:+.3f} to {c['ci_high']:+.3f}, {c['test']} p = {c['p_value']:.2g})"
    )
    higher = c.get("higher_is_better", True) is not False
    ahead, behind = (c["ci_low"] > 0, c["ci_high"] < 0) if higher else (c["ci_high"] < 0, c["ci_low"] > 0)
    # Both the test and the interval must agree before a winner is named.
    if c["significant"] and ahead:
        return f"{name_b} beat {name_a}: {stats}."
    if c["significant"] and behind:
        return f"{name_a} beat {name_b}: {stats}."
    return f"{name_b} did not beat {name_a} beyond chance: {stats}."


def other_changes(comparisons: dict[str, dict[str, Any]], headline: str) -> str | None:
    """Beside a headline that did not move beyond chance: the other quality metrics that did, so that
    "no gain on exact match" is never read as "tuning did nothing" when field accuracy or perplexity
    changed a lot (a strict headline can stay at 0 while the answers get much closer)."""
    if comparisons.get(headline, {}).get("significant"):
        return None
    moved = []
    for name, c in comparisons.items():
        change = better_or_worse(name, c.get("delta"))
        if name == headline or definition(name).kind != "quality" or not c.get("significant") or change is None:
            continue
        moved.append(f"{metric_label(name)} {c['mean_a']:.3f} -> {c['mean_b']:.3f} ({change})")
    return f"Changed beyond chance on other metrics: {', '.join(moved)}." if moved else None


def smallest_significant_n(alpha: float = ALPHA) -> int:
    """Below this many examples no paired test here can reach p < alpha, whatever the answers: with
    every example changed the same way, the exact two-sided p is 2 / 2**n (McNemar, sign flip, and the
    permutation test over 2**n swaps alike)."""
    return math.floor(math.log2(2 / alpha)) + 1


def needed_examples(comparison: dict[str, Any], *, alpha: float = ALPHA, power: float = 0.8) -> dict[str, Any]:
    """Roughly how many examples the paired comparison needs to find a difference of the observed size
    with the given power: the normal approximation n' = n * ((z[1-alpha/2] + z[power]) * SE / |delta|)**2,
    with SE the standard error of the delta read off the 95% bootstrap interval (width / (2 * 1.96)), so
    it holds for per-example and corpus metrics alike. A rough guide for planning, not a test."""
    from scipy.stats import norm

    n, delta = int(comparison["n"]), float(comparison["delta"])
    z_alpha, z_power = float(norm.ppf(1 - alpha / 2)), float(norm.ppf(power))
    se = (comparison["ci_high"] - comparison["ci_low"]) / (2 * float(norm.ppf(1 - (1 - comparison.get("confidence", 1 - ALPHA)) / 2)))
    needed = math.ceil(n * ((z_alpha + z_power) * se / abs(delta)) ** 2) if se > 0 and abs(delta) > 1e-12 else None
    return {
        "n": n,
        "smallest_significant_n": smallest_significant_n(alpha),
        "needed": needed,
        "alpha": alpha,
        "power": power,
        "formula": "n * ((z[1-alpha/2] + z[power]) * SE / |delta|)^2, SE from the bootstrap interval",
    }


def size_note(comparison: dict[str, Any], plan: dict[str, Any]) -> str | None:
    """A sentence beside a verdict that is "not beyond chance" because the split is small; None otherwise."""
    if comparison.get("significant"):
        return None
    n, least, needed = plan["n"], plan["smallest_significant_n"], plan["needed"]
    if n < least:
        more = f"; roughly {max(needed, least)} would be needed to find a difference of this size" if needed else ""
        return f"Note: {n} examples are too few for any difference to be significant (at least {least}){more}."
    if needed and needed > n:
        return (
            f"Note: {n} examples are too few to tell a difference of this size from chance; roughly {needed} would find it "
            f"{plan['power']:.0%} of the time (paired test, alpha {plan['alpha']})."
        )
    return None
