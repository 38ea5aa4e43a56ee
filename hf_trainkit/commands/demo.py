"""The demo: train the four modes briefly on the built-in toy task and compare their rewards and held-out pass@k.

`python scripts/demo.py` (or `hf-trainkit demo`): CPU only, no download, a few minutes in all.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import time

from ..rl.advantages import MODES


# The demo's vision-language part: the two filtered modes of the paper, briefly.
VLM_MODES = ("psr", "nsr")
VLM_STEPS = 40

# What benchmarks/paper_fidelity.py measures by default (its --seeds and --k-max; a test keeps these the same).
BENCHMARK_SEEDS = 10
BENCHMARK_K_MAX = 256


def run_demo(output_root: str = "runs/demo", max_steps: int = 200, seed: int = 0, modes=MODES, task: str = "digit",
             eval_n: int = 64) -> list[dict]:
    """Train each mode and return one row per mode: first/last logged reward, pass@1 and pass@16 on the held-out
    prompts before and after training, seconds, run directory. `task` "chart" trains the tiny vision-language model
    on the chart task (runs in OUTPUT_ROOT/chart-MODE)."""
    from .train_grpo import train_grpo_options
    from ..training.run import run

    from ..constants import BASE_MODEL_DIR

    rows, shared_base = [], None
    for mode in modes:
        output_dir = os.path.join(output_root, mode if task == "digit" else f"{task}-{mode}")
        base = os.path.join(output_dir, BASE_MODEL_DIR)
        if shared_base and not os.path.exists(base):
            # Every mode starts from the same base model (same seed, same recipe): built once, copied to the others
            # (the run checks the copy's recipe and builds its own if it differs).
            os.makedirs(output_dir, exist_ok=True)
            shutil.copytree(shared_base, base)
        options = train_grpo_options(
            mode=mode, task=task, output_dir=output_dir, seed=seed, max_steps=max_steps,
            logging_steps=max(1, max_steps // 10), save_steps=max_steps, eval_every=max(1, max_steps // 4),
            eval_n=eval_n, eval_k=sorted({1, 4, 16, eval_n}), quiet=True,
            no_resume=True,  # the demo trains afresh each time it is run
            config_overrides=["disable_tqdm=true"])  # the table below is the demo's output, not four progress bars
        print(f"training {mode if task == 'digit' else f'{mode} (VLM)':<12} -> {output_dir}", flush=True)
        start = time.perf_counter()
        # The Trainer prints every log dict; the table below is what the demo is about.
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = run(options)
        shared_base = shared_base or (base if os.path.isdir(base) else None)
        history = trainer.state.log_history
        rewards = [entry["reward"] for entry in history if "reward" in entry]
        evals = [entry for entry in history if "eval/pass@1" in entry]
        rows.append(
            {"mode": mode, "first_reward": rewards[0], "last_reward": rewards[-1],
             "base_pass@1": evals[0]["eval/pass@1"], "pass@1": evals[-1]["eval/pass@1"],
             "base_pass@16": evals[0]["eval/pass@16"], "pass@16": evals[-1]["eval/pass@16"],
             "base_entropy": evals[0].get("eval/entropy"), "entropy": evals[-1].get("eval/entropy"),
             "seconds": time.perf_counter() - start, "output_dir": output_dir}
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'mode':<12} {'reward (first, last log)':>24} {'held-out pass@1':>16} {'held-out pass@16':>17} "
             f"{'seconds':>8}  run"]
    for row in rows:
        lines.append(
            f"{row['mode']:<12} {row['first_reward']:>11.3f} -> {row['last_reward']:.3f} "
            f"{row['base_pass@1']:>7.3f} -> {row['pass@1']:.3f} {row['base_pass@16']:>8.3f} -> {row['pass@16']:.3f} "
            f"{row['seconds']:>8.1f}  {row['output_dir']}"
        )
    return "\n".join(lines)


def fallen_pass_at_k(rows: list[dict], steps: int, key: str = "pass@16") -> str:
    """A word on the modes whose held-out pass@16 fell ("" when none did), with what else was measured (the entropy
    of the first answer token) and how much one held-out chart weighs."""
    from ..tasks.chart import HELDOUT_SIZE

    fallen = [row for row in rows if row[key] < row[f"base_{key}"]]
    if not fallen:
        return ""
    parts = []
    for row in fallen:
        text = f"{row['mode']} ({row[f'base_{key}']:.2f} -> {row[key]:.2f}"
        if isinstance(row.get("entropy"), float) and isinstance(row.get("base_entropy"), float):
            text += f"; held-out entropy {row['base_entropy']:.2f} -> {row['entropy']:.2f}"
        parts.append(text + ")")
    return (f"{key} fell for {', '.join(parts)}. One of the {HELDOUT_SIZE} held-out charts is {1 / HELDOUT_SIZE:.3f} "
            f"of it, on one seed, after {steps} steps of a random tiny VLM: this part shows training on images "
            "running, not what each mode does to pass@k (benchmarks/paper_fidelity.py measures that).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", "--output_dir", default="runs/demo", metavar="DIR",
                        help="one sub-directory per mode is written here (default: %(default)s)")
    parser.add_argument("--max-steps", "--max_steps", type=int, default=200, metavar="N",
                        help="steps per mode (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: %(default)s)")
    parser.add_argument("--vlm-steps", type=int, default=VLM_STEPS, metavar="N",
                        help="steps of each vision-language run on the chart task; 0 skips them (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.max_steps <= 0:
        parser.error(f"--max-steps must be > 0, got {args.max_steps}")
    if args.vlm_steps < 0:
        parser.error(f"--vlm-steps must be >= 0, got {args.vlm_steps}")
    rows = run_demo(args.output_dir, args.max_steps, args.seed)
    print()
    print(format_table(rows))
    print("pass@k: 64 samples per held-out prompt, base model (step 0) -> trained model, one seed: a glimpse, not a "
          f"measurement; benchmarks/paper_fidelity.py measures it on a task built for it (exact pass@k up to k="
          f"{BENCHMARK_K_MAX}, {BENCHMARK_SEEDS} seeds, 95 % intervals).")
    if args.vlm_steps:
        print("\nVision-language model (a tiny Qwen2.5-VL built locally) on the chart task (bar and line charts drawn "
              "with matplotlib; held-out: 12 charts)", flush=True)
        vlm_rows = run_demo(args.output_dir, args.vlm_steps, args.seed, modes=VLM_MODES, task="chart", eval_n=16)
        print()
        print(format_table(vlm_rows))
        print("pass@k: 16 samples per held-out chart.")
        fallen = fallen_pass_at_k(vlm_rows, args.vlm_steps)
        if fallen:
            print(fallen)
    from .monitor import main as monitor_main

    compare_dir = os.path.join(args.output_dir, "compare")
    with contextlib.redirect_stdout(io.StringIO()):
        monitor_main([row["output_dir"] for row in rows] + ["--output-dir", compare_dir, "--no-progress"])
    print(f"\nComparison (figures, summary.txt, report.html): {compare_dir}")
    print(f"  same as: hf-trainkit monitor {' '.join(row['output_dir'] for row in rows)} --output-dir {compare_dir}")
    return 0
