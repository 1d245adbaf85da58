"""Paired significance: bootstrap interval of the difference, exact McNemar, sign-flip permutation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunesmith.errors import UserError
from tunesmith.eval.significance import changed_examples, compare_paired


def test_identical_scores_show_no_difference():
    scores = [0.0, 1.0, 1.0, 0.0, 1.0] * 6
    result = compare_paired(scores, scores)
    assert result.delta == 0 and result.ci_low <= 0 <= result.ci_high
    assert result.p_value == 1.0 and not result.significant
    graded = [0.2, 0.9, 0.4, 0.7]
    result = compare_paired(graded, graded)
    assert result.test == "sign_flip_exact" and result.p_value == 1.0 and result.ci_low == result.ci_high == 0


def test_every_example_improved_is_significant_with_a_positive_interval():
    result = compare_paired([0] * 30, [1] * 30)
    assert result.test == "mcnemar_exact"
    assert result.delta == 1 and result.improved == 30 and result.regressed == 0
    assert result.p_value < 0.001 and result.significant
    assert result.ci_low > 0 and result.ci_high > 0
    assert result.p_value == pytest.approx(2 * 0.5**30)


def test_mcnemar_matches_a_hand_computed_binomial():
    # 20 examples: 8 improved, 2 regressed, 10 unchanged. Discordant n = 10, smaller count k = 2:
    # p = 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024 = 112 / 1024.
    a = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5
    b = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5
    result = compare_paired(a, b)
    assert result.test == "mcnemar_exact"
    assert result.p_value == pytest.approx(112 / 1024)
    assert not result.significant
    assert result.mean_a == pytest.approx(7 / 20) and result.mean_b == pytest.approx(13 / 20)
    assert result.delta == pytest.approx(0.3)


def test_sign_flip_exact_p_value_for_small_graded_scores():
    # differences +0.5, +0.5, +0.5, -0.1 (4 non-zero -> 16 sign patterns). |sum| >= 1.4 happens for
    # the observed pattern, its mirror, and the two with the three 0.5s sharing a sign and -0.1 flipped
    # (|1.5 + 0.1| = 1.6): 4 / 16.
    a = [0.5, 0.5, 0.5, 0.6, 0.3]
    b = [1.0, 1.0, 1.0, 0.5, 0.3]
    result = compare_paired(a, b)
    assert result.test == "sign_flip_exact"
    assert result.p_value == pytest.approx(4 / 16)


def test_large_graded_samples_use_a_seeded_permutation_test():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, 200)
    b = np.clip(a + rng.normal(0.15, 0.2, 200), 0, 1)
    first = compare_paired(list(a), list(b), seed=7)
    again = compare_paired(list(a), list(b), seed=7)
    other = compare_paired(list(a), list(b), seed=8)
    assert first == again
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert first.test == "sign_flip_permutation"
    assert first.p_value < 0.001 and first.significant and first.ci_low > 0
    assert first.ci_low < first.delta < first.ci_high


def test_no_real_difference_is_not_significant():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 100)
    b = rng.integers(0, 2, 100)
    result = compare_paired(list(a), list(b))
    assert result.ci_low < 0 < result.ci_high
    assert result.p_value > 0.05 and not result.significant


def test_changed_examples_lists_improved_and_regressed_ids():
    improved, regressed = changed_examples(["a", "b", "c", "d"], [0, 1, 0.5, 1], [1, 0, 0.5, 1])
    assert improved == ["a"] and regressed == ["b"]


@pytest.mark.parametrize(("a", "b"), [([1, 0], [1]), ([], []), ([0, math.nan], [0, 1])])
def test_bad_inputs_are_user_errors(a, b):
    with pytest.raises(UserError):
        compare_paired(a, b)


def test_values_are_the_ones_the_hand_written_bootstrap_and_binomial_gave():
    # computed with the former hand-written bootstrap loop and binomial sum (before scipy.stats):
    # the same seed gives the same interval and p-values
    a = [0.1 * i % 1 for i in range(37)]
    b = [(0.13 * i + 0.05) % 1 for i in range(37)]
    graded = compare_paired(a, b, seed=5)
    assert graded.test == "sign_flip_permutation"
    assert (graded.ci_low, graded.ci_high) == pytest.approx((-0.07302027027027042, 0.17135810810810792), abs=1e-12)
    assert graded.p_value == 0.44215578442155784  # the permutation draws follow the bootstrap's on one generator
    binary = compare_paired([1, 0, 1, 1, 0, 1, 1, 1, 0, 1] * 4, [1, 1, 1, 1, 0, 1, 1, 0, 1, 1] * 4, seed=2)
    assert binary.test == "mcnemar_exact"
    assert (binary.ci_low, binary.ci_high) == pytest.approx((-0.075, 0.275), abs=1e-12)
    assert binary.p_value == pytest.approx(0.3876953125, rel=1e-12)


def test_one_example_has_a_point_interval():
    result = compare_paired([0.2], [0.5])
    assert result.ci_low == result.ci_high == pytest.approx(0.3) and result.p_value == 1.0
