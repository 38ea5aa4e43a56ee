"""A compact console: one short metrics line per log instead of transformers' dict of every key (TRL logs ~35 per
step: 227 KB of console for 200 steps, burying the per-step mode lines). The full record is unchanged in
`trainer_state.json` and W&B."""

from __future__ import annotations

import sys
import time

from transformers.trainer_callback import PrinterCallback, ProgressCallback


# In this order, when logged; everything else stays in trainer_state.json.
HEADLINE_KEYS = ("loss", "reward", "reward_std", "kl", "entropy", "grad_norm", "learning_rate")
SUMMARY_KEYS = ("train_runtime", "train_loss", "train_steps_per_second")


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def compact_metrics_line(step: int, logs: dict) -> str:
    """`[Step 20] loss -1 | reward 0.625 | reward_std 0.484 | entropy 3.41 | grad_norm 1.23 | learning_rate 0.003`,
    `[Step 20] eval: eval_loss 0.52 | ...` for evaluations, `[Step 200] done: train_runtime 41.2 s | ...` at the end."""
    if "train_runtime" in logs:
        parts = [f"{k} {_number(logs[k])}{' s' if k == 'train_runtime' else ''}" for k in SUMMARY_KEYS if k in logs]
        return f"[Step {step}] done: " + " | ".join(parts)
    evaluation = [k for k in logs if k.startswith(("eval_", "eval/")) and isinstance(logs[k], (int, float))]
    if evaluation:
        return f"[Step {step}] eval: " + " | ".join(f"{k} {_number(logs[k])}" for k in evaluation[:8])
    parts = [f"{k} {_number(logs[k])}" for k in HEADLINE_KEYS if isinstance(logs.get(k), (int, float))]
    return f"[Step {step}] " + " | ".join(parts or [f"{k} {_number(v)}" for k, v in list(logs.items())[:6]])


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_line(step: int, max_steps: int, seconds_per_step: float | None) -> str:
    """`[Progress] step 40/200 (20%) | 1.31 s/step | 3m30s left`: the bar's figures as one whole line."""
    line = f"[Progress] step {step}/{max_steps} ({100 * step / max_steps:.0f}%)" if max_steps > 0 else \
        f"[Progress] step {step}"
    if seconds_per_step is not None:
        line += f" | {seconds_per_step:.3g} s/step"
        if max_steps > step:
            line += f" | {_duration(seconds_per_step * (max_steps - step))} left"
    return line


class _AboveTheBar:
    """stdout while the progress bar is drawn on a terminal: each whole line printed (the trainer's mode line, a
    diagnostic) clears the bar, is written, and the bar is drawn again under it, instead of being appended to the
    bar's line. Text without a newline waits for the rest of its line."""

    def __init__(self, stream, bar):
        self.stream, self.bar, self._pending = stream, bar, ""

    def write(self, text: str) -> int:
        if getattr(self.bar, "disable", False):  # closed (tqdm sets it): training ended without on_train_end
            self.flush()
            return self.stream.write(text)
        self._pending += text
        if "\n" in self._pending:
            lines, _, self._pending = self._pending.rpartition("\n")
            self.bar.clear()
            self.stream.write(lines + "\n")
            self.stream.flush()
            self.bar.refresh()
        return len(text)

    def flush(self):
        if self._pending:
            self.stream.write(self._pending)
            self._pending = ""
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ... of the real stream
        return getattr(self.stream, name)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # a closed or unusual stream
        return False


class CompactProgressCallback(ProgressCallback):
    """transformers' progress bar, with `compact_metrics_line` instead of the dict of every logged key.

    When stdout or stderr is not a terminal (a log file, a pipe, a scheduler's capture), a bar's redraws would put a
    fragment in front of every line printed there: progress is then a whole `progress_line` every `every_fraction` of
    the run, or every `every_seconds`, whichever comes first, and nothing else is drawn.

    Args:
        every_fraction (`float`, *optional*, defaults to `0.1`): progress lines at each tenth of the run.
        every_seconds (`float`, *optional*, defaults to `60`): and at least once a minute.
        terminal (`bool`, *optional*): draw the bar (default: when stdout and stderr are both terminals).
    """

    def __init__(self, max_str_len: int = 100, every_fraction: float = 0.1, every_seconds: float = 60.0,
                 terminal: bool | None = None):
        super().__init__(max_str_len=max_str_len)
        self.every_fraction, self.every_seconds, self.terminal = every_fraction, every_seconds, terminal
        self.lines = False  # progress as whole lines (this run's console is not a terminal)

    def on_train_begin(self, args, state, control, **kwargs):
        terminal = self.terminal if self.terminal is not None else \
            _is_terminal(sys.stdout) and _is_terminal(sys.stderr)
        self.lines = not terminal
        if not self.lines:
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None and not isinstance(sys.stdout, _AboveTheBar):
                self._stdout, sys.stdout = sys.stdout, _AboveTheBar(sys.stdout, self.training_bar)
            return
        self.current_step = 0
        self._start_step, self._start_time = state.global_step, time.monotonic()
        self._last_step, self._last_time = state.global_step, self._start_time

    def on_step_end(self, args, state, control, **kwargs):
        if not self.lines:
            return super().on_step_end(args, state, control, **kwargs)
        if not state.is_world_process_zero or state.global_step >= state.max_steps > 0:
            return  # the last step: the "done" line says the rest
        now, step = time.monotonic(), state.global_step
        every_steps = max(1, round(state.max_steps * self.every_fraction)) if state.max_steps > 0 else None
        crossed = every_steps is not None and step // every_steps > self._last_step // every_steps
        if crossed or now - self._last_time >= self.every_seconds:
            done = step - self._start_step
            rate = (now - self._start_time) / done if done > 0 else None
            print(progress_line(step, state.max_steps, rate), flush=True)
            self._last_step, self._last_time = step, now

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not self.lines:
            return super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.lines:
            print(compact_metrics_line(state.global_step, logs), flush=True)
        elif self.training_bar is not None:
            self.training_bar.write(compact_metrics_line(state.global_step, logs))

    def on_train_end(self, args, state, control, **kwargs):
        if not self.lines:
            self._restore_stdout()
            return super().on_train_end(args, state, control, **kwargs)

    def _restore_stdout(self):
        stdout = getattr(self, "_stdout", None)
        if stdout is not None and isinstance(sys.stdout, _AboveTheBar):
            sys.stdout.flush()
            sys.stdout = stdout
        self._stdout = None


class CompactPrinterCallback(PrinterCallback):
    """The same line when progress bars are off (`disable_tqdm=True`)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(compact_metrics_line(state.global_step, logs), flush=True)


def use_compact_console(callback_handler):
    """Swap transformers' console callbacks for the compact ones, where the trainer has them."""
    for old, new in ((ProgressCallback, CompactProgressCallback), (PrinterCallback, CompactPrinterCallback)):
        if any(type(callback) is old for callback in callback_handler.callbacks):
            callback_handler.remove_callback(old)
            callback_handler.add_callback(new)
