"""One record every N steps for every tracker: the window rule (`LogWindow`) and a callback that puts it in front of
transformers' own tracker callbacks (TensorBoard, Trackio, MLflow, W&B ...)."""

from __future__ import annotations

import math

from transformers import TrainerCallback
from transformers.utils import logging

from ..metric_rules import is_eval_key
from .stateful import StatefulCallback


logger = logging.get_logger(__name__)

# Keys whose window value is the last one (a position or a schedule value), and keys that are counts (summed).
LAST_VALUE_KEYS = ("learning_rate", "epoch", "num_tokens", "total_flos", "num_input_tokens_seen")
SUM_SUFFIXES = ("_samples",)


def aggregate_window(window: dict[str, list[float]]) -> dict[str, float]:
    """One record from the logs of a window: mean, except last value for positions/schedules and sum for counts.

    Non-finite values are left out of a mean (a single NaN would hide the window); a window of only non-finite
    values gives that value, so a divergence still shows.
    """
    record = {}
    for key, values in window.items():
        if not values:
            continue
        if key.endswith(LAST_VALUE_KEYS):
            record[key] = values[-1]
            continue
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            record[key] = values[-1]
        elif key.endswith(SUM_SUFFIXES):
            record[key] = float(sum(finite))
        else:
            record[key] = sum(finite) / len(finite)
    return record


def is_passed_through(numbers: dict[str, float]) -> bool:
    """Evaluations, predictions and the final summary are rare: they go out as they come, never averaged."""
    return any(is_eval_key(key) or key.startswith("test_") for key in numbers) or "train_runtime" in numbers


class LogWindow:
    """The rule every tracker shares: the train logs of `every_n_steps` optimizer steps become one record (see
    `aggregate_window`); eval logs and the summary pass through. Plain data (`window`, `last_logged_step`), so that
    it travels in `ExportableState`.

    Example:
        >>> window = LogWindow(2)
        >>> window.add({"loss": 1.0}, step=1), window.add({"loss": 3.0}, step=2)
        (None, {'loss': 2.0})
    """

    def __init__(self, every_n_steps: int, window: dict | None = None, last_logged_step: int = 0):
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps!r} must be an integer >= 1.")
        self.every_n_steps = every_n_steps
        self.window: dict[str, list[float]] = dict(window or {})
        self.last_logged_step = last_logged_step

    def add(self, logs: dict, step: int) -> dict | None:
        """The record to send now for a `Trainer.log` dict at `step` (the logs themselves when they pass through),
        or None while the window is open."""
        numbers = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if is_passed_through(numbers):
            return numbers
        for key, value in numbers.items():
            self.window.setdefault(key, []).append(value)
        if step - self.last_logged_step >= self.every_n_steps:
            return self.flush(step)
        return None

    def flush(self, step: int) -> dict:
        """The record of what the window holds (empty when nothing), and a new window from `step` on."""
        record = aggregate_window(self.window)
        self.window = {}
        self.last_logged_step = step
        return record


# Every event of a TrainerCallback but on_log: handed on to the trackers as they come.
_EVENTS = tuple(name for name in vars(TrainerCallback) if name.startswith("on_") and name != "on_log")


class EveryNStepsCallback(StatefulCallback):
    """Send the trackers of `report_to` one record every `every_n_steps` steps, the mean of the window (the rule of
    `LogWindow`), through transformers' own integration callbacks (`TensorBoardCallback`, `TrackioCallback`,
    `MLflowCallback`, `WandbCallback`, ...). The console and `trainer_state.json` keep every step.

    Use it *instead of* `report_to` (set `report_to=[]` or `"none"` in the arguments): with both, transformers would
    also send every step, and TRL would add its per-call profiling records to W&B, MLflow and Trackio.

    Acts on every event: `on_log` goes through the window, the others go to the trackers as they come; the window
    left at `on_train_end` is sent first. Each tracker checks the rank itself (world process zero writes). A tracker
    that fails is switched off with a warning: training goes on. Stores the open window through `ExportableState`.

    Args:
        report_to (`list[str]`): tracker names as `TrainingArguments.report_to` takes them.
        every_n_steps (`int`, *optional*, defaults to `10`): steps per record; 1 sends every log.
    """

    def __init__(self, report_to: list[str] | str, every_n_steps: int = 10, window: dict | None = None,
                 last_logged_step: int = 0):
        from transformers.integrations import get_reporting_integration_callbacks

        names = [report_to] if isinstance(report_to, str) else list(report_to)
        self.report_to = [name for name in names if name != "none"]
        self.log_window = LogWindow(every_n_steps, window, last_logged_step)
        try:
            classes = get_reporting_integration_callbacks(self.report_to)
        except ValueError as error:
            raise ValueError(f"EveryNStepsCallback: {error}") from None
        # Each constructor raises when its library is missing (`pip install tensorboard` ...): said at once.
        self.trackers = [cls() for cls in classes]
        self.every_n_steps = every_n_steps

    def state(self) -> dict:
        return {"args": {"report_to": self.report_to, "every_n_steps": self.every_n_steps,
                         "window": self.log_window.window, "last_logged_step": self.log_window.last_logged_step},
                "attributes": {}}

    def _send(self, event: str, args, state, control, **kwargs):
        for tracker in list(self.trackers):
            try:
                getattr(tracker, event)(args, state, control, **kwargs)
            except Exception as error:  # a tracker's outage must not stop the training
                logger.warning(f"EveryNStepsCallback: {type(tracker).__name__}.{event} failed "
                               f"({type(error).__name__}: {error}); training goes on without it.")
                self.trackers.remove(tracker)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if is_passed_through(numbers) and self.log_window.window:
            self._send("on_log", args, state, control, logs=self.log_window.flush(state.global_step), **kwargs)
        record = self.log_window.add(logs, state.global_step)
        if record:
            self._send("on_log", args, state, control, logs=record, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.log_window.window:
            self._send("on_log", args, state, control, logs=self.log_window.flush(state.global_step), **kwargs)
        self._send("on_train_end", args, state, control, **kwargs)


def _forward(event: str):
    def handler(self, args, state, control, **kwargs):
        if event == "on_step_begin":
            StatefulCallback.on_step_begin(self, args, state, control, **kwargs)
        self._send(event, args, state, control, **kwargs)

    handler.__name__ = event
    return handler


for _event in _EVENTS:
    if _event not in ("on_train_end",):
        setattr(EveryNStepsCallback, _event, _forward(_event))
