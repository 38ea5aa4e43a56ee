"""W&B logging every N steps, aggregating the window instead of dropping steps (the window rule of
`callbacks.every_n`, which the other trackers get through `EveryNStepsCallback`)."""

from __future__ import annotations

import os
import uuid

from transformers.utils import logging

from ..constants import WANDB_RUN_ID_FILE
from .every_n import LAST_VALUE_KEYS, SUM_SUFFIXES, aggregate_window, is_passed_through  # noqa: F401 (re-exported)
from .stateful import StatefulCallback


logger = logging.get_logger(__name__)

# Namespaces that keep their own name in W&B (the mode metrics), as DESIGN.md fixes them.
KEPT_PREFIXES = ("grpo/", "psr/", "nsr/", "w_reinforce/", "eval/")
STEP_METRIC = "train/global_step"


def wandb_key(key: str) -> str:
    """Trainer log key -> W&B name: ``loss`` -> ``train/loss``, ``eval_loss`` -> ``eval/loss``, ``psr/x`` kept."""
    if key.startswith(KEPT_PREFIXES):
        return key
    if key.startswith("eval_"):
        return f"eval/{key[len('eval_'):]}"
    if key.startswith("test_"):
        return f"test/{key[len('test_'):]}"
    return f"train/{key}"


class WandbEveryNCallback(StatefulCallback):
    """Log to W&B once every `every_n_steps` optimizer steps, with the mean of the logs since the last record.

    The console and `trainer_state.json` keep every logged step; W&B receives one record per window (mean of the
    window; last value for `learning_rate`/`epoch`/`num_tokens`; sums for `*_samples` counts). Eval logs are sent as
    they come. Names follow W&B conventions (`train/loss`, `eval/loss`; the mode namespaces `psr/` ... kept), with
    `train/global_step` as the x-axis. Use it *instead of* `report_to=["wandb"]`: with both, every step would also
    go to W&B, and TRL would add its per-call profiling records.

    Acts on `on_train_begin` (start or resume the W&B run; its id is stored in `output_dir/wandb_run_id.txt`, so a
    re-run continues the same W&B run), `on_log`, `on_train_end` (flush and finish; says how to `wandb sync` an
    offline run). Only the world process zero talks to W&B. A W&B failure is a warning, never a crash. Stores the
    pending window and the last logged step through `ExportableState`.

    Args:
        every_n_steps (`int`, *optional*, defaults to `10`): steps per W&B record; 1 logs every step.
        project (`str`, *optional*): W&B project (default: `WANDB_PROJECT`, else "huggingface").
        run_name (`str`, *optional*): run name (default: `WANDB_NAME`, else `args.run_name`).
        group (`str`, *optional*), tags (`list[str]`, *optional*): passed to `wandb.init`.
    """

    def __init__(self, every_n_steps: int = 10, project: str | None = None, run_name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None):
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"WandbEveryNCallback: every_n_steps={every_n_steps!r} must be an integer >= 1.")
        from transformers.integrations import is_wandb_available

        if not is_wandb_available():  # a set-up mistake: said at once, not after the model is built
            raise ImportError("WandbEveryNCallback needs wandb: pip install wandb")
        self.every_n_steps = every_n_steps
        self.project, self.run_name, self.group, self.tags = project, run_name, group, list(tags or [])
        self.window: dict[str, list[float]] = {}  # a plain dict: it round-trips through trainer_state.json
        self.last_logged_step = 0
        self.run_id: str | None = None
        self._run = None
        self._disabled = False

    def state(self) -> dict:
        return {
            "args": {"every_n_steps": self.every_n_steps, "project": self.project, "run_name": self.run_name,
                     "group": self.group, "tags": self.tags},
            "attributes": {"window": self.window, "last_logged_step": self.last_logged_step,
                           "run_id": self.run_id},
        }

    def _warn(self, what: str, error: Exception):
        logger.warning(f"WandbEveryNCallback: {what} failed ({type(error).__name__}: {error}); training goes on "
                       "without W&B.")
        self._disabled = True

    def _setup(self, args, state):
        from transformers.integrations import is_wandb_available

        if not is_wandb_available():
            raise ImportError("WandbEveryNCallback needs wandb: pip install wandb")
        import wandb

        if "wandb" in (args.report_to or []):
            logger.warning("WandbEveryNCallback: 'wandb' is also in report_to, so transformers logs every step to W&B "
                           "too; remove it from report_to to get one record every N steps.")
        id_file = os.path.join(args.output_dir, WANDB_RUN_ID_FILE)
        if os.path.isfile(id_file):
            with open(id_file) as handle:
                self.run_id = handle.read().strip() or None
        self.run_id = self.run_id or uuid.uuid4().hex[:8]
        os.makedirs(args.output_dir, exist_ok=True)
        self._run = wandb.init(
            project=self.project or os.environ.get("WANDB_PROJECT") or "huggingface",
            name=self.run_name or os.environ.get("WANDB_NAME") or args.run_name,
            group=self.group, tags=self.tags or None, id=self.run_id, resume="allow",
            # Beside the run it describes (as the checkpoints are), unless WANDB_DIR says otherwise.
            dir=os.environ.get("WANDB_DIR") or args.output_dir,
            config={k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool, type(None)))},
        )
        with open(id_file, "w") as handle:
            handle.write(self.run_id)
        self._run.define_metric(STEP_METRIC)
        self._run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self._run is not None or self._disabled:
            return
        try:
            self._setup(args, state)
        except ImportError:
            raise
        except Exception as error:  # a W&B outage must not stop training
            self._warn("wandb.init", error)

    def _flush(self, step: int):
        record = aggregate_window(self.window)
        self.window = {}
        self.last_logged_step = step
        if not record or self._run is None:
            return
        try:
            self._run.log({**{wandb_key(k): v for k, v in record.items()}, STEP_METRIC: step})
        except Exception as error:
            self._warn("wandb.log", error)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self._disabled or not logs:
            return
        numbers = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if is_passed_through(numbers):  # the rule every tracker shares (callbacks.every_n.LogWindow)
            if self._run is not None:
                try:
                    self._run.log({**{wandb_key(k): v for k, v in numbers.items()}, STEP_METRIC: state.global_step})
                except Exception as error:
                    self._warn("wandb.log", error)
            return
        for key, value in numbers.items():
            self.window.setdefault(key, []).append(value)
        if state.global_step - self.last_logged_step >= self.every_n_steps:
            self._flush(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self._run is None:
            return
        if self.window:
            self._flush(state.global_step)
        try:
            offline = self._run.settings.mode == "offline" or os.environ.get("WANDB_MODE") == "offline"
            run_dir = os.path.dirname(self._run.dir)
            self._run.finish()
            if offline:
                logger.warning(f"W&B run saved offline; upload it with: wandb sync {run_dir}")
        except Exception as error:
            self._warn("wandb.finish", error)
        self._run = None
