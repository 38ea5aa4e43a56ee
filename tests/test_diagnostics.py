"""hf_trainkit.diagnostics on synthetic curves whose verdict is known by construction."""

import math
import random

import pytest

from hf_trainkit.diagnostics import diagnose, ema, find_spikes, new_bests


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


def rewards_of(rate, points, samples, seed):
    """A logged GRPO reward: the mean of `samples` 0/1 completions drawn with success rate `rate(t)`, t in [0, 1]."""
    rng = random.Random(seed)
    return [sum(rng.random() < rate(i / (points - 1)) for _ in range(samples)) / samples for i in range(points)]


def verdicts(rate, points=200, samples=16, seeds=40, **kwargs):
    return [diagnose(range(1, points + 1), rewards_of(rate, points, samples, seed), mode="max", name="reward",
                     **kwargs).verdict for seed in range(seeds)]


# The noise a real GRPO log has: each reward the mean of 16 (or 4) right/wrong completions, +-0.1 by chance alone.


def test_pure_noise_is_a_plateau_never_a_collapse():
    for samples in (4, 16):
        found = verdicts(lambda t: 0.3, samples=samples)
        assert found.count("plateau") >= 36, found  # >= 90 %
        assert sum(v in ("collapsed", "diverged", "overfitting") for v in found) <= 2, found  # <= 5 % false alarms


def test_a_reward_that_improved_and_stayed_is_converged_not_still_improving():
    found = verdicts(lambda t: 0.15 + 0.55 * (1 - math.exp(-t / 0.1)))
    assert found.count("converged") >= 36, found


def test_a_reward_rising_to_the_end_is_still_improving():
    found = verdicts(lambda t: 0.15 + 0.6 * t)
    assert found.count("still improving") >= 36, found


def test_a_transient_dip_is_found_and_said_to_have_recovered():
    rate = lambda t: 0.15 + 0.55 * (1 - math.exp(-t / 0.1)) - (0.4 if 0.45 <= t < 0.6 else 0)  # noqa: E731
    result = diagnose(range(1, 201), rewards_of(rate, 200, 16, seed=3), mode="max", name="reward")
    assert result.verdict == "converged"
    dips = [f for f in result.findings if f.kind == "dip"]
    assert len(dips) == 1 and "recovered by step" in dips[0].message
    # The fall lies inside steps 91..120 (t = 0.45 .. 0.6), where the test put it.
    assert 90 <= dips[0].numbers["worst_step"] <= 125


def test_a_collapse_says_how_far_it_fell_in_the_metrics_units_with_an_interval():
    # Up from 0.15 to 0.7 by step 90, down to 0.2 by step 140, then flat: a fall of 0.5 in success rate.
    rate = lambda t: 0.15 + 0.55 * min(t / 0.45, 1) - (0.5 * min((t - 0.45) / 0.25, 1) if t > 0.45 else 0)  # noqa
    for seed in range(10):
        result = diagnose(range(1, 201), rewards_of(rate, 200, 16, seed), mode="max", name="reward")
        assert result.verdict == "collapsed"
        assert "%" not in result.reason and "lower the learning rate" in result.advice
        fall = next(f for f in result.findings if f.kind == "collapse")
        half_width = 1.96 * fall.numbers["drop_se"]
        # Measured from the best window to the last one (each a tenth of the run): the best sits on the peak's
        # shoulder, at most what the rate moves over half a window (0.55 / 0.45 * 0.05 ~ 0.06) below the true 0.7,
        # and the best of ~20 windows is picked upwards by its noise (about one standard error).
        assert 0.5 - 0.07 - half_width <= fall.numbers["drop"] <= 0.5 + 1.5 * half_width
        assert f"fell {fall.numbers['drop']:.2g} ± {half_width:.2g} from its best" in result.reason
        assert 70 <= fall.numbers["best_step"] <= 100


def test_a_loss_that_blows_up_has_diverged():
    rng = random.Random(0)
    loss = [(2.0 * math.exp(-s / 24) + 0.4) * (math.exp((s - 160) / 10) if s > 160 else 1) * (1 + 0.1 * rng.gauss(0, 1))
            for s in range(200)]
    assert diagnose(range(200), loss).verdict == "diverged"


def test_overfitting_is_eval_worse_than_its_noise_and_names_the_eval_metric():
    rng = random.Random(1)
    train = [(2.0 * math.exp(-s / 60) + 0.3) * (1 + 0.05 * rng.gauss(0, 1)) for s in range(1, 201)]
    eval_steps = list(range(20, 201, 20))
    rising = [0.9 + 3.0 * (s / 200 - 0.4) ** 2 + 0.005 * rng.gauss(0, 1) for s in eval_steps]
    result = diagnose(range(1, 201), train, eval_steps=eval_steps, eval_values=rising)
    assert result.verdict == "overfitting" and result.reason.startswith("eval_loss rose")
    # An eval reward falls when it overfits: named and judged as a reward (higher is better).
    reward = [0.2 + 0.6 * (1 - math.exp(-s / 40)) + 0.05 * rng.gauss(0, 1) for s in range(1, 201)]
    falling = [0.6 - 0.8 * (s / 200 - 0.4) ** 2 * (s > 80) for s in eval_steps]
    result = diagnose(range(1, 201), reward, mode="max", name="reward", eval_steps=eval_steps,
                      eval_values=falling, eval_name="eval/mean_reward")
    assert result.verdict == "overfitting" and result.reason.startswith("eval/mean_reward fell")
    # An eval that only wobbles within its noise is no overfitting.
    wobble = [0.8 + 0.01 * rng.gauss(0, 1) for _ in eval_steps]
    assert diagnose(range(1, 201), train, eval_steps=eval_steps, eval_values=wobble).verdict != "overfitting"


def test_the_verdict_never_contradicts_its_findings():
    shapes = [lambda t: 0.3, lambda t: 0.15 + 0.6 * t, lambda t: 0.7 - 0.5 * (t > 0.6),
              lambda t: 0.2 + 0.5 * (0.3 < t < 0.5), lambda t: 0.15 + 0.55 * (1 - math.exp(-t / 0.1))]
    for shape in shapes:
        for seed in range(10):
            result = diagnose(range(1, 151), rewards_of(shape, 150, 8, seed), mode="max", name="reward")
            advice = [result.advice] + [f.advice for f in result.findings]
            assert not (any("raise the learning rate" in a for a in advice)
                        and any("lower the learning rate" in a for a in advice))
            for finding in result.findings:
                if finding.kind == "collapse" and result.verdict != "collapsed":
                    assert "partly back" in finding.message
            assert (result.verdict == "collapsed") <= any(f.kind == "collapse" for f in result.findings)


def test_few_points_are_not_enough_evidence():
    result = diagnose(range(1, 6), [0.1, 0.5, 0.2, 0.6, 0.3], mode="max", name="reward")
    assert result.verdict == "too short" and "not enough evidence" in result.reason
    # 30 logs of 4-sample rewards that moved by chance: a plateau that says the evidence is thin, not a verdict.
    short = diagnose(range(1, 31), rewards_of(lambda t: 0.3, 30, 4, seed=5), mode="max", name="reward")
    assert short.verdict == "plateau" and "not enough evidence yet" in short.reason


def test_new_bests_are_beyond_the_noise_only():
    flat = rewards_of(lambda t: 0.3, 400, 16, seed=2)
    rising = rewards_of(lambda t: 0.1 + 0.8 * t, 400, 16, seed=2)
    assert len(new_bests(range(400), flat, "max")["new_best"]) <= 2  # the first level, and rarely one lucky window
    events = new_bests(range(400), rising, "max", limit=100)["new_best"]
    assert len(events) >= 5 and all(b["value"] > a["value"] for a, b in zip(events, events[1:]))
    assert new_bests([1, 2], [float("nan"), None], "min") == {"new_best": [], "logs_since_best": 0}


def test_spikes_match_the_rule_written_plainly():
    """find_spikes computes its medians only where a spike is possible; the spikes it finds are those of the rule
    applied log by log: the median and MAD of the 20 logs before, the successive-difference scale (the two largest
    squared differences left out), at least 1 % of the range (and two quanta of a quantised curve)."""
    import statistics

    def plain(values, mode):
        found = []
        floor = max(0.01 * (max(values) - min(values)), 1e-12)
        distinct = sorted(set(values))
        if 1 < len(distinct) <= max(2, len(values) // 4):
            floor = max(floor, 2 * min(b - a for a, b in zip(distinct, distinct[1:])))
        for i in range(10, len(values)):
            recent = values[max(0, i - 20):i]
            median = statistics.median(recent)
            mad = statistics.median(abs(v - median) for v in recent) * 1.4826
            squares = sorted((b - a) ** 2 for a, b in zip(recent, recent[1:]))
            if len(squares) >= 10:
                squares = squares[:-2]
            spread = math.sqrt(sum(squares) / len(squares) / 2)
            z = (values[i] - median) / max(mad, spread, floor)
            if (z if mode == "min" else -z) > 6:
                found.append(i + 1)
        return found

    rng = random.Random(11)
    for trial in range(30):
        values = [rng.gauss(1, 0.1) * (4 if rng.random() < 0.03 else 1) for _ in range(300)]
        if trial % 3 == 0:
            values = rewards_of(lambda t: 0.3 + 0.6 * t, 300, 8, seed=trial)
        for mode in ("min", "max"):
            assert [f.step for f in find_spikes(range(1, 301), values, mode=mode)] == plain(values, mode)
