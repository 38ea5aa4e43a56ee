"""hf_trainkit.eval.intervals, checked against plainly written computations: loops over the drawn indices, closed
forms for normal data, differences that are constant by construction, verdict tables."""

import math
import random
import statistics

import numpy as np
import pytest

from hf_trainkit.eval import intervals
from hf_trainkit.eval.intervals import Estimate, verdict


def test_bootstrap_means_equal_a_loop_over_the_drawn_indices():
    rng = random.Random(3)
    values = [[[rng.random() for _ in range(3)] for _ in range(7)] for _ in range(4)]  # seeds, prompts, features
    seed_index, prompt_index = intervals.draw_resamples(4, 7, num_resamples=50, seed=11)
    got = intervals.bootstrap_means(values, (seed_index, prompt_index))
    for b in range(50):
        for f in range(3):
            taken = [values[seed_index[b][j]][prompt_index[b][j][i]][f] for j in range(4) for i in range(7)]
            assert got[b][f] == pytest.approx(sum(taken) / len(taken), abs=1e-12)
    flat = intervals.bootstrap_means([[row[0] for row in seed] for seed in values], (seed_index, prompt_index))
    assert flat.shape == (50,)
    assert flat == pytest.approx(got[:, 0])


def test_draws_are_uniform_and_each_seed_resamples_its_own_prompts():
    seed_index, prompt_index = intervals.draw_resamples(5, 9, num_resamples=4000, seed=0)
    counts = np.bincount(seed_index.ravel(), minlength=5) / seed_index.size
    assert counts == pytest.approx([0.2] * 5, abs=0.01)
    counts = np.bincount(prompt_index.ravel(), minlength=9) / prompt_index.size
    assert counts == pytest.approx([1 / 9] * 9, abs=0.005)
    # Two draws of the same seed in one replicate get different prompt draws.
    assert any(not np.array_equal(prompt_index[b, 0], prompt_index[b, 1]) for b in range(10))


def test_one_seed_interval_matches_the_normal_interval_of_a_mean():
    rng = random.Random(5)
    data = [rng.gauss(10.0, 2.0) for _ in range(400)]
    resamples = intervals.draw_resamples(1, 400, num_resamples=4000, seed=1)
    got = intervals.estimate([data], resamples)
    half = 1.96 * statistics.stdev(data) / math.sqrt(len(data))
    assert got.mean == pytest.approx(statistics.fmean(data))
    assert got.low == pytest.approx(statistics.fmean(data) - half, abs=0.04 * half + 0.01)
    assert got.high == pytest.approx(statistics.fmean(data) + half, abs=0.04 * half + 0.01)


def test_seed_level_variation_widens_the_interval():
    """Prompts agree within a seed but seeds disagree: resampling prompts alone would give a zero-width interval;
    resampling seeds gives the spread of the seed means."""
    seed_means = [0.1, 0.5, 0.3, 0.9, 0.7]
    values = [[m] * 12 for m in seed_means]
    got = intervals.estimate(values, intervals.draw_resamples(5, 12, num_resamples=3000, seed=2))
    assert got.mean == pytest.approx(0.5)
    assert got.low < 0.3 and got.high > 0.7
    assert got.low >= min(seed_means) and got.high <= max(seed_means)


def test_paired_differences_cancel_what_seed_and_prompt_share():
    rng = random.Random(7)
    base = [[rng.random() for _ in range(10)] for _ in range(5)]
    mode = [[b + 0.01 for b in row] for row in base]
    resamples = intervals.draw_resamples(5, 10, seed=3)
    separate = intervals.estimate(mode, resamples), intervals.estimate(base, resamples)
    assert separate[0].low < separate[1].high  # the two intervals overlap: separately, nothing is decided
    difference = intervals.estimate(np.array(mode) - np.array(base), resamples)
    assert difference.low == pytest.approx(0.01) and difference.high == pytest.approx(0.01)
    assert verdict(difference, "above") == intervals.HOLDS


def test_curve_and_min_of_a_curve():
    # Feature f of every cell is f / 10, except feature 2, which is -0.5 in seed 0 only.
    values = np.tile(np.arange(4) / 10, (3, 6, 1))
    values[0, :, 2] = -0.5
    resamples = intervals.draw_resamples(3, 6, seed=4)
    curve = intervals.estimate_curve(values, resamples)
    assert [e.mean for e in curve] == pytest.approx([0.0, 0.1, (0.2 + 0.2 - 0.5) / 3, 0.3])
    assert curve[0].low == curve[0].high == pytest.approx(0.0)
    lowest, where = intervals.estimate_min(values, resamples)
    assert where == 2 and lowest.mean == pytest.approx(-0.1 / 3)
    # In each replicate the smallest feature mean is min(0, mean of feature 2): never above 0, as low as -0.5.
    assert lowest.high <= 0.0 and lowest.low >= -0.5


@pytest.mark.parametrize(
    ("low", "high", "want", "expected"),
    [
        (0.01, 0.2, "above", "holds"), (-0.01, 0.2, "above", "undecided"), (-0.2, -0.01, "above", "does not hold"),
        (-0.2, -0.01, "below", "holds"), (-0.2, 0.01, "below", "undecided"), (0.01, 0.2, "below", "does not hold"),
        (0.0, 0.1, "at_or_above", "holds"), (-0.001, 0.1, "at_or_above", "undecided"),
        (-0.1, -0.001, "at_or_above", "does not hold"), (0.0, 0.1, "above", "undecided"),
    ],
)
def test_verdict_table(low, high, want, expected):
    assert verdict(Estimate((low + high) / 2, low, high), want) == expected


def test_verdict_rejects_an_unknown_claim_kind():
    with pytest.raises(ValueError, match="want='higher' is not supported"):
        verdict(Estimate(0, 0, 0), "higher")


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        ([0.2, 0.1, -0.1, -0.2], 16),  # below from the third k on
        ([0.2, -0.1, 0.1, -0.2], 64),  # dips, comes back, falls again: the crossover is where it stays below
        ([0.2, 0.1, 0.0, 0.1], None),  # never below at the largest k
        ([-0.1, -0.1, -0.1, -0.1], 1),
    ],
)
def test_crossover(differences, expected):
    assert intervals.crossover(differences, [1, 4, 16, 64]) == expected


def test_crossover_interval_for_seeds_that_disagree():
    ks = [1, 2, 4, 8]
    cross_at_4 = [0.1, 0.05, -0.05, -0.25]  # no tie at k=8 in any mix of four seeds
    never = [0.1, 0.1, 0.1, 0.1]
    identical = np.array([[cross_at_4] * 5] * 4)
    point, low, high, without = intervals.estimate_crossover(identical, intervals.draw_resamples(4, 5, seed=5), ks)
    assert (point, low, high, without) == (4, 4.0, 4.0, 0.0)
    mixed = np.array([[cross_at_4] * 5, [cross_at_4] * 5, [never] * 5, [never] * 5])
    point, low, high, without = intervals.estimate_crossover(mixed, intervals.draw_resamples(4, 5, seed=5), ks)
    # Computed plainly: a replicate has no crossover when its mean at the largest k is >= 0 (prompts are
    # identical within a seed, so only the seeds drawn matter).
    seed_index, prompt_index = intervals.draw_resamples(4, 5, seed=5)
    expected_without = sum(
        statistics.fmean(mixed[s, 0, 3] for s in seed_index[b]) >= 0 for b in range(len(seed_index))
    ) / len(seed_index)
    assert without == pytest.approx(expected_without)
    assert high == math.inf and 0 < without < 1
