"""Advantages and sample filters of reward-filtered GRPO: pure torch, no trainer.

The modes follow "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning" (Zhu et al., 2025) and
its reference code (``compute_psr_nsr_outcome_advantage`` and ``batch.subset``):

- ``psr`` (positive sample reinforcement): keep samples with ``reward > threshold``, advantage ``+1``.
- ``nsr`` (negative sample reinforcement): keep samples with ``reward <= threshold``, advantage ``-negative_weight``.
- ``w-reinforce``: keep all; ``+positive_weight`` (the paper's λ) for positives, ``-negative_weight`` for negatives.
- ``grpo``: keep all; TRL's group-normalised advantage ``(r - mean_group) / (std_group + 1e-4)``.

The filtered modes use no baseline and no normalisation: normalising a batch of equal advantages would zero it.
A NaN reward (unscorable completion) is neither positive nor negative: it is never kept and its advantage is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


MODES = ("grpo", "psr", "nsr", "w-reinforce")
_MODE_ALIASES = {"w_reinforce": "w-reinforce", "wreinforce": "w-reinforce"}
SCALE_REWARDS = ("group", "batch", "none")
# TRL adds this to the std so that a group with identical rewards gets advantage 0, not a division by zero.
STD_EPSILON = 1e-4


def canonical_mode(mode: str) -> str:
    """``"W_Reinforce"`` -> ``"w-reinforce"``; raises `ValueError` for an unknown mode."""
    if not isinstance(mode, str):
        raise ValueError(f"mode={mode!r} is not supported; use one of {', '.join(map(repr, MODES))}.")
    normalised = mode.strip().lower()
    normalised = _MODE_ALIASES.get(normalised, normalised)
    if normalised not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; use one of {', '.join(map(repr, MODES))}.")
    return normalised


def metric_prefix(mode: str) -> str:
    """The namespace of a mode's metrics: ``grpo``, ``psr``, ``nsr``, ``w_reinforce``."""
    return canonical_mode(mode).replace("-", "_")


@dataclass
class ModeAdvantages:
    """What [`compute_mode_advantages`] returns.

    Attributes:
        advantages (`torch.Tensor`): float, one per sample; 0 for dropped and unscorable samples.
        keep (`torch.Tensor`): bool, one per sample; the samples that enter the loss.
        stats (`dict[str, float]`): sample counts and ratios for logging (see [`compute_mode_advantages`]).
    """

    advantages: torch.Tensor
    keep: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


def _grouped_nanstd(values: torch.Tensor) -> torch.Tensor:
    """Unbiased std of each row ignoring NaN (TRL's ``nanstd``); NaN for rows with fewer than 2 values."""
    mean = torch.nanmean(values, dim=-1, keepdim=True)
    count = (~torch.isnan(values)).sum(dim=-1, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=-1, keepdim=True) * count / (count - 1)
    return variance.sqrt().squeeze(-1)


def _group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str) -> torch.Tensor:
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale_rewards == "group":
        std = _grouped_nanstd(grouped) if num_generations > 1 else torch.zeros(grouped.shape[0])
        advantages = advantages / (std.repeat_interleave(num_generations).to(rewards) + STD_EPSILON)
    elif scale_rewards == "batch":
        std = _grouped_nanstd(rewards.view(1, -1)) if rewards.numel() > 1 else torch.zeros(1)
        advantages = advantages / (std.to(rewards) + STD_EPSILON)
    return torch.nan_to_num(advantages, nan=0.0)


def compute_mode_advantages(
    rewards: torch.Tensor,
    mode: str,
    *,
    threshold: float = 0.5,
    positive_weight: float = 0.1,
    negative_weight: float = 1.0,
    num_generations: int | None = None,
    scale_rewards: str = "group",
) -> ModeAdvantages:
    """Advantages, kept samples and counts of one batch under a reward-filtered GRPO mode.

    Args:
        rewards (`torch.Tensor`):
            1-D float tensor of total rewards, one per completion, groups of `num_generations` consecutive
            completions per prompt. NaN marks an unscorable completion.
        mode (`str`):
            One of ``"grpo"``, ``"psr"``, ``"nsr"``, ``"w-reinforce"`` (``"w_reinforce"`` accepted).
        threshold (`float`, *optional*, defaults to `0.5`):
            A sample is positive when ``reward > threshold`` and negative when ``reward <= threshold``.
        positive_weight (`float`, *optional*, defaults to `0.1`):
            λ of W-REINFORCE: the advantage of a positive sample.
        negative_weight (`float`, *optional*, defaults to `1.0`):
            Magnitude of the (negative) advantage of a negative sample in NSR and W-REINFORCE.
        num_generations (`int`, *optional*):
            Group size for ``"grpo"``; defaults to the whole batch being one group.
        scale_rewards (`str`, *optional*, defaults to `"group"`):
            ``"group"``, ``"batch"`` or ``"none"``, as in TRL's `GRPOConfig` (``"grpo"`` mode only).

    Returns:
        [`ModeAdvantages`] with ``stats``: ``positive_samples``, ``negative_samples``, ``unscorable_samples``,
        ``kept_samples``, ``total_samples``, ``positive_ratio``, ``negative_ratio`` and ``kept_ratio`` (shares of
        all samples), ``avg_reward`` (mean reward of the kept samples; NaN when none is kept), ``batch_reward``
        (mean over all scorable samples) and, for ``"w-reinforce"``, ``pos_neg_ratio`` (positives per negative;
        NaN without negatives).

    Raises:
        ValueError: unknown mode or `scale_rewards`, a negative weight, a NaN threshold, a non-1-D tensor, or a
            batch that is not a whole number of groups.

    Example:

    ```python
    >>> import torch
    >>> out = compute_mode_advantages(torch.tensor([1.0, 0.0, 1.0, float("nan")]), "nsr")
    >>> out.advantages, out.keep
    (tensor([ 0., -1.,  0.,  0.]), tensor([False,  True, False, False]))
    ```
    """
    mode = canonical_mode(mode)
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        shape = tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a 1-D tensor (one total reward per completion), got {shape}.")
    if math.isnan(threshold):
        raise ValueError("threshold=nan: no reward can be compared with it; pass a number.")
    if positive_weight < 0:
        raise ValueError(f"positive_weight={positive_weight!r} must be >= 0 (it is the advantage of a positive).")
    if negative_weight < 0:
        raise ValueError(f"negative_weight={negative_weight!r} must be >= 0 (the advantage is -negative_weight).")
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards!r} is not supported; use one of {SCALE_REWARDS}.")
    rewards = rewards.float()
    total = rewards.numel()
    num_generations = num_generations or max(total, 1)
    if total % num_generations:
        raise ValueError(f"{total} rewards are not a whole number of groups of num_generations={num_generations}.")

    scorable = ~torch.isnan(rewards)
    positive = scorable & (rewards > threshold)
    negative = scorable & (rewards <= threshold)

    if mode == "psr":
        keep = positive
        advantages = positive.float()
    elif mode == "nsr":
        keep = negative
        advantages = -negative_weight * negative.float()
    elif mode == "w-reinforce":
        keep = scorable
        advantages = positive_weight * positive.float() - negative_weight * negative.float()
    else:
        keep = scorable
        advantages = _group_advantages(rewards, num_generations, scale_rewards) if total else rewards.clone()

    num_positive, num_negative, num_kept = (int(mask.sum()) for mask in (positive, negative, keep))
    stats = {
        "positive_samples": float(num_positive),
        "negative_samples": float(num_negative),
        "unscorable_samples": float(total - int(scorable.sum())),
        "kept_samples": float(num_kept),
        "total_samples": float(total),
        "positive_ratio": num_positive / total if total else math.nan,
        "negative_ratio": num_negative / total if total else math.nan,
        "kept_ratio": num_kept / total if total else math.nan,
        "avg_reward": rewards[keep].mean().item() if num_kept else math.nan,
        "batch_reward": rewards[scorable].mean().item() if bool(scorable.any()) else math.nan,
    }
    if mode == "w-reinforce":
        stats["pos_neg_ratio"] = num_positive / num_negative if num_negative else math.nan
    return ModeAdvantages(advantages=advantages, keep=keep, stats=stats)


def teaching_rows(advantages: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The rows that add something to a policy-gradient loss: kept, with an advantage that is not exactly 0.

    With no other term in the loss (no KL, no entropy bonus), a row of advantage 0 adds exactly 0 to the loss and
    to the gradient of every `loss_type` TRL offers, so leaving it out of the forward pass changes nothing, as long
    as the loss normaliser still counts it. In mode ``"grpo"`` these are the rows of the groups whose rewards all
    differ from nothing: a group with equal rewards has advantage 0 everywhere.
    """
    return keep & (advantages != 0)


def informative_groups(advantages: torch.Tensor, keep: torch.Tensor, num_generations: int) -> torch.Tensor:
    """One bool per group of `num_generations` consecutive rows: does the group teach the mode anything, i.e. does
    it hold a kept row with a non-zero advantage? ``grpo``: rewards not all equal; ``psr``: a positive;
    ``nsr``: a negative (with ``negative_weight > 0``); ``w-reinforce``: a scorable completion.

    Example:

    ```python
    >>> informative_groups(torch.tensor([0.0, 0.0, 1.0, -1.0]), torch.ones(4, dtype=torch.bool), 2)
    tensor([False,  True])
    ```
    """
    if advantages.numel() % num_generations:
        raise ValueError(f"{advantages.numel()} rows are not a whole number of groups of {num_generations}.")
    return teaching_rows(advantages, keep).view(-1, num_generations).any(dim=1)


def format_mode_line(mode: str, step: int, stats: dict[str, float], *, positive_weight: float = 0.1,
                     negative_weight: float = 1.0) -> str:
    """The per-step console line, in the paper's code's words:

        PSR [Step 3]: 5/16 positive samples | Avg reward: 1.000 | Batch reward: 0.312
        NSR [Step 12]: 2/4 negative samples | Avg reward: 0.000 | Batch reward: 0.500
        W-REINFORCE [Step 0]: 2 pos (λ=0.1) + 2 neg (λ=1.0) | Avg reward: 3.421
        GRPO [Step 0]: 2/4 positive, 2/4 negative | Avg reward: 0.500

    ``Avg reward`` is the mean reward of the samples that enter the loss (``avg_reward``); PSR and NSR keep part of
    the batch, so the batch mean follows (the modes that keep every sample would repeat it).
    """
    mode = canonical_mode(mode)
    total = int(stats["total_samples"])
    positives, negatives = int(stats["positive_samples"]), int(stats["negative_samples"])
    kept = stats["avg_reward"]  # NaN when no sample enters the loss (PSR without a positive, NSR without a negative)
    tail = f" | Avg reward: {kept:.3f}" if math.isfinite(kept) else " | Avg reward: — (none kept)"
    batch = f" | Batch reward: {stats['batch_reward']:.3f}"
    if mode == "psr":
        return f"PSR [Step {step}]: {positives}/{total} positive samples{tail}{batch}"
    if mode == "nsr":
        return f"NSR [Step {step}]: {negatives}/{total} negative samples{tail}{batch}"
    if mode == "w-reinforce":
        return (f"W-REINFORCE [Step {step}]: {positives} pos (λ={float(positive_weight)}) + {negatives} neg "
                f"(λ={float(negative_weight)}){tail}")
    return f"{mode.upper()} [Step {step}]: {positives}/{total} positive, {negatives}/{total} negative{tail}"
