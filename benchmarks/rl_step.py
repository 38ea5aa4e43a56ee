#!/usr/bin/env python
"""Step time of FilteredGRPOTrainer against plain TRL GRPOTrainer, measured in the same run.

Prints two tables:

1. seconds per optimizer step (generation + scoring + policy update), FilteredGRPOTrainer(mode="grpo") vs
   GRPOTrainer on the same model, data and seed (target ratio <= 1.02);
2. seconds of the policy update alone (the loss forward + backward, i.e. `training_step` minus generation and
   scoring) for PSR and NSR with exactly half of the samples kept, against the unfiltered update of plain
   GRPOTrainer (target ratio <= 0.6).

Both tables are printed for the text model (a tiny Llama) and for a vision-language model (Qwen2.5-VL's
architecture, built locally, on the chart task's 112 px images: every sample's image runs through the vision tower
in the update, so dropping a sample drops its image too).

Each figure is the median over the measured steps (after warm-up steps) of the fastest of several interleaved repeats,
since other load on the machine only ever adds time. CPU by default; a larger model than the demo's so that the update dominates overheads.

    python benchmarks/rl_step.py [--models text vlm] [--steps 12] [--hidden-size 256] [--layers 4]
                                 [--completion-length 48]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time


def half_reward(completions, **kwargs):
    """1, 0, 1, 0, ...: exactly half of every group is positive."""
    return [float(i % 2 == 0) for i in range(len(completions))]


class StepTimer:
    """Wraps a trainer's `training_step` and `_prepare_inputs` to split each step into its parts."""

    def __init__(self, trainer):
        self.step_seconds, self.update_seconds = [], []
        self._prepare_seconds = 0.0
        prepare, training_step = trainer._prepare_inputs, trainer.training_step

        def timed_prepare(*args, **kwargs):
            start = time.perf_counter()
            result = prepare(*args, **kwargs)
            self._prepare_seconds += time.perf_counter() - start
            return result

        def timed_training_step(*args, **kwargs):
            self._prepare_seconds = 0.0
            start = time.perf_counter()
            result = training_step(*args, **kwargs)
            total = time.perf_counter() - start
            self.step_seconds.append(total)
            self.update_seconds.append(total - self._prepare_seconds)
            return result

        trainer._prepare_inputs, trainer.training_step = timed_prepare, timed_training_step


def build_trainer(kind: str, options, output_dir: str, model_kind: str = "text"):
    from trl import GRPOConfig, GRPOTrainer

    from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer

    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=options.batch_size,
        num_generations=8,
        max_completion_length=options.completion_length,
        learning_rate=1e-4,
        max_steps=options.warmup + options.steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        bf16=False,
        disable_tqdm=True,
        loss_type=options.loss_type,
    )
    if kind == "trl":
        trainer_cls, args = GRPOTrainer, GRPOConfig(**common)
    else:
        trainer_cls, args = FilteredGRPOTrainer, FilteredGRPOConfig(mode=kind, log_mode_summary=False, **common)
    if model_kind == "vlm":
        from hf_trainkit.tasks.chart import build_chart_dataset
        from hf_trainkit.tasks.vision import build_tiny_vlm, build_tiny_vlm_processor

        processor = build_tiny_vlm_processor(VLM_IMAGE_SIZE)
        model = build_tiny_vlm(processor, hidden_size=options.hidden_size, num_layers=options.layers,
                               vision_hidden_size=options.hidden_size // 2, vision_depth=options.layers, seed=0)
        dataset, processing_class = build_chart_dataset(64, seed=0, image_size=VLM_IMAGE_SIZE), processor
    else:
        from hf_trainkit.toy import build_tiny_model, build_toy_dataset, build_toy_tokenizer

        processing_class = build_toy_tokenizer()
        model = build_tiny_model(processing_class, hidden_size=options.hidden_size, num_layers=options.layers, seed=0)
        dataset = build_toy_dataset(1024)
    return trainer_cls(model=model, reward_funcs=half_reward, args=args, train_dataset=dataset,
                       processing_class=processing_class)


# The VLM's images: 112 px is 64 patches of 14 px, 16 image tokens after the 2x2 merge.
VLM_IMAGE_SIZE = 112


def measure(kind: str, options, model_kind: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(kind, options, output_dir, model_kind)
        timer = StepTimer(trainer)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()
    steps, updates = timer.step_seconds[options.warmup :], timer.update_seconds[options.warmup :]
    return statistics.median(steps), statistics.median(updates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="measured steps per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured first steps (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every run (default: %(default)s)")
    parser.add_argument("--hidden-size", type=int, default=256, help="model width (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=4, help="model depth (default: %(default)s)")
    parser.add_argument("--completion-length", type=int, default=48, help="new tokens (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="completions per step (default: %(default)s)")
    parser.add_argument("--loss-type", default="dapo", help="TRL loss_type (default: %(default)s)")
    parser.add_argument("--models", nargs="+", choices=["text", "vlm"], default=["text", "vlm"],
                        help="which models to measure (default: both)")
    options = parser.parse_args(argv)

    import torch
    import transformers
    import trl

    from hf_trainkit.library_noise import filter_library_noise

    filter_library_noise()
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
          f"model hidden={options.hidden_size} layers={options.layers}, {options.batch_size} completions x "
          f"{options.completion_length} tokens per step, loss_type={options.loss_type}, "
          f"{options.steps} steps x {options.repeats} repeats; median step of each run, best run")
    for model_kind in options.models:
        print_tables(model_kind, measure_all(options, model_kind))
    return 0


def measure_all(options, model_kind: str) -> tuple[dict, dict]:
    kinds = ["trl", "grpo", "psr", "nsr"]
    samples = {kind: ([], []) for kind in kinds}
    for _ in range(options.repeats):
        for kind in kinds:
            step, update = measure(kind, options, model_kind)
            samples[kind][0].append(step)
            samples[kind][1].append(update)
    # The least-disturbed repeat of each run: other processes on the machine only ever add time.
    return ({kind: min(values[0]) for kind, values in samples.items()},
            {kind: min(values[1]) for kind, values in samples.items()})


def print_tables(model_kind: str, timings: tuple[dict, dict]) -> None:
    step, update = timings
    name = {"text": "text model (tiny Llama)", "vlm": f"vision-language model (tiny Qwen2.5-VL, {VLM_IMAGE_SIZE} px "
            "charts)"}[model_kind]
    print(f"\n## {name}\n")
    print("| run | s/step | ratio vs GRPOTrainer | target |")
    print("|---|---|---|---|")
    print(f"| GRPOTrainer (TRL) | {step['trl']:.4f} | 1.000 | |")
    print(f"| FilteredGRPOTrainer mode=grpo | {step['grpo']:.4f} | {step['grpo'] / step['trl']:.3f} | <= 1.02 |")
    print()
    print("| policy update (loss fwd+bwd) | s/step | ratio vs unfiltered GRPOTrainer | target |")
    print("|---|---|---|---|")
    print(f"| GRPOTrainer, all 100% samples | {update['trl']:.4f} | 1.000 | |")
    for kind in ("psr", "nsr"):
        print(f"| FilteredGRPOTrainer mode={kind}, 50% kept | {update[kind]:.4f} | "
              f"{update[kind] / update['trl']:.3f} | <= 0.60 |")


if __name__ == "__main__":
    sys.exit(main())
