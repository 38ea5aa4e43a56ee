"""Intervals and verdicts for claims measured over several seeds and several prompts (pure numpy, no model).

The figures of `benchmarks/paper_fidelity.py` are means over seeds and prompts of per-(seed, prompt) values: a
pass@k, an entropy, a coverage, or a *paired* difference between a trained model and the base model of the same
seed on the same prompt. Their 95 % intervals come from a two-level (hierarchical) bootstrap: draw the seeds with
replacement, then, for each seed drawn, draw its prompts with replacement, and take the mean. Both sources of
variation are in the interval: what a seed changes (the base model's initialisation, the training's sampling) and
which prompts happen to be in the evaluation set. Resampling differences, not each model's mean separately, keeps
the pairing: what the base and the trained model share (the seed's base, the prompt's difficulty) cancels.

A claim is decided by whether its interval excludes zero (`verdict`), never by a tolerance on the means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


LEVEL = 0.95
NUM_RESAMPLES = 2000
# Verdicts, as printed.
HOLDS, DOES_NOT_HOLD, UNDECIDED = "holds", "does not hold", "undecided"
WANTS = ("above", "below", "at_or_above")


@dataclass(frozen=True)
class Estimate:
    """A point estimate (the mean over every seed and prompt) and its bootstrap interval."""

    mean: float
    low: float
    high: float

    def format(self, digits: int = 3, signed: bool = False) -> str:
        sign = "+" if signed else ""
        return f"{self.mean:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


def draw_resamples(num_seeds: int, num_prompts: int, num_resamples: int = NUM_RESAMPLES, seed: int = 0):
    """The indices of a two-level bootstrap: ``(seed_index, prompt_index)`` with shapes ``(B, S)`` and
    ``(B, S, P)``: replicate b takes seeds ``seed_index[b]`` (drawn with replacement) and, for its j-th seed, the
    prompts ``prompt_index[b, j]`` (drawn with replacement, independently for each seed drawn)."""
    if num_seeds < 1 or num_prompts < 1 or num_resamples < 1:
        raise ValueError(f"draw_resamples needs at least one seed, prompt and resample, got {num_seeds}, "
                         f"{num_prompts}, {num_resamples}")
    rng = np.random.default_rng(seed)
    seed_index = rng.integers(0, num_seeds, size=(num_resamples, num_seeds))
    prompt_index = rng.integers(0, num_prompts, size=(num_resamples, num_seeds, num_prompts))
    return seed_index, prompt_index


def resample_weights(seed_index: np.ndarray, prompt_index: np.ndarray, num_seeds: int, num_prompts: int) -> np.ndarray:
    """How many times each (seed, prompt) cell is taken in each replicate: shape ``(B, S, P)``."""
    num_resamples, draws = seed_index.shape
    weights = np.zeros((num_resamples, num_seeds, num_prompts))
    replicate = np.broadcast_to(np.arange(num_resamples)[:, None, None], prompt_index.shape)
    seeds = np.broadcast_to(seed_index[:, :, None], prompt_index.shape)
    np.add.at(weights, (replicate, seeds, prompt_index), 1.0)
    return weights


def bootstrap_means(values, resamples) -> np.ndarray:
    """The mean of `values` (shape ``(S, P)`` or ``(S, P, F)``: seeds, prompts, features such as k) in each
    replicate of `resamples` (from `draw_resamples`): shape ``(B,)`` or ``(B, F)``."""
    values = np.asarray(values, dtype=float)
    seed_index, prompt_index = resamples
    num_seeds, num_prompts = values.shape[:2]
    weights = resample_weights(seed_index, prompt_index, num_seeds, num_prompts)
    total = seed_index.shape[1] * prompt_index.shape[2]
    flat = values.reshape(num_seeds, num_prompts, -1)
    means = np.einsum("bsp,spf->bf", weights, flat) / total
    return means[:, 0] if values.ndim == 2 else means


def interval(replicates, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (along the first axis)."""
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(np.asarray(replicates, dtype=float), [tail, 100.0 - tail], axis=0)
    return low, high


def estimate(values, resamples, level: float = LEVEL) -> Estimate:
    """Mean of `values` (shape ``(S, P)``) over every seed and prompt, with its bootstrap interval."""
    values = np.asarray(values, dtype=float)
    low, high = interval(bootstrap_means(values, resamples), level)
    return Estimate(float(values.mean()), float(low), float(high))


def estimate_curve(values, resamples, level: float = LEVEL) -> list[Estimate]:
    """`estimate` for each feature of `values` (shape ``(S, P, F)``): a curve (pass@k over k) with its band."""
    values = np.asarray(values, dtype=float)
    replicates = bootstrap_means(values, resamples)
    low, high = interval(replicates, level)
    means = values.mean(axis=(0, 1))
    return [Estimate(float(m), float(lo), float(hi)) for m, lo, hi in zip(means, low, high, strict=True)]


def estimate_min(values, resamples, level: float = LEVEL) -> tuple[Estimate, int]:
    """The smallest of the feature means of `values` (shape ``(S, P, F)``) with its bootstrap interval, and the
    feature where the point estimate is smallest: "at or above at every k" is "the smallest difference over k is
    at or above zero", one statistic with one interval (no multiple-comparison problem across k)."""
    values = np.asarray(values, dtype=float)
    means = values.mean(axis=(0, 1))
    replicates = bootstrap_means(values, resamples).min(axis=1)
    low, high = interval(replicates, level)
    where = int(np.argmin(means))
    return Estimate(float(means[where]), float(low), float(high)), where


def verdict(estimate_: Estimate, want: str) -> str:
    """`HOLDS`, `DOES_NOT_HOLD` or `UNDECIDED` for a claim about a difference, by its interval alone.

    - ``"above"`` (the difference is positive: "raises"): holds when the interval lies above zero, does not hold
      when it lies below zero, undecided when it contains zero.
    - ``"below"`` ("lowers"): the mirror image.
    - ``"at_or_above"`` ("keeps at or above"): does not hold when the interval lies below zero (a drop is
      established); holds when its lower bound is at or above zero (no drop within the interval). Otherwise
      undecided: no drop was detected, but a drop as large as the lower bound is not excluded. "Keeps" cannot be
      shown without a margin of equivalence, and none is assumed here: the lower bound says how large a drop is
      still possible, and the reader judges whether that is "kept".

    Raises:
        ValueError: `want` is not one of `WANTS`.
    """
    if want not in WANTS:
        raise ValueError(f"verdict: want={want!r} is not supported; use one of {', '.join(map(repr, WANTS))}")
    low, high = estimate_.low, estimate_.high
    if want == "above":
        return HOLDS if low > 0 else DOES_NOT_HOLD if high < 0 else UNDECIDED
    if want == "below":
        return HOLDS if high < 0 else DOES_NOT_HOLD if low > 0 else UNDECIDED
    return HOLDS if low >= 0 else DOES_NOT_HOLD if high < 0 else UNDECIDED


def crossover(differences: np.ndarray, ks) -> int | None:
    """The smallest k from which `differences` (a mode's pass@k minus the base's, one value per k in `ks`) stays
    below zero up to the largest k; None when it is not below zero at the largest k."""
    differences = np.asarray(differences, dtype=float)
    ks = list(ks)
    if differences[-1] >= 0:
        return None
    start = len(ks) - 1
    while start > 0 and differences[start - 1] < 0:
        start -= 1
    return ks[start]


def estimate_crossover(differences, resamples, ks, level: float = LEVEL) -> tuple[int | None, float, float, float]:
    """The crossover k (`crossover`) of the mean differences (shape ``(S, P, K)`` for the `ks`), its bootstrap
    interval (percentiles of the replicates' crossovers, a replicate without a crossover counting as beyond the
    largest k, ``inf``) and the share of replicates without one: ``(k, low, high, share_without)``."""
    differences = np.asarray(differences, dtype=float)
    point = crossover(differences.mean(axis=(0, 1)), ks)
    replicates = bootstrap_means(differences, resamples)
    found = [crossover(row, ks) for row in replicates]
    values = np.array([np.inf if k is None else k for k in found], dtype=float)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail], method="inverted_cdf")
    return point, float(low), float(high), float(np.mean(np.isinf(values)))
