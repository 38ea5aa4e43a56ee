"""Live training diagnostics: warn once per episode about what `hf-trainkit monitor` would diagnose post hoc."""

from __future__ import annotations

import math

from transformers.utils import logging

from .. import diagnostics as dx
from ..metric_rules import SmoothedMetric, SmoothedStateAttributes, check_mode, default_mode, is_improvement
from ..metric_rules import gain as metric_gain
from .stateful import StatefulCallback


logger = logging.get_logger(__name__)


class TrainingDiagnosticsCallback(SmoothedStateAttributes, StatefulCallback):
    """Detect and print, once per episode, what goes wrong during training, each with what to try.

    - non-finite `loss` or `grad_norm`;
    - spikes of the loss, the grad norm and the monitored metric (robust z-score against the trailing `window`
      logs, the same rule and words as `hf-trainkit monitor`);
    - plateau: the smoothed monitored metric has not improved by more than `min_delta` (relative) for `patience`
      logs;
    - overfitting: eval loss above its best by 5% while the smoothed train loss keeps falling;
    (The reward filter keeping nothing is warned about by `FilteredGRPOTrainer` itself, which sees every batch.)

    An episode ends when the condition clears; the next occurrence is reported again. Acts on `on_log` (which also
    receives eval metrics); prints on the world process zero; changes nothing in `control`. Its counters survive
    a resume through `ExportableState`. Findings are also kept in `self.findings` (dicts) for programmatic use.

    Args:
        monitor (`str`, *optional*): the metric for plateaus; default `reward` when logged (RL), else `loss`.
        mode (`str`, *optional*): `"min"` or `"max"`; default `max` for a reward, `min` otherwise.
        patience (`int`, *optional*, defaults to `50`): logs without improvement that make a plateau.
        min_delta (`float`, *optional*, defaults to `0.01`): relative improvement that counts.
        smoothing (`float`, *optional*, defaults to `0.6`): TensorBoard EMA weight applied to the monitored metric.
        window (`int`, *optional*, defaults to `20`), z_threshold (`float`, *optional*, defaults to `6.0`): spikes.
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None, patience: int = 50,
                 min_delta: float = 0.01, smoothing: float = 0.6, window: int = dx.SPIKE_WINDOW,
                 z_threshold: float = dx.SPIKE_Z):
        if mode is not None:
            check_mode(mode, "TrainingDiagnosticsCallback")
        if patience < 1 or window < 5:
            raise ValueError(f"TrainingDiagnosticsCallback: patience={patience} and window={window} must be >= 1 "
                             "and >= 5.")
        if not 0 <= smoothing < 1:
            raise ValueError(f"TrainingDiagnosticsCallback: smoothing={smoothing!r} must be in [0, 1).")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.smoothing, self.window, self.z_threshold = smoothing, window, z_threshold
        self.findings: list[dict] = []
        self.active: list[str] = []  # episodes in progress, reported once
        self.recent: dict[str, list[float]] = {}
        self.ranges: dict[str, list[float]] = {}
        self.smoother = SmoothedMetric(smoothing)
        self.best_smoothed: float | None = None
        self.first_smoothed: float | None = None
        self.logs_since_improvement = 0
        self.train_ema: float | None = None
        self.best_eval: float | None = None
        self.train_ema_at_best_eval: float | None = None

    def state(self) -> dict:
        return {
            "args": {"monitor": self.monitor, "mode": self.mode, "patience": self.patience,
                     "min_delta": self.min_delta, "smoothing": self.smoothing, "window": self.window,
                     "z_threshold": self.z_threshold},
            "attributes": {k: getattr(self, k) for k in (
                "findings", "active", "recent", "ranges", "ema_accumulator", "ema_count", "best_smoothed", "first_smoothed",
                "logs_since_improvement", "train_ema", "best_eval", "train_ema_at_best_eval")},
        }

    # --- episodes -------------------------------------------------------------------------------------------------

    def _report(self, state, episode: str, kind: str, message: str, advice: str):
        if episode in self.active:
            return
        self.active.append(episode)
        self.findings.append({"kind": kind, "step": state.global_step, "message": message, "advice": advice})
        if state.is_world_process_zero:
            logger.warning(f"[diagnostics] {message}. {advice}")

    def _clear(self, episode: str):
        if episode in self.active:
            self.active.remove(episode)

    # --- checks ---------------------------------------------------------------------------------------------------

    def _check_spike(self, state, key: str, value: float, mode: str):
        history = self.recent.setdefault(key, [])
        seen = self.ranges.setdefault(key, [value, value])
        seen[0], seen[1] = min(seen[0], value), max(seen[1], value)
        if len(history) >= max(5, self.window // 2):
            z, median = dx.robust_z(history, value, max(0.01 * (seen[1] - seen[0]), 1e-12))
            episode = f"spike:{key}"
            if (z if mode == "min" else -z) > self.z_threshold:
                self._report(state, episode, "spike", dx.spike_message(key, state.global_step, value, median, z),
                             dx.ADVICE["unstable"])
            else:
                self._clear(episode)
        history.append(value)
        del history[: -self.window]

    def _check_plateau(self, state, key: str, mode: str, value: float):
        smoothed = self.smoother.update(value)
        if self.first_smoothed is None:
            self.first_smoothed = smoothed
        if is_improvement(smoothed, self.best_smoothed, mode, self.min_delta, relative=True):
            self.best_smoothed, self.logs_since_improvement = smoothed, 0
            self._clear("plateau")
            self._clear("collapse")
            return
        self.logs_since_improvement += 1
        gain = metric_gain(self.first_smoothed, self.best_smoothed, mode)
        lost = metric_gain(smoothed, self.best_smoothed, mode)
        # Not a plateau: most of the gain is gone, for long enough that it is no spike (the spike check has those).
        if gain > 0 and lost > dx.COLLAPSE_FRACTION * gain and self.logs_since_improvement >= min(self.patience, 10):
            self._report(state, "collapse", "collapse",
                         f"collapse at step {state.global_step}: smoothed {key} fell from its best "
                         f"{self.best_smoothed:.4g} to {smoothed:.4g}, losing {lost / gain:.0%} of its gain since "
                         f"the start ({self.first_smoothed:.4g})",
                         dx.ADVICE["collapsed"])
        elif self.logs_since_improvement >= self.patience:
            self._report(state, "plateau", "plateau",
                         f"plateau at step {state.global_step}: smoothed {key} has not improved by more than "
                         f"{self.min_delta:.0%} for {self.logs_since_improvement} logs (best {self.best_smoothed:.4g}, "
                         f"now {smoothed:.4g})",
                         dx.ADVICE["plateau"])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs:
            return
        try:
            self._on_log(state, logs)
        except Exception as error:  # a diagnostic must never stop training
            logger.warning(f"TrainingDiagnosticsCallback: skipped a check ({type(error).__name__}: {error}).")

    def _on_log(self, state, logs: dict):
        if "eval_loss" in logs:
            self._check_overfitting(state, float(logs["eval_loss"]))
            return
        for key in ("loss", "grad_norm"):
            value = logs.get(key)
            if not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                self._report(state, f"non_finite:{key}", "non_finite", f"{key} is {value} at step {state.global_step}",
                             dx.ADVICE["diverged"])
                continue
            self._clear(f"non_finite:{key}")
            if key == "grad_norm":
                self._check_spike(state, key, float(value), "min")
        monitor = self.monitor or ("reward" if "reward" in logs else "loss")
        mode = self.mode or default_mode(monitor)
        value = logs.get(monitor)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self._check_spike(state, monitor, float(value), mode)
            self._check_plateau(state, monitor, mode, float(value))
        loss = logs.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            self.train_ema = loss if self.train_ema is None else 0.9 * self.train_ema + 0.1 * loss

    def _check_overfitting(self, state, eval_loss: float):
        if not math.isfinite(eval_loss):
            return
        if self.best_eval is None or eval_loss < self.best_eval:
            self.best_eval, self.train_ema_at_best_eval = eval_loss, self.train_ema
            self._clear("overfitting")
            return
        train_falling = (self.train_ema is not None and self.train_ema_at_best_eval is not None
                         and self.train_ema < self.train_ema_at_best_eval)
        if eval_loss > self.best_eval * (1 + dx.OVERFIT_FRACTION) and train_falling:
            self._report(state, "overfitting", "overfitting",
                         f"overfitting at step {state.global_step}: eval loss {eval_loss:.4g} is above its best "
                         f"{self.best_eval:.4g} while the train loss keeps falling", dx.ADVICE["overfitting"])
