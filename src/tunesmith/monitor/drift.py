"""Input drift: is this window's traffic drawn from what the model was trained on?

Four two-sample tests, each giving a p-value under "the window comes from the training distribution":

- embedding: MMD (RBF kernel, median-heuristic bandwidth) between the window's prompt embeddings and
  the training prompts', p-value by a seeded permutation test; the effect size is a domain
  classifier's cross-validated AUC (logistic regression: 0.5 = indistinguishable, 1.0 = fully apart).
- length: scipy's two-sample Kolmogorov-Smirnov test on prompt lengths in characters.
- language: the share of prompts in a language training did not have, window vs held-out training
  prompts, one-sided Fisher exact test (scipy).
- vocabulary: the per-prompt share of tokens never seen in training, window vs held-out training
  prompts, one-sided Mann-Whitney U (scipy). The held-out prompts carry the training data's own rate
  of new words (typos, rare names), so only an excess over it counts.

Each test runs at alpha / 4 (Bonferroni), so all four together false-alarm in at most alpha of the
windows of in-distribution traffic (benchmarks/monitor_sim.py measures it). evidently (which has
such tests) is not installed here; scipy and scikit-learn are, and these tests are a few lines on them.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

from tunesmith.monitor.checks import EVIDENCE_IDS, CheckResult, Evidence, skipped
from tunesmith.monitor.config import DriftOptions
from tunesmith.monitor.reference import Reference
from tunesmith.monitor.text import Encoder, Token, languages, unseen

DRIFT_CHECKS = ("input_embedding", "input_length", "input_language", "input_vocabulary")


def drift_checks(
    ref: Reference | None, prompts: list[tuple[str, str]], options: DriftOptions, alpha: float, encoder: Encoder, why_none: str = ""
) -> list[CheckResult]:
    """`prompts` are (request id, prompt text) of the window, non-empty prompts only."""
    if ref is None:
        return [skipped(name, why_none or "no training data to compare with") for name in DRIFT_CHECKS]
    if len(prompts) < options.min_requests:
        why = f"{len(prompts)} prompts in the window; the drift tests need at least {options.min_requests} (drift.min_requests)"
        return [skipped(name, why) for name in DRIFT_CHECKS]
    level = alpha / len(DRIFT_CHECKS)
    return [
        embedding_check(ref, prompts, options, level, encoder),
        length_check(ref, prompts, level),
        language_check(ref, prompts, level),
        vocabulary_check(ref, prompts, level),
    ]


def mmd_permutation(x: np.ndarray, y: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """Unbiased MMD^2 between samples x and y (RBF kernel, bandwidth the median pairwise distance) and
    its permutation p-value (1 + #permuted >= observed) / (1 + permutations)."""
    z = np.concatenate([x, y]).astype(np.float64)
    n, total = len(x), len(z)
    sq = np.sum(z * z, axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    median = np.median(dist[np.triu_indices(total, 1)])
    kernel = np.exp(-dist / max(median, 1e-12))
    np.fill_diagonal(kernel, 0.0)  # unbiased: no self-similarity terms

    def statistic(masks: np.ndarray) -> np.ndarray:  # masks: (k, total), 1 where a row is in the first sample
        a = masks
        b = 1.0 - masks
        kaa = np.einsum("ki,ki->k", a @ kernel, a)
        kbb = np.einsum("ki,ki->k", b @ kernel, b)
        kab = np.einsum("ki,ki->k", a @ kernel, b)
        m = total - n
        return kaa / (n * (n - 1)) + kbb / (m * (m - 1)) - 2 * kab / (n * m)

    observed = statistic(np.concatenate([np.ones(n), np.zeros(total - n)])[None, :])[0]
    rng = np.random.default_rng(seed)
    masks = np.zeros((permutations, total))
    for row in masks:
        row[rng.choice(total, n, replace=False)] = 1.0
    permuted = np.concatenate([statistic(chunk) for chunk in np.array_split(masks, max(1, permutations // 100))])
    return float(observed), float((1 + np.sum(permuted >= observed)) / (1 + permutations))


def domain_auc(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Cross-validated AUC of a logistic regression telling window (y) from training (x): the effect size."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    features = np.concatenate([x, y])
    target = np.concatenate([np.zeros(len(x)), np.ones(len(y))])
    folds = StratifiedKFold(n_splits=min(5, len(y), len(x)), shuffle=True, random_state=seed)
    scores = cross_val_predict(LogisticRegression(C=1.0, solver="liblinear", max_iter=1000), features, target, cv=folds, method="predict_proba")[:, 1]
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(target, scores))


def embedding_check(ref: Reference, prompts: list[tuple[str, str]], options: DriftOptions, level: float, encoder: Encoder) -> CheckResult:
    sample = prompts if len(prompts) <= options.window_sample else random.Random(options.seed).sample(prompts, options.window_sample)
    window = encoder.embed([p for _, p in sample])
    mmd2, p = mmd_permutation(ref.embeddings, window, options.permutations, options.seed)
    auc = domain_auc(ref.embeddings, window, options.seed)
    nearest = (window @ ref.embeddings.T).max(axis=1)  # cosine: both unit-norm
    own = ref.embeddings @ ref.embeddings.T
    np.fill_diagonal(own, -1.0)
    typical = float(np.median(own.max(axis=1)))
    order = np.argsort(nearest)
    evidence = [
        Evidence(sample[i][0], sample[i][1], None, f"nearest training prompt has cosine similarity {nearest[i]:.2f} (training prompts: median {typical:.2f})")
        for i in order
        if nearest[i] < typical
    ]
    status = "alert" if p < level else "ok"
    return CheckResult(
        "input_embedding",
        auc,
        0.5,
        level,
        status,
        f"prompts {'differ' if status == 'alert' else 'do not differ detectably'} from the training prompts in meaning: MMD^2 {mmd2:.4f}, "
        f"permutation p={p:.4f} over {len(sample)} window and {len(ref.embeddings)} training prompts; domain classifier AUC {auc:.2f} (0.5 = alike)",
        p_value=p,
        evidence=evidence[:EVIDENCE_IDS],
    )


def length_check(ref: Reference, prompts: list[tuple[str, str]], level: float) -> CheckResult:
    """The KS distance D between the window's and the dataset's length distributions. Monitoring tests
    window after window against ONE reference, which is itself a sample: a plain two-sample test at
    `level` then false-alarms far more often than `level` whenever the reference happens to sit in its
    own tail (measured: 6.5% instead of 1.25% on the demo tickets). So D must exceed what the window's
    sampling error (at `level`) and the reference's (at `level`) can add up to, by the triangle
    inequality: c(level) / sqrt(n) + c(level) / sqrt(m), c the Kolmogorov distribution's upper quantile."""
    from scipy.stats import ks_2samp, kstwobign

    lengths = np.array([len(p) for _, p in prompts], dtype=float)
    result = ks_2samp(lengths, ref.lengths)
    critical = float(kstwobign.isf(level)) * (1 / np.sqrt(len(lengths)) + 1 / np.sqrt(len(ref.lengths)))
    low, high = np.percentile(ref.lengths, [1, 99])
    middle = float(np.median(ref.lengths))
    outside = sorted((i for i, n in enumerate(lengths) if n < low or n > high), key=lambda i: -abs(lengths[i] - middle))
    evidence = [
        Evidence(prompts[i][0], prompts[i][1], None, f"{int(lengths[i])} characters; 98% of training prompts have {int(low)}-{int(high)}") for i in outside
    ]
    status = "alert" if result.statistic > critical else "ok"
    return CheckResult(
        "input_length",
        float(result.statistic),
        None,
        critical,
        status,
        f"median prompt length {np.median(lengths):.0f} characters (training data {middle:.0f}); KS distance {result.statistic:.3f} "
        f"against {critical:.3f} allowed for the window's and the training sample's own noise (two-sample p={result.pvalue:.4f})",
        p_value=float(result.pvalue),
        evidence=evidence[:EVIDENCE_IDS],
    )


def language_check(ref: Reference, prompts: list[tuple[str, str]], level: float) -> CheckResult:
    from scipy.stats import fisher_exact

    found = languages([p for _, p in prompts])
    other = [i for i, lang in enumerate(found) if lang not in ref.languages]
    held_other = sum(lang not in ref.languages for lang in ref.held_languages)
    table = [[len(other), len(found) - len(other)], [held_other, len(ref.held_languages) - held_other]]
    p = float(fisher_exact(table, alternative="greater").pvalue)
    trained = ", ".join(sorted(ref.languages))
    share, baseline = len(other) / len(found), held_other / max(1, len(ref.held_languages))
    counts: dict[str, int] = {}
    for i in other:
        counts[found[i]] = counts.get(found[i], 0) + 1
    top = ", ".join(f"{lang} {n}" for lang, n in sorted(counts.items(), key=lambda kv: -kv[1])[:4])
    status = "alert" if p < level else "ok"
    return CheckResult(
        "input_language",
        share,
        baseline,
        level,
        status,
        f"{share:.0%} of prompts are not in the trained language(s) {trained} (held-out training prompts {baseline:.0%})"
        + (f": {top}" if top else "")
        + f"; Fisher exact p={p:.4f}",
        p_value=p,
        evidence=[Evidence(prompts[i][0], prompts[i][1], None, f"language {found[i]} (trained on {trained})") for i in other][:EVIDENCE_IDS],
    )


def vocabulary_check(ref: Reference, prompts: list[tuple[str, str]], level: float) -> CheckResult:
    from scipy.stats import mannwhitneyu

    window = [unseen(p, ref.vocab) for _, p in prompts]
    held = [unseen(p, ref.vocab)[0] for p in ref.held_prompts]
    shares = np.array([s for s, _ in window])
    p = float(mannwhitneyu(shares, np.array(held), alternative="greater").pvalue) if len(set(shares) | set(held)) > 1 else 1.0
    value, baseline = float(np.mean(shares)), float(np.mean(held)) if held else 0.0
    # A new kind of token many prompts share (a product line's code prefix) is the drift; a typo is one prompt's.
    spread: Counter[str] = Counter(shape for _, words in window for shape in {Token.of(w).shape for w in words})
    first = {Token.of(w).shape: w for _, words in window for w in reversed(words)}
    common = ", ".join(f"{first[shape]} ({n} prompts)" for shape, n in spread.most_common(6) if n > 1)
    order = sorted((i for i, (_, words) in enumerate(window) if words), key=lambda i: -max(spread[Token.of(w).shape] for w in window[i][1]))
    status = "alert" if p < level else "ok"
    return CheckResult(
        "input_vocabulary",
        value,
        baseline,
        level,
        status,
        f"{value:.1%} of a prompt's tokens are unseen in training on average (held-out training prompts {baseline:.1%})"
        + (f"; recurring: {common}" if common else "")
        + f"; Mann-Whitney p={p:.4f}",
        p_value=p,
        evidence=[Evidence(prompts[i][0], prompts[i][1], None, f"unseen in training: {', '.join(window[i][1][:6])}") for i in order][:EVIDENCE_IDS],
    )
