"""Which checkpoints exist: the best N by a metric, saves when it improves, on top of resumable checkpoints.

One object for the user; inside, a group of single-purpose callbacks (`CallbackGroup`): the resume checks, the
checkpoint manager (which this policy gives its keep-rule and marker fields), signal handling, and the monitored
metric itself."""

from __future__ import annotations

import math

from transformers.utils import logging

from ..checkpointing.marker import read_marker
from ..checkpointing.policy import best_checkpoints
from ..checkpointing.rotate import checkpoints_to_delete
from ..checkpointing.save_request import request_save, saving_enabled
from ..constants import checkpoint_dir
from ..diagnostics import OnlineNoise
from ..metric_rules import SmoothedMetric, check_mode, default_mode, default_smoothing, is_eval_key, is_improvement
from ..distributed import broadcast_float
from .callback_group import CallbackGroup
from .checkpoint_manager import CheckpointManagerCallback
from .early_stopping import report_missing_monitor
from .live_control import LiveControlCallback
from .resume_checks import ResumeChecksCallback


logger = logging.get_logger(__name__)


class CheckpointPolicyCallback(CallbackGroup):
    """Checkpoints chosen by a logged metric, like Lightning's `ModelCheckpoint`, for any `Trainer`.

    Everything of [`CheckpointManagerCallback`] (completion marker, checksums, safe rotation, mirror), of
    [`ResumeChecksCallback`] and, unless `handle_signals=False`, the preemption saves of [`LiveControlCallback`]
    (signals only: add a `LiveControlCallback` yourself for `hf-trainkit control` requests), plus:

    - **best N** (`save_top_k`): after each complete save, keep the `save_top_k` checkpoints with the best
      `monitor` value, the newest one (to resume from) and pinned (named) ones; delete the rest. Works on training
      logs (`reward`, `nsr/avg_reward`, `loss`) as well as evaluation metrics (`eval_loss`, `eval_accuracy`).
    - **save on improvement** (`save_on_improvement=True`): save at the step where the (smoothed) `monitor` beats
      the best so far by more than `min_delta` (absolute, or a fraction of |best| with `relative_delta=True`).
      The first value sets the baseline. Interval backups are the Trainer's own `save_steps`: with both, you get
      the hybrid "on improvement + every K steps".
    - every checkpoint's marker records why it was saved (`interval`, `improved`, `manual`, `preempt`, `final`),
      the metrics at that step and the monitored value it is ranked by.

    Smoothing: RL rewards are logged per batch and noisy, so one lucky batch would count as an improvement and
    evict a genuinely good checkpoint. The monitored value is a debiased EMA (TensorBoard's) with weight
    `smoothing`; by default 0.9 for training-log keys (about the last 10 logs) and 0 (raw) for `eval_*` keys,
    which already average a whole evaluation set. Both the improvement test and the best-N ranking use it.

    Every rank takes the main process's value (one broadcast per log of `monitor`), so all ranks save at the same
    step. The policy state (best value, EMA) lives in each checkpoint's marker and is restored on resume.

    Args:
        monitor (`str`, *optional*): logged key ranking the checkpoints (none: plain resumable checkpoints).
        mode (`str`, *optional*): `"min"` or `"max"` (default: `"max"` for rewards/accuracies/scores, else `"min"`).
        save_top_k (`int`, *optional*): keep this many best checkpoints (plus the newest and pinned ones).
        save_on_improvement (`bool`, *optional*, defaults to `False`): also save whenever `monitor` improves.
        min_delta (`float`, *optional*, defaults to `0.0`): the margin an improvement must exceed.
        relative_delta (`bool`, *optional*, defaults to `False`): read `min_delta` as a fraction of |best|.
        smoothing (`float`, *optional*): EMA weight in [0, 1) (default: see above).
        strict (`bool`, *optional*, defaults to `True`): a `monitor` that is never logged is an error.
        noise_aware (`bool`, *optional*, defaults to `True`): for a training-log metric (not `eval_*`), an
            improvement must also beat the best by more than the metric's noise (estimated from its successive
            differences, as `hf-trainkit monitor`'s diagnosis does), so one lucky batch does not trigger a save.
        save_total_limit, protected, mirror, async_save: [`CheckpointManagerCallback`]'s arguments.
        handle_signals (`bool`, *optional*, defaults to `True`): save and stop on SIGTERM/SIGINT/SIGHUP (False when
            a `LiveControlCallback` of your own handles them).
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None, save_top_k: int | None = None,
                 save_on_improvement: bool = False, min_delta: float = 0.0, relative_delta: bool = False,
                 smoothing: float | None = None, strict: bool = True, save_total_limit: int | None = None,
                 protected: list[str] | None = None, mirror=None, handle_signals: bool = True, node_layout=None,
                 noise_aware: bool = True, async_save: bool = False):
        if monitor is None and (save_top_k is not None or save_on_improvement):
            raise ValueError("CheckpointPolicyCallback: save_top_k and save_on_improvement need a monitor (a logged "
                             "key such as 'eval_loss' or 'reward').")
        mode = check_mode(mode or (default_mode(monitor) if monitor else "min"), "CheckpointPolicyCallback")
        if save_top_k is not None and save_top_k < 1:
            raise ValueError(f"CheckpointPolicyCallback: save_top_k={save_top_k} must be >= 1.")
        if save_top_k is not None and save_total_limit is not None:
            raise ValueError("CheckpointPolicyCallback: give save_top_k or save_total_limit, not both (save_top_k "
                             "already keeps the newest checkpoint besides the best ones).")
        if not (min_delta >= 0 and math.isfinite(min_delta)):
            raise ValueError(f"CheckpointPolicyCallback: min_delta={min_delta} must be a finite number >= 0.")
        smoothing = default_smoothing(monitor) if (smoothing is None and monitor) else (smoothing or 0.0)
        if not 0 <= smoothing < 1:
            raise ValueError(f"CheckpointPolicyCallback: smoothing={smoothing} must be in [0, 1).")
        self.monitor, self.mode, self.save_top_k = monitor, mode, save_top_k
        self.save_on_improvement, self.min_delta, self.relative_delta = save_on_improvement, min_delta, relative_delta
        self.smoothing, self.strict = smoothing, strict
        self.best: float | None = None
        self.current: float | None = None
        self.smoother = SmoothedMetric(smoothing)
        # Training-log metrics are one batch each: a save on improvement needs a gain beyond their noise (as the
        # diagnosis calls one). Eval metrics average a whole eval set and are compared as they are.
        self.noise = OnlineNoise() if noise_aware and monitor and not is_eval_key(monitor) else None
        self._seen_keys: list[str] = []
        self._warned_missing = False
        self._restored = True
        self.manager = CheckpointManagerCallback(
            save_total_limit=save_total_limit, protected=protected, mirror=mirror,
            keep_rule=self.checkpoints_to_delete if save_top_k is not None else None, marker_fields=self.marker_fields,
            node_layout=node_layout, async_save=async_save)
        super().__init__(ResumeChecksCallback(mirror=mirror), self.manager,
                         LiveControlCallback(watch_requests=False) if handle_signals else None)

    @property
    def mirror(self):
        return self.manager.mirror

    # --- the monitored value -----------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        self._restored = False
        return super().on_train_begin(args, state, control, **kwargs)

    def on_step_begin(self, args, state, control, **kwargs):
        # The Trainer loads a checkpoint's state after on_train_begin: the first step is where a resume is visible.
        if not self._restored:
            self._restored = True
            if state.global_step > 0 and self.monitor:
                self._restore(read_marker(checkpoint_dir(args.output_dir, state.global_step)))
        return super().on_step_begin(args, state, control, **kwargs)

    def _restore(self, marker: dict):
        saved = marker.get("monitor") or {}
        if saved.get("key") == self.monitor:
            self.best, self.current = saved.get("best"), saved.get("value")
            self.smoother.load_state_dict(saved)
            if self.noise is not None:
                self.noise.load_state_dict(saved)

    def observe(self, value: float) -> bool:
        """Take one logged value; whether it is an improvement worth a save (pure of the Trainer: testable)."""
        if self.noise is not None:
            self.noise.observe(value)
        value = self.smoother.update(value)
        if not math.isfinite(value):
            return False
        self.current = value
        if self.best is None:
            self.best = value  # the baseline: nothing to improve on yet
            return False
        if not is_improvement(value, self.best, self.mode, self.min_delta, self.relative_delta):
            return False
        if self.noise is not None and not self.noise.improves(value, self.best, self.mode, smoothing=self.smoothing):
            return False
        self.best = value
        return True

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=logs, **kwargs)
        if not self.monitor or not logs or "train_runtime" in logs:
            return control
        raw = logs.get(self.monitor)
        if not isinstance(raw, (int, float)) or isinstance(raw, bool):
            if self.best is None and not self._warned_missing:
                self._warned_missing = report_missing_monitor(type(self).__name__, self.monitor, logs,
                                                              self._seen_keys, self.strict)
            return control
        # The main process's value on every rank: the save below is collective and must happen everywhere.
        improved = self.observe(broadcast_float(float(raw)))
        if improved and self.save_on_improvement and saving_enabled(args):
            request_save(control, state, "improved")
            if state.is_world_process_zero:
                logger.info(f"{self.monitor} improved to {self.best:.4g}: saving checkpoint-{state.global_step}.")
        return control

    # --- what the marker records and what rotation keeps ---------------------------------------------------------

    def marker_fields(self, args, state) -> dict:
        """What each checkpoint's marker records of the policy: the value it is ranked by, and the state a resume
        restores (best, EMA)."""
        if not self.monitor or self.current is None:
            return {}
        return {"monitor": {"key": self.monitor, "mode": self.mode, "value": self.current, "best": self.best,
                            "smoothing": self.smoothing, **self.smoother.state_dict(),
                            **(self.noise.state_dict() if self.noise is not None else {})}}

    def checkpoints_to_delete(self, checkpoints: list, protected: set[str]) -> list:
        """The keep-rule of best-N: the `save_top_k` best by the monitored value, the newest and the protected stay."""
        best = {c.name for c in best_checkpoints(checkpoints, self.monitor, self.mode, self.save_top_k)}
        return checkpoints_to_delete(checkpoints, None, protected | best, keep_only_protected=True)
