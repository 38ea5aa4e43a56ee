"""Which checkpoints exist: the best N by a metric, saves when it improves, on top of resumable checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

from transformers.utils import logging

from ..checkpointing.marker import read_marker
from ..checkpointing.policy import best_checkpoints, default_mode, default_smoothing, is_improvement
from ..checkpointing.rotate import checkpoints_to_delete
from ..checkpointing.save_request import request_save, saving_enabled
from ..diagnostics import ema_step
from ..distributed import broadcast_float
from .early_stopping import report_missing_monitor
from .resumable import ResumableCheckpointsCallback


logger = logging.get_logger(__name__)


class CheckpointPolicyCallback(ResumableCheckpointsCallback):
    """Checkpoints chosen by a logged metric, like Lightning's `ModelCheckpoint`, for any `Trainer`.

    Everything of [`ResumableCheckpointsCallback`] (completion marker, safe rotation, preemption saves) plus:

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
        **kwargs: [`ResumableCheckpointsCallback`]'s arguments (`save_total_limit`, `protected`, `mirror` ...).
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None, save_top_k: int | None = None,
                 save_on_improvement: bool = False, min_delta: float = 0.0, relative_delta: bool = False,
                 smoothing: float | None = None, strict: bool = True, **kwargs):
        super().__init__(**kwargs)
        if monitor is None and (save_top_k is not None or save_on_improvement):
            raise ValueError("CheckpointPolicyCallback: save_top_k and save_on_improvement need a monitor (a logged "
                             "key such as 'eval_loss' or 'reward').")
        mode = mode or (default_mode(monitor) if monitor else "min")
        if mode not in ("min", "max"):
            raise ValueError(f"CheckpointPolicyCallback: mode={mode!r} must be 'min' or 'max'.")
        if save_top_k is not None and save_top_k < 1:
            raise ValueError(f"CheckpointPolicyCallback: save_top_k={save_top_k} must be >= 1.")
        if save_top_k is not None and kwargs.get("save_total_limit") is not None:
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
        self.ema_accumulator, self.ema_count = 0.0, 0
        self._seen_keys: list[str] = []
        self._warned_missing = False

    # --- the monitored value -----------------------------------------------------------------------------------------

    def on_step_begin(self, args, state, control, **kwargs):
        if not getattr(self, "_checked_resume", True) and state.global_step > 0 and self.monitor:
            self._restore(read_marker(Path(args.output_dir) / f"checkpoint-{state.global_step}"))
        super().on_step_begin(args, state, control, **kwargs)

    def _restore(self, marker: dict):
        saved = marker.get("monitor") or {}
        if saved.get("key") == self.monitor:
            self.best, self.current = saved.get("best"), saved.get("value")
            self.ema_accumulator = saved.get("ema_accumulator", 0.0)
            self.ema_count = saved.get("ema_count", 0)

    def observe(self, value: float) -> bool:
        """Take one logged value; whether it is an improvement worth a save (pure of the Trainer: testable)."""
        if self.smoothing and math.isfinite(value):
            self.ema_accumulator, self.ema_count, value = ema_step(self.ema_accumulator, self.ema_count, value,
                                                                   self.smoothing)
        if not math.isfinite(value):
            return False
        self.current = value
        if self.best is None:
            self.best = value  # the baseline: nothing to improve on yet
            return False
        if is_improvement(value, self.best, self.mode, self.min_delta, self.relative_delta):
            self.best = value
            return True
        return False

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=logs, **kwargs)
        if not self.monitor or not logs or "train_runtime" in logs:
            return
        raw = logs.get(self.monitor)
        if not isinstance(raw, (int, float)) or isinstance(raw, bool):
            if self.best is None and not self._warned_missing:
                self._warned_missing = report_missing_monitor(type(self).__name__, self.monitor, logs,
                                                              self._seen_keys, self.strict)
            return
        # The main process's value on every rank: the save below is collective and must happen everywhere.
        improved = self.observe(broadcast_float(float(raw)))
        if improved and self.save_on_improvement and saving_enabled(args):
            request_save(control, state, "improved")
            if state.is_world_process_zero:
                logger.info(f"{self.monitor} improved to {self.best:.4g}: saving checkpoint-{state.global_step}.")

    # --- what the marker records and what rotation keeps ---------------------------------------------------------

    def _metadata(self, args, state, request, checkpoint):
        metadata = super()._metadata(args, state, request, checkpoint)
        if self.monitor and self.current is not None:
            metadata["monitor"] = {"key": self.monitor, "mode": self.mode, "value": self.current, "best": self.best,
                                   "smoothing": self.smoothing, "ema_accumulator": self.ema_accumulator,
                                   "ema_count": self.ema_count}
        return metadata

    def _deletions(self, checkpoints: list, protected: set[str]) -> list:
        if self.save_top_k is None:
            return super()._deletions(checkpoints, protected)
        best = {c.name for c in best_checkpoints(checkpoints, self.monitor, self.mode, self.save_top_k)}
        return checkpoints_to_delete(checkpoints, None, protected | best, keep_only_protected=True)
