#!/usr/bin/env python
"""Per-step cost of hf_trainkit's callbacks, measured in the same run.

Trains the tiny toy model (FilteredGRPOTrainer, mode psr, logging every step) three ways: without callbacks;
with the logging set (WandbEveryNCallback, W&B offline, one record every 10 steps; LossCurveCallback;
TrainingDiagnosticsCallback; MetricEarlyStoppingCallback with a patience larger than the run; LiveLogCallback
appending every log to logs/log_history.jsonl); and with the
checkpoint set when nothing happens (CheckpointPolicyCallback watching `reward` for best-3 and save-on-improvement
with a threshold never reached, LiveControlCallback reading its request folder at every step and refreshing its
status file, no request sent). Whole-step ratios on a shared 2-core machine move by a few percent from run to
run; the time spent inside the callbacks' per-step events is also measured directly, and `1 + inside / step` is
the overhead ratio without that noise. A step's time is the interval between two
`on_step_begin` events, so it holds everything a step does (generation, update, logging, every callback's
`on_log`); one-off costs (W&B start-up and finish, the end-of-training plot) are reported apart. Prints the median
step time of the fastest of several interleaved repeats. Target ratio <= 1.01.

    python benchmarks/callbacks_overhead.py [--steps 120] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

from transformers import TrainerCallback


class StepClock(TrainerCallback):
    def __init__(self):
        self.starts: list[float] = []
        self.train_begin = self.train_end = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.starts.append(time.perf_counter())

    def on_train_end(self, args, state, control, **kwargs):
        self.train_end = time.perf_counter()


PER_STEP_EVENTS = ("on_step_begin", "on_step_end", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step",
                   "on_log", "on_save", "on_evaluate")


def time_inside(callbacks: list, total: list):
    """Add the time spent in the callbacks' per-step events to total[0] (the handler looks events up by name on
    the instance, so wrapping the bound methods is enough). Precise where whole-step timings are noisy."""
    def timed(method):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                total[0] += time.perf_counter() - started
        return wrapper

    for callback in callbacks:
        for event in PER_STEP_EVENTS:
            setattr(callback, event, timed(getattr(callback, event)))


def measure(kind: str, steps: int, warmup: int) -> tuple[float, float, float]:
    from hf_trainkit.callbacks import (CheckpointPolicyCallback, LiveControlCallback, LiveLogCallback,
                                       LossCurveCallback, MetricEarlyStoppingCallback, TrainingDiagnosticsCallback,
                                       WandbEveryNCallback)
    from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer
    from hf_trainkit.tasks.digit import build_tiny_model, build_toy_dataset, build_toy_tokenizer, digit_rule_reward

    clock = StepClock()
    callbacks = [clock]
    if kind == "logging":
        callbacks += [WandbEveryNCallback(10, project="bench"), LossCurveCallback(), TrainingDiagnosticsCallback(),
                      MetricEarlyStoppingCallback("reward", mode="max", patience=10 * steps), LiveLogCallback()]
    elif kind == "checkpointing":
        callbacks += [CheckpointPolicyCallback(monitor="reward", save_top_k=3, save_on_improvement=True,
                                               min_delta=1e9), LiveControlCallback()]
    inside = [0.0]
    time_inside(callbacks[1:], inside)
    tokenizer = build_toy_tokenizer()
    with tempfile.TemporaryDirectory() as output_dir:
        args = FilteredGRPOConfig(
            output_dir=output_dir, mode="psr", per_device_train_batch_size=16, num_generations=8,
            max_completion_length=4, learning_rate=3e-3, max_steps=steps + warmup, logging_steps=1, report_to=[],
            save_strategy="no", seed=0, disable_tqdm=True, log_mode_summary=False)
        trainer = FilteredGRPOTrainer(model=build_tiny_model(tokenizer, seed=0), reward_funcs=digit_rule_reward,
                                      args=args, train_dataset=build_toy_dataset(4096), processing_class=tokenizer,
                                      callbacks=callbacks)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()
    intervals = [b - a for a, b in zip(clock.starts[warmup:], clock.starts[warmup + 1:])]
    one_off = (clock.train_end - clock.train_begin) - sum(b - a for a, b in zip(clock.starts, clock.starts[1:]))
    return statistics.median(intervals), one_off, inside[0] / (steps + warmup)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="measured steps per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured first steps (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default: %(default)s)")
    options = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    kinds = ("none", "logging", "checkpointing")
    results = {kind: [] for kind in kinds}
    for _ in range(options.repeats):
        for kind in kinds:
            results[kind].append(measure(kind, options.steps, options.warmup))
    step = {kind: min(r[0] for r in results[kind]) for kind in kinds}
    inside = {kind: min(r[2] for r in results[kind]) for kind in kinds}
    off, on = step["none"], step["logging"]
    one_off = min(r[1] for r in results["logging"]) - min(r[1] for r in results["none"])
    print(f"# tiny model, mode psr, logging every step, {options.steps} steps x {options.repeats} repeats; "
          "median step of the fastest repeat")
    print()
    print("| run | s/step | ratio | time inside the callbacks per step | inside / step | target |")
    print("|---|---|---|---|---|---|")
    print(f"| no callbacks | {off:.4f} | 1.000 | | | |")
    rows = (("logging", "W&B every 10 + loss curve + diagnostics + early stopping + live log"),
            ("checkpointing", "checkpoint policy (best 3, on improvement) + live control, idle"))
    for kind, label in rows:
        print(f"| {label} | {step[kind]:.4f} | {step[kind] / off:.3f} | {inside[kind] * 1e6:.0f} us | "
              f"{1 + inside[kind] / off:.4f} | <= 1.01 |")
    print()
    print(f"one-off cost outside the steps (W&B init/finish, end-of-training plots): {one_off:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
