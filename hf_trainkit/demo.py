"""The demo: train the four modes briefly on the built-in toy task and compare their rewards and held-out pass@k.

`python scripts/demo.py` (or `hf-trainkit demo`): CPU only, no download, a few minutes in all.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time

from .rl.advantages import MODES


# The demo's vision-language part: the two filtered modes of the paper, briefly.
VLM_MODES = ("psr", "nsr")
VLM_STEPS = 40


def run_demo(output_root: str = "runs/demo", max_steps: int = 200, seed: int = 0, modes=MODES, task: str = "digit",
             eval_n: int = 64) -> list[dict]:
    """Train each mode and return one row per mode: first/last logged reward, pass@1 and pass@16 on the held-out
    prompts before and after training, seconds, run directory. `task` "chart" trains the tiny vision-language model
    on the chart task (runs in OUTPUT_ROOT/chart-MODE)."""
    from .commands.train_grpo import train_grpo_options
    from .training.run import run

    rows = []
    for mode in modes:
        output_dir = os.path.join(output_root, mode if task == "digit" else f"{task}-{mode}")
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
        history = trainer.state.log_history
        rewards = [entry["reward"] for entry in history if "reward" in entry]
        evals = [entry for entry in history if "eval/pass@1" in entry]
        rows.append(
            {"mode": mode, "first_reward": rewards[0], "last_reward": rewards[-1],
             "base_pass@1": evals[0]["eval/pass@1"], "pass@1": evals[-1]["eval/pass@1"],
             "base_pass@16": evals[0]["eval/pass@16"], "pass@16": evals[-1]["eval/pass@16"],
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
    print("pass@k: 64 samples per held-out prompt, base model (step 0) -> trained model; "
          "benchmarks/paper_fidelity.py measures it properly (n=256, 2 seeds).")
    if args.vlm_steps:
        print("\nVision-language model (a tiny Qwen2.5-VL built locally) on the chart task (bar and line charts drawn "
              "with matplotlib; held-out: 12 charts)", flush=True)
        vlm_rows = run_demo(args.output_dir, args.vlm_steps, args.seed, modes=VLM_MODES, task="chart", eval_n=16)
        print()
        print(format_table(vlm_rows))
        print("pass@k: 16 samples per held-out chart.")
    from .monitor.command import main as monitor_main

    compare_dir = os.path.join(args.output_dir, "compare")
    with contextlib.redirect_stdout(io.StringIO()):
        monitor_main([row["output_dir"] for row in rows] + ["--output-dir", compare_dir, "--no-progress"])
    print(f"\nComparison (figures, summary.txt, report.html): {compare_dir}")
    print(f"  same as: hf-trainkit monitor {' '.join(row['output_dir'] for row in rows)} --output-dir {compare_dir}")
    return 0
