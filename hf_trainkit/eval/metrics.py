"""The evaluation metrics, as pure functions of counts and probabilities (no model, no torch).

pass@k is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code"): with
`n` samples of which `c` are correct, the chance that `k` samples drawn without replacement include a correct one.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k), computed as a product so that n = 1024 does not overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    failure = 1.0
    for i in range(n - c + 1, n + 1):
        failure *= 1.0 - k / i
    return 1.0 - failure


def mean_pass_at_k(correct_counts: Sequence[int], n: int, ks: Iterable[int]) -> dict[int, float]:
    """pass@k averaged over prompts, for each k <= n (larger k are left out: they cannot be estimated)."""
    if not correct_counts:
        return {}
    return {k: sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks if 1 <= k <= n}


def entropy(probabilities: Sequence[float]) -> float:
    """Shannon entropy in nats of one distribution (zero probabilities add nothing)."""
    return -sum(p * math.log(p) for p in probabilities if p > 0)


def coverage(found: Iterable[Hashable], correct: Iterable[Hashable]) -> float | None:
    """Share of the correct answers that the samples found (None when no answer is correct)."""
    correct = set(correct)
    if not correct:
        return None
    return len(set(found) & correct) / len(correct)


def summarize(records: Sequence[dict], n: int, ks: Iterable[int]) -> dict[str, float]:
    """The logged metrics of a list of per-prompt records (see `hf_trainkit.eval.sampling.evaluate`).

    ``pass@k`` for each k, ``mean_reward`` over all samples, ``entropy`` (mean over prompts of the first answer
    token's entropy) and ``coverage`` (mean over the prompts whose correct answers are known).
    """
    if not records:
        return {}
    metrics = {f"pass@{k}": value for k, value in mean_pass_at_k([r["correct"] for r in records], n, ks).items()}
    metrics["mean_reward"] = sum(r["mean_reward"] for r in records) / len(records)
    metrics["num_prompts"] = len(records)  # shows that every rank's share was gathered
    entropies = [r["entropy"] for r in records if r.get("entropy") is not None]
    if entropies:
        metrics["entropy"] = sum(entropies) / len(entropies)
    coverages = [r["coverage"] for r in records if r.get("coverage") is not None]
    if coverages:
        metrics["coverage"] = sum(coverages) / len(coverages)
    return metrics
