"""The evaluation formulas against plainly written ones (math.comb, -sum p log p, set arithmetic)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_trainkit.eval import coverage, entropy, mean_pass_at_k, pass_at_k, summarize


def plain_pass_at_k(n, c, k):
    """Chen et al. 2021, eq. 1 for one problem: 1 - C(n-c, k) / C(n, k)."""
    return 1 - math.comb(n - c, k) / math.comb(n, k)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_the_unbiased_estimator(case):
    n, c, k = case
    assert pass_at_k(n, c, k) == pytest.approx(plain_pass_at_k(n, c, k), abs=1e-9)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(2048, 1, 1024) == pytest.approx(0.5)  # would overflow as a ratio of floats of C(n, k)
    for bad in ((5, 6, 1), (5, 1, 0), (5, 1, 6), (5, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_mean_pass_at_k_averages_prompts_and_drops_k_above_n():
    counts = [0, 1, 4]
    result = mean_pass_at_k(counts, 4, [1, 2, 8])
    assert set(result) == {1, 2}
    assert result[2] == pytest.approx(sum(plain_pass_at_k(4, c, 2) for c in counts) / 3)


@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=40))
def test_entropy_of_normalised_weights(weights):
    total = sum(weights)
    probabilities = [w / total for w in weights]
    assert entropy(probabilities) == pytest.approx(-sum(p * math.log(p) for p in probabilities))


def test_entropy_uniform_and_point_mass():
    assert entropy([0.25] * 4) == pytest.approx(math.log(4))
    assert entropy([1.0, 0.0, 0.0]) == 0.0


def test_coverage_counts_distinct_correct_answers():
    assert coverage([2, 2, 4, 7], {0, 2, 4, 6, 8}) == pytest.approx(2 / 5)
    assert coverage([], {1}) == 0.0
    assert coverage([1], set()) is None


def test_summarize_means_over_prompts():
    records = [{"correct": 2, "mean_reward": 0.5, "entropy": 1.0, "coverage": 0.5},
               {"correct": 0, "mean_reward": 0.0, "entropy": 2.0, "coverage": None}]
    metrics = summarize(records, 4, [1, 4])
    assert metrics["pass@1"] == pytest.approx((2 / 4 + 0) / 2)
    assert metrics["pass@4"] == pytest.approx((1 + 0) / 2)
    assert metrics["entropy"] == pytest.approx(1.5)
    assert metrics["coverage"] == pytest.approx(0.5)  # prompts without known answers are left out
    assert metrics["num_prompts"] == 2
