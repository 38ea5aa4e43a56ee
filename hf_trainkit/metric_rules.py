"""The rules of a monitored metric, in one place (Lightning's `mode_dict` / `monitor_op`): which way is better,
what counts as an improvement, how a noisy metric is smoothed. Used by the checkpoint policy, early stopping, the
live diagnostics and the monitor's post-hoc diagnosis, so that a key means the same everywhere.

Stdlib only: the monitor imports it on machines without the training stack.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass


# The worst value of each mode, which any finite value improves on, and the comparison that means "better".
MODE_DICT = {"min": math.inf, "max": -math.inf}
MONITOR_OP = {"min": operator.lt, "max": operator.gt}
# Keys where higher is better; everything else (losses, KL, perplexity ...) is minimised.
_MAX_KEY = re.compile(r"reward|accuracy|acc\b|f1|precision|recall|bleu|rouge|exact_match|score|pass@|win_rate|coverage")
# Smoothing of training-log metrics when the user gives none: TensorBoard's default slider, about the last 10 logs.
TRAIN_LOG_SMOOTHING = 0.9


def default_mode(key: str) -> str:
    """'max' for rewards, accuracies, scores and pass@k, 'min' for everything else (losses)."""
    return "max" if _MAX_KEY.search(key.lower()) else "min"


def check_mode(mode: str, owner: str) -> str:
    if mode not in MODE_DICT:
        raise ValueError(f"{owner}: mode={mode!r} must be 'min' or 'max'.")
    return mode


def is_eval_key(key: str) -> bool:
    """Whether `key` comes from an evaluation (`eval_loss` from the Trainer, `eval/pass@1` from `PassAtKCallback`):
    logged only when an evaluation runs, and already an average over a whole evaluation set."""
    return key.startswith(("eval_", "eval/"))


# What an eval metric is called, by trainer: transformers' `eval_loss`, TRL's `eval_reward`, our `PassAtKCallback`'s
# `eval/pass@1` and `eval/mean_reward`. The first present in this order is the eval curve a run is judged with.
_EVAL_FOR_REWARD = ("eval/mean_reward", "eval_reward", "eval/reward", "eval/pass@1", "eval_mean_reward")


def eval_counterpart(keys, monitored: str) -> str | None:
    """The eval metric that goes with the monitored train metric: for a reward, the first eval reward or pass@1
    logged (`eval/mean_reward`, `eval_reward`, `eval/pass@1`, then any `eval_`/`eval/` key that is maximised); for a
    loss, `eval_loss` (or `eval_<monitored>`). None when none was logged."""
    keys = set(keys)
    if default_mode(monitored) == "max":
        for key in _EVAL_FOR_REWARD + (f"eval_{monitored}", f"eval/{monitored}"):
            if key in keys:
                return key
        rewards = sorted(k for k in keys if is_eval_key(k) and default_mode(k) == "max" and "std" not in k)
        return rewards[0] if rewards else None
    for key in (f"eval_{monitored}", "eval_loss", f"eval/{monitored}"):
        if key in keys:
            return key
    return None


def default_smoothing(key: str) -> float:
    """EMA weight for a monitored key when the user gives none.

    Training-log metrics (`reward`, `loss`, `nsr/avg_reward`) come from one batch each and are noisy: a lucky batch
    must not count as an improvement, so they are smoothed. Evaluation metrics already average a whole evaluation
    set: compared raw.
    """
    return 0.0 if is_eval_key(key) else TRAIN_LOG_SMOOTHING


def gain(best: float, value: float, mode: str) -> float:
    """How much better `value` is than `best` (positive = better), in the metric's units."""
    return (best - value) if mode == "min" else (value - best)


def is_improvement(value: float, best: float | None, mode: str, min_delta: float = 0.0,
                   relative: bool = False) -> bool:
    """Whether `value` beats `best` by more than `min_delta` (absolute, or a fraction of |best| if `relative`).
    A non-finite value never improves; any finite value improves on no best (None)."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return MONITOR_OP[mode](value, MODE_DICT[mode])
    threshold = min_delta * abs(best) if relative else min_delta
    return gain(best, value, mode) > threshold


@dataclass
class SmoothedMetric:
    """TensorBoard's debiased EMA of a metric, one value at a time (`hf_trainkit.diagnostics.ema` is the same over
    a whole curve). Its state travels in checkpoints (`state_dict` keys as the callbacks have always saved them),
    so a resumed run smooths on as if it had never stopped."""

    weight: float = 0.0
    accumulator: float = 0.0
    count: int = 0

    def __post_init__(self):
        if not 0 <= self.weight < 1:
            raise ValueError(f"smoothing={self.weight} must be in [0, 1).")

    def update(self, value: float) -> float:
        """The smoothed value after `value`; non-finite values pass through and leave the state alone."""
        if not self.weight or not math.isfinite(value):
            return value
        self.accumulator = self.accumulator * self.weight + (1 - self.weight) * value
        self.count += 1
        return self.accumulator / (1 - self.weight ** self.count)

    def state_dict(self) -> dict:
        return {"ema_accumulator": self.accumulator, "ema_count": self.count}

    def load_state_dict(self, state: dict):
        self.accumulator = float(state.get("ema_accumulator") or 0.0)
        self.count = int(state.get("ema_count") or 0)


class SmoothedStateAttributes:
    """For a stateful callback holding a `SmoothedMetric` in `self.smoother`: its state as the two attributes
    (`ema_accumulator`, `ema_count`) that `state()["attributes"]` lists and transformers sets back on a resume."""

    smoother: SmoothedMetric

    @property
    def ema_accumulator(self) -> float:
        return self.smoother.accumulator

    @ema_accumulator.setter
    def ema_accumulator(self, value: float):
        self.smoother.accumulator = float(value or 0.0)

    @property
    def ema_count(self) -> int:
        return self.smoother.count

    @ema_count.setter
    def ema_count(self, value: int):
        self.smoother.count = int(value or 0)
