"""Live training diagnostics: the trajectory model (`hf_trainkit.diagnostics.diagnose`, the one `hf-trainkit monitor`
and the dashboard use) on the logs seen so far, each finding printed once, when the evidence is there."""

from __future__ import annotations

import math

from transformers.utils import logging

from .. import diagnostics as dx
from ..metric_rules import check_mode, default_mode, eval_counterpart, is_eval_key
from .stateful import StatefulCallback


logger = logging.get_logger(__name__)
# The model reads the whole curve (about 2 ms for 100 logs, 0.5 s for 100,000): past JUDGE_EVERY logs it runs again
# only n // JUDGE_EVERY logs after the last time (about 25 times each time the run grows e-fold), which keeps it
# under 1 ms a log at any length and says a collapse or a plateau at most 4 % of the run later than every log would.
JUDGE_EVERY = 25


class TrainingDiagnosticsCallback(StatefulCallback):
    """Print, once each, what goes wrong during training, with what to try; the same verdicts and words as
    `hf-trainkit monitor`, because both call the same model on the same curve.

    - non-finite `loss` or `grad_norm`, and spikes of the loss and the grad norm (robust z-score against the trailing
      `window` logs);
    - on the monitored metric (the reward for RL runs, else the loss), the model's findings as the evidence arrives:
      spikes, a collapse (the level fell from its best by more than its noise and gave back at least half its
      gain; and, once, that it recovered), overfitting (its eval counterpart, `eval_loss`, `eval/mean_reward`,
      `eval/pass@1` ..., worse than its best by more than its noise), a divergence, and a plateau (nothing changed
      beyond the noise in at least `patience` logs).

    Each is printed once per episode (an episode ends when the condition clears); a plateau once a run, and once
    that it is over when the metric has since moved beyond its noise. Differences are in the metric's units with their 95 % intervals.
    Acts on `on_log`; prints on the world process zero; changes nothing in `control`. The curve itself is read back
    from `state.log_history` (restored on resume), so only what was announced travels in checkpoints. Findings are
    also kept in `self.findings` (dicts).

    Args:
        monitor (`str`, *optional*): the metric to judge; default `reward` when logged (RL), else `loss`.
        mode (`str`, *optional*): `"min"` or `"max"`; default `max` for a reward, `min` otherwise.
        patience (`int`, *optional*, defaults to `50`): logs before a plateau can be called.
        window (`int`, *optional*, defaults to `20`), z_threshold (`float`, *optional*, defaults to `6.0`): spikes.
        min_delta, smoothing: accepted for callback states saved by earlier versions; unused.
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None, patience: int = 50,
                 window: int = dx.SPIKE_WINDOW, z_threshold: float = dx.SPIKE_Z, min_delta: float | None = None,
                 smoothing: float | None = None):
        # `min_delta` and `smoothing` were arguments of earlier versions and are still in their checkpoints'
        # callback states: accepted and unused (changes are now judged against the curve's own noise).
        if mode is not None:
            check_mode(mode, "TrainingDiagnosticsCallback")
        if patience < 1 or window < 5:
            raise ValueError(f"TrainingDiagnosticsCallback: patience={patience} and window={window} must be >= 1 "
                             "and >= 5.")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.window, self.z_threshold = window, z_threshold
        self.findings: list[dict] = []
        self.active: list[str] = []  # episodes in progress, reported once
        self.announced: dict[str, int] = {}  # episode -> the number of logs when it was last announced
        self.recent: dict[str, list[float]] = {}
        self.ranges: dict[str, list[float]] = {}
        # The curves seen so far (not saved: rebuilt from `state.log_history` after a resume).
        self._key: str | None = monitor
        self._curve: tuple[list, list] = ([], [])
        self._eval: dict[str, tuple[list, list]] = {}
        self._seeded = False
        self._next_judgement = 0  # the number of logs at which the model runs next
        self._moved_since: int | None = None  # the log since which the metric is judged moved beyond its noise
        self._up_since: int | None = None  # the log since which it is judged not collapsed

    def state(self) -> dict:
        return {
            "args": {"monitor": self.monitor, "mode": self.mode, "patience": self.patience, "window": self.window,
                     "z_threshold": self.z_threshold},
            "attributes": {k: getattr(self, k) for k in ("findings", "active", "announced", "recent", "ranges")},
        }

    # --- episodes -------------------------------------------------------------------------------------------------

    def _report(self, state, episode: str, kind: str, message: str, advice: str):
        if episode in self.active:
            return
        self.active.append(episode)
        self.findings.append({"kind": kind, "step": state.global_step, "message": message, "advice": advice})
        if state.is_world_process_zero:
            logger.warning(f"[diagnostics] {message}." + (f" {advice}" if advice else ""))

    def _clear(self, episode: str) -> bool:
        if episode in self.active:
            self.active.remove(episode)
            return True
        return False

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
                             dx.ADVICE["spike"])
            else:
                self._clear(episode)
        history.append(value)
        del history[: -self.window]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs:
            return
        try:
            self._on_log(state, logs)
        except Exception as error:  # a diagnostic must never stop training
            logger.warning(f"TrainingDiagnosticsCallback: skipped a check ({type(error).__name__}: {error}).")

    def _add(self, entry: dict, step):
        """One log into the curves: the monitored metric and every eval metric."""
        if not isinstance(step, (int, float)):
            return
        if self._key is None and not any(is_eval_key(key) for key in entry):
            self._key = self.monitor or ("reward" if "reward" in entry else "loss")
        for key, value in entry.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key == self._key:
                self._curve[0].append(float(step))
                self._curve[1].append(float(value))
            elif is_eval_key(key):
                steps, values = self._eval.setdefault(key, ([], []))
                steps.append(float(step))
                values.append(float(value))

    def _seed(self, state, logs: dict):
        """After a resume, the curve so far from `state.log_history` (restored with the checkpoint); the Trainer
        appends the current log to it before calling `on_log`, so that one comes from `logs`."""
        self._seeded = True
        history = list(state.log_history or [])
        if history and all(k in history[-1] and history[-1][k] is v for k, v in logs.items()):
            history.pop()
        if self.monitor is None and any("reward" in entry for entry in history):
            self._key = "reward"
        for entry in history:
            self._add(entry, entry.get("step"))

    def _on_log(self, state, logs: dict):
        for key in ("loss", "grad_norm"):
            value = logs.get(key)
            if not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                self._report(state, f"non_finite:{key}", "non_finite", f"{key} is {value} at step {state.global_step}",
                             dx.ADVICE["diverged"])
                continue
            self._clear(f"non_finite:{key}")
            if key == "grad_norm":  # the loss's spikes, when it is the monitored metric, come from the model
                self._check_spike(state, key, float(value), "min")
        if not self._seeded:
            self._seed(state, logs)
        self._add(logs, state.global_step)
        value = logs.get(self._key) if self._key else None
        if isinstance(value, (int, float)) and math.isfinite(value) and self._key != "grad_norm":
            # As it comes, by the model's own rule (robust z against the trailing window): a spike is news now.
            self._check_spike(state, self._key, float(value), self.mode or default_mode(self._key))
        points = len(self._curve[1])
        if self._key is None or points < dx.MIN_POINTS:
            return
        if points < self._next_judgement and not any(is_eval_key(k) for k in logs):
            return
        self._next_judgement = points + max(1, points // JUDGE_EVERY)
        self._judge(state, self._key, self.mode or default_mode(self._key), points)

    @staticmethod
    def _lasted(since: int | None, points: int) -> bool:
        """Whether a state of the verdict that began at log `since` has lasted a tenth of the run (5 logs at least)."""
        return since is not None and points - since >= max(5, points // 10)

    def _judge(self, state, monitor: str, mode: str, points: int):
        eval_key = eval_counterpart(self._eval, monitor)
        eval_steps, eval_values = self._eval.get(eval_key, ([], []))
        result = dx.diagnose(*self._curve, mode=mode, name=monitor, eval_steps=eval_steps, eval_values=eval_values,
                             eval_name=eval_key or "eval_loss")
        step = state.global_step
        at = f"at step {step}"
        collapsed = result.verdict == "collapsed"
        self._up_since = None if collapsed else (points if self._up_since is None else self._up_since)
        if collapsed:
            self._report(state, "collapse", "collapse", f"collapse {at}: {result.reason}", result.advice)
        elif self._lasted(self._up_since, points) and self._clear("collapse"):  # over for a tenth of the run
            fall = next((f for f in reversed(result.findings) if f.kind in ("dip", "collapse", "past best")), None)
            recovered = fall.message if fall else result.reason
            self.findings.append({"kind": "recovered", "step": step, "message": recovered, "advice": ""})
            if state.is_world_process_zero:
                logger.warning(f"[diagnostics] {monitor} is no longer collapsed {at}: {recovered}.")
        for kind in ("overfitting", "diverged"):
            # A non-finite last value is already reported above, as it came.
            if result.verdict == kind and math.isfinite(self._curve[1][-1]):
                self._report(state, kind, kind, f"{kind} {at}: {result.reason}", result.advice)
            else:
                self._clear(kind)
        # A plateau is said once a run: a curve near the edge of its noise would otherwise flap in and out of it.
        if result.verdict == "plateau" and points >= self.patience and "plateau" not in self.announced:
            self.announced["plateau"] = points
            self._report(state, "plateau", "plateau", f"plateau {at}: {result.reason}", result.advice)
        moved = result.verdict in ("still improving", "converged")
        self._moved_since = (points if self._moved_since is None else self._moved_since) if moved else None
        # The plateau said earlier is over once the metric has moved beyond its noise for a tenth of the run
        # (judged again and again, a curve at the edge of its noise would cross it by chance): said once, so the
        # console never leaves the plateau's advice standing.
        if moved and self._lasted(self._moved_since, points) and self._clear("plateau"):
            self.findings.append({"kind": "plateau over", "step": step, "message": result.reason, "advice": ""})
            if state.is_world_process_zero:
                logger.warning(f"[diagnostics] the plateau is over {at}: {result.reason}.")
