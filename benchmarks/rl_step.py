#!/usr/bin/env python
"""Step time of FilteredGRPOTrainer against plain TRL GRPOTrainer, measured in the same run.

Prints two tables:

1. seconds per optimizer step (generation + scoring + policy update), FilteredGRPOTrainer(mode="grpo") vs
   GRPOTrainer on the same model, data and seed (target ratio <= 1.02);
2. seconds of the policy update alone (the loss forward + backward, i.e. `training_step` minus generation and
   scoring) for PSR and NSR with exactly half of the samples kept, against the unfiltered update of plain
   GRPOTrainer (target ratio <= 0.6).

3. zero-variance groups (text model): mode grpo against GRPOTrainer when 25 / 50 / 75 % of the groups have equal
   rewards (target update ratio <= informative share + 0.1). `--tables flat-update`: the policy update alone on one
   generated batch, ours and TRL's loss interleaved on the same model (`--cpu-time`: CPU seconds on one thread, for
   a shared machine); `--tables flat`: whole runs, the update, the whole step and the largest difference of the
   final weights (the skip is exact: float rounding only).

4. dynamic sampling (`--tables dynamic`), on the headroom task of `benchmarks/paper_fidelity.py`: grpo and psr
   with and without `dynamic_sampling`, several seeds, held-out pass@1 and pass@16 (exact, per prompt) with 95 %
   intervals (two-level bootstrap over seeds and prompts), at the same number of steps, at equal generated
   samples and at equal wall time, and the verdict: helps, hurts or undecided.

The first two tables are printed for the text model (a tiny Llama) and for a vision-language model (Qwen2.5-VL's
architecture, built locally, on the chart task's 112 px images: every sample's image runs through the vision tower
in the update, so dropping a sample drops its image too).

Each figure is the median over the measured steps (after warm-up steps) of the fastest of several interleaved repeats,
since other load on the machine only ever adds time. CPU by default; a larger model than the demo's so that the update dominates overheads.

    python benchmarks/rl_step.py [--tables filter flat] [--models text vlm] [--steps 12] [--hidden-size 256]
                                 [--layers 4] [--completion-length 48] [--flat-shares 0.25 0.5 0.75]
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


class FlatGroupsReward:
    """The first `flat` of every 4 groups all right (zero variance, advantage 0), the others 1, 0, 1, 0, ..."""

    __name__ = "flat_groups_reward"

    def __init__(self, share: float, num_generations: int = 8):
        self.flat, self.num_generations = round(4 * share), num_generations

    def __call__(self, completions, **kwargs):
        return [1.0 if (i // self.num_generations) % 4 < self.flat else float(i % 2 == 0)
                for i in range(len(completions))]


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


def build_trainer(kind: str, options, output_dir: str, model_kind: str = "text", reward=half_reward):
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
        from hf_trainkit.tasks.digit import build_tiny_model, build_toy_dataset, build_toy_tokenizer

        processing_class = build_toy_tokenizer()
        model = build_tiny_model(processing_class, hidden_size=options.hidden_size, num_layers=options.layers, seed=0)
        dataset = build_toy_dataset(1024)
    return trainer_cls(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                       processing_class=processing_class)


# The VLM's images: 112 px is 64 patches of 14 px, 16 image tokens after the 2x2 merge.
VLM_IMAGE_SIZE = 112


def measure(kind: str, options, model_kind: str, reward=half_reward, weights: list | None = None):
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(kind, options, output_dir, model_kind, reward)
        timer = StepTimer(trainer)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()
    if weights is not None:
        weights[:] = [p.detach().clone() for p in trainer.model.parameters()]
    steps, updates = timer.step_seconds[options.warmup :], timer.update_seconds[options.warmup :]
    return statistics.median(steps), statistics.median(updates)


def measure_flat(options) -> dict:
    """share -> (TRL step, TRL update, ours step, ours update, max |weight difference|)."""
    results = {}
    for share in options.flat_shares:
        reward = FlatGroupsReward(share)
        runs = {"trl": [], "grpo": []}
        weights = {"trl": [], "grpo": []}
        for _ in range(options.repeats):
            for kind in runs:
                runs[kind].append(measure(kind, options, "text", reward, weights[kind]))
        difference = max((a - b).abs().max().item() for a, b in zip(weights["trl"], weights["grpo"]))
        print(f"# {share:.0%} flat groups measured", file=sys.stderr, flush=True)
        best = {kind: (min(r[0] for r in values), min(r[1] for r in values)) for kind, values in runs.items()}
        results[share] = (*best["trl"], *best["grpo"], difference)
    return results


def measure_flat_update(options) -> dict:
    """share -> (TRL update s, ours update s, |loss difference|): the policy update alone (loss forward + backward)
    on one generated batch, ours (flat rows skipped) and TRL's `_compute_loss` on the whole batch, interleaved
    `--update-repeats` times on the same model (the fastest of each: other load only adds time). With
    `--cpu-time`: the process's CPU seconds on one torch thread, which other load on a shared machine barely
    changes (wall time there can vary tenfold)."""
    import torch
    from trl import GRPOTrainer

    clock = time.process_time if options.cpu_time else time.perf_counter
    if options.cpu_time:
        torch.set_num_threads(1)

    results = {}
    for share in options.flat_shares:
        with tempfile.TemporaryDirectory() as output_dir:
            trainer = build_trainer("grpo", options, output_dir, "text", FlatGroupsReward(share))
            model = trainer.model
            model.train()
            trainer.current_gradient_accumulation_steps = 1
            rows = [trainer.train_dataset[i] for i in range(options.batch_size // 8)]
            with contextlib.redirect_stdout(io.StringIO()):
                batch = trainer._generate_and_score_completions([r for r in rows for _ in range(8)])
            full = {k: v for k, v in batch.items() if k not in ("keep", "counted")}
            times = {"trl": [], "ours": []}
            losses = {}
            for _ in range(options.update_repeats):
                for kind in times:
                    model.zero_grad()
                    start = clock()
                    loss = (trainer._compute_loss(model, batch) if kind == "ours"
                            else GRPOTrainer._compute_loss(trainer, model, full))
                    loss.backward()
                    times[kind].append(clock() - start)
                    losses[kind] = loss.item()
        results[share] = (min(times["trl"]), min(times["ours"]), abs(losses["trl"] - losses["ours"]))
        print(f"# {share:.0%} flat groups: update measured", file=sys.stderr, flush=True)
    return results


def print_flat_update_table(results: dict, cpu_time: bool = False) -> None:
    print("\n## zero-variance groups: the policy update alone, mode grpo vs GRPOTrainer's loss on the same batch"
          f"{' (CPU seconds, 1 thread)' if cpu_time else ''}\n")
    print("| flat groups | update s (TRL) | update s (ours) | ratio | target | abs loss difference |")
    print("|---|---|---|---|---|---|")
    for share, (theirs, mine, difference) in results.items():
        print(f"| {share:.0%} | {theirs:.4f} | {mine:.4f} | {mine / theirs:.3f} | <= {1 - share + 0.1:.2f} "
              f"| {difference:.1e} |")


def print_flat_table(results: dict) -> None:
    print("\n## zero-variance groups, text model (tiny Llama), mode grpo vs GRPOTrainer\n")
    print("| flat groups | update s (TRL) | update s (ours) | update ratio | target | step ratio "
          "| max abs weight diff |")
    print("|---|---|---|---|---|---|---|")
    for share, (trl_step, trl_update, step, update, difference) in results.items():
        print(f"| {share:.0%} | {trl_update:.4f} | {update:.4f} | {update / trl_update:.3f} | <= {1 - share + 0.1:.2f} "
              f"| {step / trl_step:.3f} | {difference:.1e} |")


class CountingReward:
    """Wraps a reward function; counts the completions it scored (= generated)."""

    def __init__(self, func):
        self.func, self.samples, self.__name__ = func, 0, getattr(func, "__name__", "reward")

    def __call__(self, completions, **kwargs):
        self.samples += len(completions)
        return self.func(completions, **kwargs)


def train_headroom(mode: str, dynamic: bool, seed: int, base, options) -> list[dict]:
    """One headroom run (paper_fidelity.py's settings); at every `dynamic_eval_every` steps: steps, wall seconds
    of training (measurements excluded), completions generated, held-out pass@1 and pass@16 per prompt."""
    import copy

    from transformers import TrainerCallback

    from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer
    from hf_trainkit.tasks.headroom import (build_headroom_dataset, build_headroom_tokenizer, exact_metrics,
                                            headroom_reward, headroom_rows)

    tokenizer, rows = build_headroom_tokenizer(), headroom_rows("heldout")
    reward = CountingReward(headroom_reward)
    points, clock = [], {"start": None, "excluded": 0.0}

    def point(model, step):
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        records = exact_metrics(model, tokenizer, rows, [1, 16], n=16)
        model.train(was_training)
        wall = started - clock["start"] - clock["excluded"]
        points.append({"step": step, "wall": wall, "samples": reward.samples,
                       "pass@1": [r["pass@1"] for r in records], "pass@16": [r["pass@16"] for r in records]})
        clock["excluded"] += time.perf_counter() - started

    class Measure(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            clock["start"] = time.perf_counter()
            point(model, 0)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % options.dynamic_eval_every == 0 or state.global_step == state.max_steps:
                point(model, state.global_step)

    with tempfile.TemporaryDirectory() as output_dir:
        args = FilteredGRPOConfig(
            output_dir=output_dir, mode=mode, seed=seed, max_steps=options.dynamic_steps, learning_rate=1e-3,
            per_device_train_batch_size=16, num_generations=8, max_completion_length=2, logging_steps=10,
            report_to=[], save_strategy="no", disable_tqdm=True, log_mode_summary=False, dynamic_sampling=dynamic,
            dynamic_sampling_max_rounds=options.dynamic_rounds)
        trainer = FilteredGRPOTrainer(model=copy.deepcopy(base), reward_funcs=reward, args=args,
                                      train_dataset=build_headroom_dataset(4096, seed=seed),
                                      processing_class=tokenizer, callbacks=[Measure()])
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer.train()
    return points


def measure_dynamic(options) -> dict:
    """(mode, dynamic) -> one list of points per seed."""
    from hf_trainkit.tasks.headroom import build_headroom_base_model, build_headroom_tokenizer

    runs = {(mode, dynamic): [] for mode in ("grpo", "psr") for dynamic in (False, True)}
    for seed in options.dynamic_seeds:
        base = build_headroom_base_model(build_headroom_tokenizer(), seed=seed)
        for (mode, dynamic), per_seed in runs.items():
            per_seed.append(train_headroom(mode, dynamic, seed, base, options))
        print(f"# seed {seed} done", file=sys.stderr, flush=True)
        if options.dynamic_partial:  # the table so far, for a run that may be cut short
            done = argparse.Namespace(**{**vars(options), "dynamic_seeds": options.dynamic_seeds[:len(per_seed)]})
            with contextlib.redirect_stdout(sys.stderr):
                print_dynamic_table(runs, done)
    return runs


def _at_budget(points: list[dict], key: str, budget: float) -> dict:
    """The last measurement taken within `budget` of `key` (samples or wall seconds)."""
    within = [p for p in points if p[key] <= budget + 1e-9]
    return within[-1] if within else points[0]


def print_dynamic_table(runs: dict, options) -> None:
    import numpy as np

    from hf_trainkit.eval.intervals import draw_resamples, estimate

    seeds = len(options.dynamic_seeds)
    print(f"\n## dynamic sampling on the headroom task ({seeds} seeds x 6 held-out prompts, {options.dynamic_steps} "
          f"steps, up to {options.dynamic_rounds} extra rounds; mean [95 % interval])\n")
    print("| mode | dynamic sampling | wall s | samples generated | pass@1 | pass@16 |")
    print("|---|---|---|---|---|---|")
    for (mode, dynamic), per_seed in runs.items():
        finals = [points[-1] for points in per_seed]
        resamples = draw_resamples(seeds, len(finals[0]["pass@1"]), 2000, seed=0)
        cells = [estimate(np.array([f[k] for f in finals]), resamples).format() for k in ("pass@1", "pass@16")]
        print(f"| {mode} | {'on' if dynamic else 'off'} | {np.mean([f['wall'] for f in finals]):.1f} | "
              f"{np.mean([f['samples'] for f in finals]):.0f} | {cells[0]} | {cells[1]} |")
    print("\n| mode | on - off, compared at | pass@1 | pass@16 | verdict (pass@1, pass@16) |")
    print("|---|---|---|---|---|")
    for mode in ("grpo", "psr"):
        off, on = runs[(mode, False)], runs[(mode, True)]
        for label, pick in (("the same steps", lambda points, ref: points[-1]),
                            ("equal samples", lambda points, ref: _at_budget(points, "samples", ref["samples"])),
                            ("equal wall time", lambda points, ref: _at_budget(points, "wall", ref["wall"]))):
            cells, verdicts = [], []
            for k in ("pass@1", "pass@16"):
                differences = np.array([np.array(pick(a, b[-1])[k]) - np.array(b[-1][k]) for a, b in zip(on, off)])
                resamples = draw_resamples(seeds, differences.shape[1], 2000, seed=0)
                value = estimate(differences, resamples)
                cells.append(value.format(signed=True))
                verdicts.append("helps" if value.low > 0 else "hurts" if value.high < 0 else "undecided")
            print(f"| {mode} | {label} | {cells[0]} | {cells[1]} | {', '.join(verdicts)} |")


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
                        help="which models the filter tables measure (default: both)")
    parser.add_argument("--tables", nargs="+", choices=["filter", "flat-update", "flat", "dynamic"],
                        default=["filter", "flat-update", "flat"],
                        help="filter: tables 1-2 (step time, PSR/NSR update); flat-update: table 3a, the update "
                        "alone, interleaved; flat: table 3b, whole runs (step, update, weights); dynamic: table 4, "
                        "dynamic sampling on the headroom task (CPU-heavy) (default: filter flat-update flat)")
    parser.add_argument("--update-repeats", type=int, default=10,
                        help="interleaved repeats of table 3a (default: %(default)s)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="table 3a in CPU seconds on one thread instead of wall seconds (for a shared machine)")
    parser.add_argument("--dynamic-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                        help="seeds of table 4 (default: %(default)s)")
    parser.add_argument("--dynamic-steps", type=int, default=60, help="steps per run of table 4 (default: %(default)s)")
    parser.add_argument("--dynamic-rounds", type=int, default=3,
                        help="dynamic_sampling_max_rounds of table 4 (default: %(default)s)")
    parser.add_argument("--dynamic-eval-every", type=int, default=5,
                        help="steps between the measurements of table 4 (default: %(default)s)")
    parser.add_argument("--dynamic-partial", action="store_true",
                        help="print table 4 to stderr after every seed too")
    parser.add_argument("--flat-shares", nargs="+", type=float, default=[0.25, 0.5, 0.75],
                        help="shares of zero-variance groups for table 3, multiples of 0.25 (default: %(default)s)")
    parser.add_argument("--generation", choices=["hf", "vllm"], default="hf",
                        help="vllm: only the step table with vLLM colocate generation (TRL and every mode, text "
                        "model); on a CPU run it with .venv-vllm/bin/python (default: hf, transformers' generate)")
    options = parser.parse_args(argv)
    if options.generation == "vllm":
        return vllm_step_table(options)

    import torch
    import transformers
    import trl

    from hf_trainkit.library_noise import filter_library_noise

    filter_library_noise()
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
          f"model hidden={options.hidden_size} layers={options.layers}, {options.batch_size} completions x "
          f"{options.completion_length} tokens per step, loss_type={options.loss_type}, "
          f"{options.steps} steps x {options.repeats} repeats; median step of each run, best run")
    if "filter" in options.tables:
        for model_kind in options.models:
            print_tables(model_kind, measure_all(options, model_kind))
    if "flat-update" in options.tables:
        print_flat_update_table(measure_flat_update(options), options.cpu_time)
    if "flat" in options.tables:
        print_flat_table(measure_flat(options))
    if "dynamic" in options.tables:
        print_dynamic_table(measure_dynamic(options), options)
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


def vllm_step_table(options) -> int:
    """`--generation vllm`: seconds per step with TRL's vLLM colocate generation, GRPOTrainer against
    FilteredGRPOTrainer in each mode, in one run (one engine for all the trainers: each trainer's first sync, at
    step 0, loads its own weights into it). On a CPU (vLLM's CPU build) the weight transport is the tests' stand-in
    (tests/rl/vllm_stand_ins.py): TRL 1.16's per-tensor load cannot run on that backend."""
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    import trl
    from trl import GRPOConfig, GRPOTrainer

    from hf_trainkit.library_noise import filter_library_noise
    from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer
    from hf_trainkit.tasks.digit import build_tiny_model, build_toy_dataset, build_toy_tokenizer

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "rl"))
    from vllm_stand_ins import install_colocate_weight_reload, share_one_engine  # noqa: E402

    if not torch.cuda.is_available():
        install_colocate_weight_reload()
    share_one_engine()
    filter_library_noise()
    import vllm

    kinds = ["trl", "grpo", "psr", "nsr", "w-reinforce"]
    times = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer = build_toy_tokenizer()
        model_dir = os.path.join(workdir, "model")  # vLLM loads the model from a directory, TRL from the same
        build_tiny_model(tokenizer, hidden_size=options.hidden_size, num_layers=options.layers,
                         seed=0).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        dataset = build_toy_dataset(1024)
        for _ in range(options.repeats):
            for kind in kinds:
                common = dict(output_dir=os.path.join(workdir, kind), per_device_train_batch_size=options.batch_size,
                              num_generations=8, max_completion_length=options.completion_length,
                              learning_rate=1e-4, max_steps=options.warmup + options.steps, logging_steps=1,
                              report_to=[], save_strategy="no", seed=0, disable_tqdm=True,
                              loss_type=options.loss_type, use_vllm=True, vllm_mode="colocate",
                              vllm_max_model_length=128, bf16=torch.cuda.is_available())
                args = GRPOConfig(**common) if kind == "trl" else FilteredGRPOConfig(
                    mode=kind, log_mode_summary=False, **common)
                trainer_cls = GRPOTrainer if kind == "trl" else FilteredGRPOTrainer
                trainer = trainer_cls(model=model_dir, reward_funcs=half_reward, args=args, train_dataset=dataset,
                                      processing_class=tokenizer)
                timer = StepTimer(trainer)
                with contextlib.redirect_stdout(io.StringIO()):
                    trainer.train()
                times[kind].append((statistics.median(timer.step_seconds[options.warmup:]),
                                    statistics.median(timer.update_seconds[options.warmup:])))
                del trainer
    best = {kind: (min(t[0] for t in values), min(t[1] for t in values)) for kind, values in times.items()}
    print(f"# vllm {vllm.__version__}, trl {trl.__version__}, torch {torch.__version__}; vLLM colocate; model "
          f"hidden={options.hidden_size} layers={options.layers}, {options.batch_size} completions x "
          f"{options.completion_length} tokens per step, loss_type={options.loss_type}, {options.steps} steps x "
          f"{options.repeats} repeats; median step of each run, best run"
          + ("" if torch.cuda.is_available() else "; CPU: stand-in weight transport"))
    print("\n## vLLM generation (colocate), text model\n")
    print("| run | s/step | ratio vs GRPOTrainer | policy update s | update ratio |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        step, update = best[kind]
        name = "GRPOTrainer (TRL)" if kind == "trl" else f"FilteredGRPOTrainer mode={kind}" + (
            ", 50% kept" if kind in ("psr", "nsr") else "")
        print(f"| {name} | {step:.4f} | {step / best['trl'][0]:.3f} | {update:.4f} | "
              f"{update / best['trl'][1]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
