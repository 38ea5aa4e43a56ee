"""Which checkpoints a policy saves and keeps: pure decisions, shared by the callback and the tests."""

from __future__ import annotations

import math
import re

from .validate import CheckpointInfo


# Keys where higher is better; everything else (losses, KL, perplexity ...) is minimised.
_MAX_KEY = re.compile(r"reward|accuracy|acc\b|f1|precision|recall|bleu|rouge|exact_match|score|pass@|win_rate")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_mode(key: str) -> str:
    """'max' for rewards, accuracies and scores, 'min' for everything else (losses)."""
    return "max" if _MAX_KEY.search(key.lower()) else "min"


def is_eval_key(key: str) -> bool:
    """Whether `key` comes from an evaluation (`eval_loss` from the Trainer, `eval/pass@1` from `PassAtKCallback`):
    logged only when an evaluation runs, and already an average over a whole evaluation set."""
    return key.startswith(("eval_", "eval/"))


def default_smoothing(key: str) -> float:
    """EMA weight for a monitored key when the user gives none.

    Training-log metrics (`reward`, `loss`, `nsr/avg_reward`) come from one batch each and are noisy: a lucky batch
    must not count as an improvement, so they are smoothed with weight 0.9 (TensorBoard's default slider, about
    the last 10 logs). Evaluation metrics (`is_eval_key`) already average a whole evaluation set: compared raw.
    """
    return 0.0 if is_eval_key(key) else 0.9


def is_improvement(value: float, best: float | None, mode: str, min_delta: float = 0.0,
                   relative: bool = False) -> bool:
    """Whether `value` beats `best` by more than `min_delta` (absolute, or a fraction of |best| if `relative`)."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    gain = (best - value) if mode == "min" else (value - best)
    threshold = min_delta * abs(best) if relative else min_delta
    return gain > threshold


def monitored_value(info: CheckpointInfo, key: str) -> float | None:
    """The value a checkpoint was saved with for `key`: the policy's (smoothed) value, else the raw metric."""
    monitor = info.marker.get("monitor") or {}
    value = monitor.get("value") if monitor.get("key") == key else info.metrics.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def best_checkpoints(checkpoints: list[CheckpointInfo], key: str, mode: str, k: int) -> list[CheckpointInfo]:
    """The `k` valid checkpoints with the best `key`, best first (ties: the older step first, as it came first)."""
    scored = [(monitored_value(c, key), c) for c in checkpoints if c.valid]
    scored = [(v, c) for v, c in scored if v is not None]
    scored.sort(key=lambda vc: ((vc[0] if mode == "min" else -vc[0]), vc[1].step))
    return [c for _, c in scored[:k]]


def pinned_names(checkpoints: list[CheckpointInfo]) -> set[str]:
    """Folders whose marker pins them (named checkpoints): rotation never deletes them."""
    return {c.name for c in checkpoints if c.marker.get("pinned")}


def validate_checkpoint_name(name: str) -> str:
    """`name` if it is a safe checkpoint name, else ValueError saying why (it ends up in a JSON file and a URL)."""
    if not isinstance(name, str) or not name:
        raise ValueError("the checkpoint name is empty")
    if "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise ValueError(f"checkpoint name {name!r} must not contain '/', '\\' or '..'")
    if not NAME_PATTERN.match(name):
        raise ValueError(f"checkpoint name {name[:80]!r} must be 1-64 characters of letters, digits, '_', '.', '-', "
                         "starting with a letter or digit")
    return name
