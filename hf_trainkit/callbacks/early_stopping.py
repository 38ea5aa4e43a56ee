"""Early stopping on any logged metric (train or eval), with Lightning's options."""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers.utils import logging

from .stateful import StatefulCallback

from ..argparsing import UsageError
from ..diagnostics import OnlineNoise
from ..checkpointing.save_request import request_save, saving_enabled
from ..metric_rules import (MONITOR_OP, SmoothedMetric, SmoothedStateAttributes, check_mode, is_eval_key,
                            is_improvement)


logger = logging.get_logger(__name__)


class MonitorNotLoggedError(UsageError, ValueError):
    """The monitored key is not among the logged ones (strict mode): a configuration mistake, found at step 1."""


def report_missing_monitor(owner: str, monitor: str, logs: dict, seen_keys: list[str], strict: bool) -> bool:
    """Called with a log that lacks `monitor`, before it was ever seen: raise (strict) or warn, and return whether
    a warning was given. Eval keys only arrive with evaluations, so a missing `eval_*` key is judged on eval logs and
    any other key on training logs."""
    seen_keys.extend(key for key in logs if key not in seen_keys)
    is_eval_log = any(is_eval_key(key) for key in logs)
    if is_eval_key(monitor) != is_eval_log:
        return False
    message = (f"{owner}(monitor={monitor!r}): {monitor!r} was never logged (logged: {', '.join(sorted(seen_keys))}); "
               "pick one of those or set strict=False.")
    if strict:
        raise MonitorNotLoggedError(message)
    logger.warning(message)
    return True


@dataclass
class StoppingCheck:
    """The decision of one check: stop or not, and why (``reason`` is empty when training goes on)."""

    should_stop: bool
    reason: str = ""


class MetricEarlyStoppingCallback(SmoothedStateAttributes, StatefulCallback):
    """Stop training when a logged metric stops improving, diverges, or reaches a target; a final checkpoint is
    saved (when saving is on).

    Works on any key that reaches `on_log`: training logs (`loss`, `reward`, `nsr/avg_reward` ...) as well as eval
    metrics (`eval_loss` ...), unlike transformers' `EarlyStoppingCallback` (eval only). Every rank logs the same
    gathered values, so every rank takes the same decision at the same step. Acts on `on_log`; sets
    `control.should_training_stop` and `control.should_save`; prints on the world process zero. Stores the best
    value, the wait counter and the smoothing state through `ExportableState`.

    Args:
        monitor (`str`): the logged key to watch.
        mode (`str`, *optional*, defaults to `"min"`): `"min"` if lower is better, `"max"` if higher is better.
        patience (`int`, *optional*, defaults to `3`): checks (logs of `monitor`, not steps) without improvement
            before stopping. With `logging_steps=10` and `patience=5`, training stops 50 steps after the last
            improvement.
        min_delta (`float`, *optional*, defaults to `0.0`): an improvement must exceed this (absolute).
        check_finite (`bool`, *optional*, defaults to `True`): stop at once on NaN or infinity.
        stopping_threshold (`float`, *optional*): stop as soon as the metric is at least this good.
        divergence_threshold (`float`, *optional*): stop as soon as the metric is worse than this.
        smoothing (`float`, *optional*, defaults to `0.0`): TensorBoard EMA weight applied before comparing, for
            noisy RL rewards (a lucky batch is not an improvement); 0 compares raw values.
        strict (`bool`, *optional*, defaults to `True`): a `monitor` that is never logged is an error (listing the
            keys that were logged); with `False` a warning.
        noise_aware (`bool`, *optional*, defaults to `True`): for a training-log metric (not `eval_*`), an
            improvement must also beat the best by more than the metric's noise: 2.33 standard errors of the
            difference of two (smoothed) values, the noise estimated from the successive differences of the values
            seen (after 8 of them; before, `min_delta` alone), as `hf-trainkit monitor`'s diagnosis does. A lucky
            batch then neither resets the countdown nor becomes the bar to beat.
    """

    def __init__(self, monitor: str, mode: str = "min", patience: int = 3, min_delta: float = 0.0,
                 check_finite: bool = True, stopping_threshold: float | None = None,
                 divergence_threshold: float | None = None, smoothing: float = 0.0, strict: bool = True,
                 noise_aware: bool = True):
        if not monitor:
            raise ValueError("MetricEarlyStoppingCallback: monitor is empty; name a logged key such as 'eval_loss'.")
        check_mode(mode, "MetricEarlyStoppingCallback")
        if patience < 1:
            raise ValueError(f"MetricEarlyStoppingCallback: patience={patience!r} must be >= 1.")
        if min_delta < 0:
            raise ValueError(f"MetricEarlyStoppingCallback: min_delta={min_delta!r} must be >= 0.")
        if not 0 <= smoothing < 1:
            raise ValueError(f"MetricEarlyStoppingCallback: smoothing={smoothing!r} must be in [0, 1).")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.check_finite, self.stopping_threshold = check_finite, stopping_threshold
        self.divergence_threshold, self.smoothing, self.strict = divergence_threshold, smoothing, strict
        self.noise_aware = noise_aware
        # Training-log metrics are one batch each: an improvement must beat the best by more than their noise (the
        # diagnosis's notion). Eval metrics average a whole eval set and are compared as they are.
        self.noise = OnlineNoise() if noise_aware and not is_eval_key(monitor) else None
        self.best: float | None = None
        self.wait = 0
        self.smoother = SmoothedMetric(smoothing)
        self.stopped_step: int | None = None
        self.stopping_reason = ""
        self.seen_keys: list[str] = []
        self.warned_missing = False

    def state(self) -> dict:
        return {
            "args": {"monitor": self.monitor, "mode": self.mode, "patience": self.patience,
                     "min_delta": self.min_delta, "check_finite": self.check_finite,
                     "stopping_threshold": self.stopping_threshold,
                     "divergence_threshold": self.divergence_threshold, "smoothing": self.smoothing,
                     "strict": self.strict, "noise_aware": self.noise_aware},
            "attributes": {"best": self.best, "wait": self.wait, **self.smoother.state_dict(),
                           "noise_state": self.noise_state,
                           "stopped_step": self.stopped_step, "stopping_reason": self.stopping_reason},
        }


    def check(self, value: float) -> StoppingCheck:
        """Update with one logged value and decide (pure of the trainer: testable on a list of values)."""
        name = self.monitor
        if not math.isfinite(value):
            if self.check_finite:
                return StoppingCheck(True, f"{name} is {value}: stopping (check_finite=True)")
            return StoppingCheck(False)
        if self.noise is not None:
            self.noise.observe(value)
        value = self.smoother.update(value)
        better = MONITOR_OP[self.mode]
        if self.divergence_threshold is not None and better(self.divergence_threshold, value):
            return StoppingCheck(True, f"{name}={value:.4g} is worse than divergence_threshold="
                                       f"{self.divergence_threshold}")
        if self.stopping_threshold is not None and not better(self.stopping_threshold, value):
            return StoppingCheck(True, f"{name}={value:.4g} reached stopping_threshold={self.stopping_threshold}")
        if (self.noise.improves(value, self.best, self.mode, self.min_delta, smoothing=self.smoothing)
                if self.noise is not None else is_improvement(value, self.best, self.mode, self.min_delta)):
            self.best, self.wait = value, 0
            return StoppingCheck(False)
        self.wait += 1
        if self.wait >= self.patience:
            return StoppingCheck(True, f"{name} did not improve by more than {self._margin()} for {self.wait} "
                                       f"checks (best {self.best:.4g})")
        return StoppingCheck(False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs or self.stopped_step is not None:
            return
        value = logs.get(self.monitor)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self._missing(state, logs)
            return
        decision = self.check(float(value))
        if decision.should_stop:
            self.stopped_step, self.stopping_reason = state.global_step, decision.reason
            control.should_training_stop = True
            if saving_enabled(args):  # the final checkpoint, unless the run was told to write none
                request_save(control, state, "final", stopped_by="early stopping")
            if state.is_world_process_zero:
                logger.warning(f"Early stopping at step {state.global_step}: {decision.reason}.")
        elif self.wait * 2 > self.patience and state.is_world_process_zero:
            # The countdown of the last half of the patience: what a user watching the console or the dashboard
            # wants to know before the stop, not after it.
            beyond = f" by more than {self._margin()}" if self._noise_margin() else ""
            logger.warning(f"Early stopping countdown at step {state.global_step}: {self.monitor} has not improved"
                           f"{beyond} for {self.wait} of {self.patience} checks (best {self.best:.4g}); "
                           f"{self.patience - self.wait} left.")

    @property
    def noise_state(self) -> dict | None:
        """The noise estimate's state, as `state()["attributes"]` saves it and transformers sets it back."""
        return self.noise.state_dict() if self.noise is not None else None

    @noise_state.setter
    def noise_state(self, value: dict | None):
        if self.noise is not None and value:
            self.noise.load_state_dict(value)

    def _noise_margin(self) -> float:
        return self.noise.threshold(self.smoothing) if self.noise is not None else 0.0

    def _margin(self) -> str:
        """What an improvement had to exceed: `min_delta`, or the metric's noise when that is larger."""
        noise = self._noise_margin()
        return f"{noise:.3g} (its noise)" if noise > self.min_delta else f"{self.min_delta}"

    def _missing(self, state, logs: dict):
        if self.best is None and not self.warned_missing:
            self.warned_missing = report_missing_monitor(type(self).__name__, self.monitor, logs, self.seen_keys,
                                                         self.strict)
