"""A compact console: one short metrics line per log instead of transformers' dict of every key (TRL logs ~35 per
step: 227 KB of console for 200 steps, burying the per-step mode lines). The full record is unchanged in
`trainer_state.json` and W&B."""

from __future__ import annotations

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


class CompactProgressCallback(ProgressCallback):
    """transformers' progress bar, with `compact_metrics_line` instead of the dict of every logged key."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(compact_metrics_line(state.global_step, logs))


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
