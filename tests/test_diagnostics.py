"""hf_trainkit.diagnostics on synthetic curves whose verdict is known by construction."""

import math
import random

import pytest

from hf_trainkit.diagnostics import diagnose, ema, find_spikes, steps_since_improvement


def tensorboard_ema(values, weight):
    """TensorBoard's smoothing as its frontend writes it (debiased running average)."""
    out, last, n = [], 0.0, 0
    for v in values:
        last = last * weight + (1 - weight) * v
        n += 1
        out.append(last / (1 - weight**n))
    return out


def test_ema_is_tensorboards_debiased_average():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    assert ema(values, 0.6) == pytest.approx(tensorboard_ema(values, 0.6))
    assert ema(values, 0.0) == values
    assert ema([5.0], 0.9) == [5.0]  # debiasing: the first point is not pulled towards 0


@pytest.mark.parametrize("weight", [0.1, 0.6, 0.9, 0.99])
def test_ema_long_series(weight):
    rng = random.Random(1)
    values = [rng.gauss(0, 1) + i * 0.01 for i in range(5000)]
    assert ema(values, weight) == pytest.approx(tensorboard_ema(values, weight), rel=1e-9, abs=1e-9)


def test_ema_passes_non_finite_through():
    out = ema([1.0, float("nan"), 1.0], 0.5)
    assert math.isnan(out[1]) and out[2] == pytest.approx(1.0)


def noisy(values, scale=0.01, seed=0):
    rng = random.Random(seed)
    return [v + rng.gauss(0, scale) for v in values]


STEPS = list(range(1, 201))


@pytest.mark.parametrize(
    "values,mode,expected",
    [
        (noisy([2.0 * math.exp(-s / 20) + 0.5 for s in STEPS]), "min", "converged"),
        (noisy([3.0 - 0.01 * s for s in STEPS]), "min", "still improving"),
        (noisy([1.0] * 200, scale=0.005), "min", "plateau"),
        (noisy([0.1 + 0.004 * s for s in STEPS]), "max", "still improving"),  # a rising reward
        (noisy([1.0 - 0.004 * s for s in STEPS] + [2.5] * 0, scale=0.005)[:100] + [3.0] * 100, "min", "diverged"),
        ([1.0 / s for s in STEPS[:-1]] + [float("nan")], "min", "diverged"),
        ([1.0, 0.9, 0.8], "min", "too short"),
    ],
)
def test_verdicts(values, mode, expected):
    assert diagnose(STEPS[: len(values)], values, mode=mode).verdict == expected


def test_overfitting_needs_eval_rising_while_train_falls():
    train = noisy([2.0 * math.exp(-s / 50) for s in STEPS])
    eval_steps = list(range(20, 201, 20))
    eval_values = [1.0, 0.8, 0.7, 0.65, 0.66, 0.7, 0.75, 0.8, 0.85, 0.9]
    result = diagnose(STEPS, train, eval_steps=eval_steps, eval_values=eval_values)
    assert result.verdict == "overfitting"
    assert result.numbers["eval_best"] == 0.65 and result.numbers["eval_best_step"] == 80
    falling_eval = [1.0 - 0.05 * i for i in range(10)]
    assert diagnose(STEPS, train, eval_steps=eval_steps, eval_values=falling_eval).verdict != "overfitting"


def test_spikes_are_found_in_the_bad_direction_only():
    values = noisy([1.0] * 100, scale=0.01)
    values[60] = 3.0  # up: bad for a loss
    values[80] = -1.0  # down: good for a loss
    found = find_spikes(STEPS[:100], values, mode="min")
    assert [f.step for f in found] == [61]
    assert [f.step for f in find_spikes(STEPS[:100], values, mode="max")] == [81]
    unstable = noisy([1.0] * 100, scale=0.01)
    for i in (30, 50, 70, 90):
        unstable[i] = 4.0
    assert diagnose(STEPS[:100], unstable).verdict == "unstable"


def test_a_loss_resting_near_zero_is_not_spiky():
    values = [0.3 * math.exp(-s / 5) for s in STEPS[:60]]
    values[40] += 1e-3
    assert find_spikes(STEPS[:60], values) == []


def test_steps_since_improvement():
    assert steps_since_improvement([5, 4, 3, 3.1, 3.05, 3.2], mode="min") == 3
    assert steps_since_improvement([1, 2, 3], mode="max") == 0
    assert steps_since_improvement([1.0, 0.999, 0.998], mode="min", min_delta=0.01) == 2


def binomial_batch_means(probabilities, batch, seed=0):
    """What an RL run logs as `reward`: the mean of `batch` 0/1 rewards drawn with the given success rates."""
    rng = random.Random(seed)
    return [sum(rng.random() < p for _ in range(batch)) / batch for p in probabilities]


def test_batch_means_of_0_1_rewards_are_not_spikes_but_a_real_drop_is():
    steps = list(range(1, 301))
    rewards = binomial_batch_means([min(0.97, 0.2 + s / 150) for s in steps], batch=16)
    assert find_spikes(steps, rewards, "reward", mode="max") == []
    assert diagnose(steps, rewards, mode="max", name="reward").verdict != "unstable"
    dropped = rewards[:250] + [0.0] + rewards[251:]  # one batch with nothing right, amid ~0.95
    spikes = find_spikes(steps, dropped, "reward", mode="max")
    assert [finding.step for finding in spikes] == [251]


def test_a_reward_that_rose_and_fell_back_has_collapsed_not_converged():
    steps = list(range(1, 201))
    reward = [0.3 + 0.3 * min(s, 100) / 100 - (0.3 * (s - 100) / 100 if s > 100 else 0) for s in steps]
    result = diagnose(steps, reward, mode="max", name="reward")
    assert result.verdict == "collapsed"
    assert "raise the learning rate" not in result.advice and "lower the learning rate" in result.advice
    assert "step 101" in result.reason and "%" in result.reason
    # The percentage it prints is the share of the gain lost, computed plainly from the smoothed curve:
    smooth = ema(reward, 0.6)
    lost = (max(smooth) - smooth[-1]) / (max(smooth) - smooth[0])
    assert f"{lost:.0%} of its gain" in result.reason


def test_changes_are_reported_as_differences_not_as_percentages_of_something_else():
    steps = list(range(1, 101))
    reward = [0.125 + 0.66 * (1 - math.exp(-s / 10)) for s in steps]
    result = diagnose(steps, reward, mode="max", name="reward")
    assert result.verdict == "converged"
    assert "%)" not in result.reason.split("and the last quarter")[0]
    assert f"({result.numbers['final'] - result.numbers['first']:+.4g})" in result.reason
