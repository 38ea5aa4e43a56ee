"""compute_mode_advantages against the paper's formulas, written out plainly here with Python floats."""

import math
import statistics

import pytest
import torch

from hf_trainkit.rl import compute_mode_advantages, format_mode_line


NAN = float("nan")
REWARDS = [1.0, 0.0, 0.5, 0.75, NAN, -1.0, 2.0, 0.5000001]


def expected_filtered(rewards, mode, threshold, lam, neg):
    """The paper's reference semantics, one sample at a time."""
    advantages, keep = [], []
    for r in rewards:
        if math.isnan(r):
            advantages.append(0.0)
            keep.append(False)
        elif r > threshold:
            advantages.append({"psr": 1.0, "nsr": 0.0, "w-reinforce": lam}[mode])
            keep.append(mode in ("psr", "w-reinforce"))
        else:
            advantages.append({"psr": 0.0, "nsr": -neg, "w-reinforce": -neg}[mode])
            keep.append(mode in ("nsr", "w-reinforce"))
    return advantages, keep


@pytest.mark.parametrize("mode", ["psr", "nsr", "w-reinforce"])
@pytest.mark.parametrize("threshold,lam,neg", [(0.5, 0.1, 1.0), (0.0, 0.3, 2.0), (1.0, 0.0, 0.5)])
def test_filtered_modes_match_paper(mode, threshold, lam, neg):
    out = compute_mode_advantages(
        torch.tensor(REWARDS), mode, threshold=threshold, positive_weight=lam, negative_weight=neg
    )
    advantages, keep = expected_filtered(REWARDS, mode, threshold, lam, neg)
    assert out.advantages.tolist() == pytest.approx(advantages)
    assert out.keep.tolist() == keep
    scorable = [r for r in REWARDS if not math.isnan(r)]
    positives = sum(r > threshold for r in scorable)
    negatives = sum(r <= threshold for r in scorable)
    assert out.stats["positive_samples"] == positives
    assert out.stats["negative_samples"] == negatives
    assert out.stats["unscorable_samples"] == 1
    assert out.stats["positive_ratio"] == pytest.approx(positives / len(REWARDS))
    assert out.stats["kept_ratio"] == pytest.approx(sum(keep) / len(REWARDS))
    kept_rewards = [r for r, k in zip(REWARDS, keep) if k]
    assert out.stats["avg_reward"] == pytest.approx(statistics.mean(kept_rewards))
    assert out.stats["batch_reward"] == pytest.approx(statistics.mean(scorable))
    if mode == "w-reinforce":
        assert out.stats["pos_neg_ratio"] == pytest.approx(positives / negatives)


def test_threshold_is_strict_for_positives():
    out = compute_mode_advantages(torch.tensor([0.5, 0.5]), "psr", threshold=0.5)
    assert out.keep.tolist() == [False, False]
    assert out.stats["negative_samples"] == 2


def test_w_reinforce_default_lambda_is_point_one():
    out = compute_mode_advantages(torch.tensor([1.0, 0.0]), "w_reinforce")
    assert out.advantages.tolist() == pytest.approx([0.1, -1.0])


def group_advantages(rewards, group, scale):
    """TRL's GRPO advantage, spelled out: (r - mean_group) / (std_group + 1e-4), sample std, NaN-aware, NaN -> 0."""
    result = []
    scorable_all = [r for r in rewards if not math.isnan(r)]
    batch_std = statistics.stdev(scorable_all)
    for start in range(0, len(rewards), group):
        members = rewards[start : start + group]
        scorable = [r for r in members if not math.isnan(r)]
        mean = statistics.mean(scorable)
        std = statistics.stdev(scorable) if len(scorable) > 1 else NAN
        for r in members:
            if math.isnan(r):
                result.append(0.0)
            elif scale == "none":
                result.append(r - mean)
            else:
                divisor = std if scale == "group" else batch_std
                result.append((r - mean) / (divisor + 1e-4))
    return result


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_group_advantages(scale):
    rewards = [1.0, 0.0, 0.0, 1.0, 0.2, 0.9, NAN, 0.4, 3.0, 3.0, 3.0, 3.0]
    out = compute_mode_advantages(torch.tensor(rewards), "grpo", num_generations=4, scale_rewards=scale)
    assert out.advantages.tolist() == pytest.approx(group_advantages(rewards, 4, scale), abs=1e-4)
    # A group of equal rewards has nothing to learn from.
    assert out.advantages[8:].abs().max().item() == pytest.approx(0.0, abs=1e-6)
    assert out.keep.tolist() == [not math.isnan(r) for r in rewards]


def test_all_unscorable_batch_keeps_nothing():
    out = compute_mode_advantages(torch.full((4,), NAN), "w-reinforce")
    assert not out.keep.any()
    assert out.advantages.abs().sum() == 0
    assert math.isnan(out.stats["avg_reward"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "nsrr"}, r"mode='nsrr' is not supported; use one of 'grpo', 'psr', 'nsr', 'w-reinforce'"),
        ({"mode": "psr", "positive_weight": -0.1}, r"positive_weight=-0.1 must be >= 0"),
        ({"mode": "nsr", "negative_weight": -1.0}, r"negative_weight=-1.0 must be >= 0"),
        ({"mode": "psr", "threshold": NAN}, r"threshold=nan"),
        ({"mode": "grpo", "scale_rewards": "median"}, r"scale_rewards='median' is not supported"),
        ({"mode": "grpo", "num_generations": 3}, r"not a whole number of groups"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_mode_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), **kwargs)


def test_rewards_must_be_one_dimensional():
    with pytest.raises(ValueError, match=r"1-D tensor"):
        compute_mode_advantages(torch.zeros(2, 2), "psr")


def test_console_line():
    out = compute_mode_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0]), "psr")
    assert format_mode_line("psr", 0, out.stats) == (
        "PSR [Step 0]: 3/4 positive samples | Avg reward: 1.000 | Batch reward: 0.750"
    )
    out = compute_mode_advantages(torch.tensor([-1.0, 1.0, -1.0, 1.0]), "nsr")
    assert format_mode_line("nsr", 12, out.stats).startswith("NSR [Step 12]: 2/4 negative samples | Avg reward: -1.000")
    # The paper's code's W-REINFORCE line, with the weights the run uses; Avg reward over every kept sample.
    rewards = [5.0, 4.0, 1.842, 2.842]
    out = compute_mode_advantages(torch.tensor(rewards), "w-reinforce", threshold=3.0)
    assert format_mode_line("w_reinforce", 0, out.stats, positive_weight=0.1, negative_weight=1.0) == (
        f"W-REINFORCE [Step 0]: 2 pos (λ=0.1) + 2 neg (λ=1.0) | Avg reward: {sum(rewards) / 4:.3f}")
