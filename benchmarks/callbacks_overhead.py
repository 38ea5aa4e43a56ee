#!/usr/bin/env python
"""Per-step cost of hf_trainkit's callbacks, measured in the same run.

Trains the tiny toy model (FilteredGRPOTrainer, mode psr, logging every step) three ways: without callbacks;
with the logging set (WandbEveryNCallback, W&B offline, one record every 10 steps; LossCurveCallback;
TrainingDiagnosticsCallback; MetricEarlyStoppingCallback with a patience larger than the run); and with the
checkpoint set when nothing happens (CheckpointPolicyCallback watching `reward` for best-3 and save-on-improvement
with a threshold never reached, LiveControlCallback reading its request folder at every step and refreshing its
status file, no request sent). A step's time is the interval between two
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


def measure(kind: str, steps: int, warmup: int) -> tuple[float, float]:
    from hf_trainkit.callbacks import (CheckpointPolicyCallback, LiveControlCallback, LossCurveCallback,
                                       MetricEarlyStoppingCallback, TrainingDiagnosticsCallback, WandbEveryNCallback)
    from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer
    from hf_trainkit.toy import build_tiny_model, build_toy_dataset, build_toy_tokenizer, digit_rule_reward

    clock = StepClock()
    callbacks = [clock]
    if kind == "logging":
        callbacks += [WandbEveryNCallback(10, project="bench"), LossCurveCallback(), TrainingDiagnosticsCallback(),
                      MetricEarlyStoppingCallback("reward", mode="max", patience=10 * steps)]
    elif kind == "checkpointing":
        callbacks += [CheckpointPolicyCallback(monitor="reward", save_top_k=3, save_on_improvement=True,
                                               min_delta=1e9), LiveControlCallback()]
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
    return statistics.median(intervals), one_off


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
    step = {kind: min(s for s, _ in results[kind]) for kind in kinds}
    off, on = step["none"], step["logging"]
    one_off = min(extra for _, extra in results["logging"]) - min(extra for _, extra in results["none"])
    print(f"# tiny model, mode psr, logging every step, {options.steps} steps x {options.repeats} repeats; "
          "median step of the fastest repeat")
    print()
    print("| run | s/step | ratio | target |")
    print("|---|---|---|---|")
    print(f"| no callbacks | {off:.4f} | 1.000 | |")
    print(f"| W&B every 10 + loss curve + diagnostics + early stopping | {on:.4f} | {on / off:.3f} | <= 1.01 |")
    policy = step["checkpointing"]
    print(f"| checkpoint policy (best 3, on improvement) + live control, idle | {policy:.4f} | {policy / off:.3f} "
          "| <= 1.01 |")
    print()
    print(f"one-off cost outside the steps (W&B init/finish, end-of-training plots): {one_off:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
