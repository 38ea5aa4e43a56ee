#!/usr/bin/env python
"""Wall time of the tiny toy run with 1 and 2 processes: plain, DDP (gloo) and DeepSpeed ZeRO-3 (CPU), same run.

Each configuration runs scripts/train_grpo.py as a user would (`accelerate launch` for the multi-process ones) for
the same number of steps and per-device batch (so 2 processes see twice the samples). Prints the command's wall
time (start-up included), the Trainer's own `train_runtime`, samples per second, and ratios against one plain
process measured in the same run. The first DeepSpeed launch on a machine also builds DeepSpeed's comm op: run
once before measuring, or read the second repeat.

    python benchmarks/multiprocess_scaling.py [--steps 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train_grpo.py"


def launcher(kind: str, port: int) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(port)]
    if kind == "1 process":
        return [sys.executable]
    if kind == "2 processes, DDP":
        return [*launch, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
    processes = "1" if kind.startswith("1") else "2"
    return [*launch, "--config_file", str(ROOT / "deepspeed_configs" / "zero3_cpu.yaml"), "--num_processes",
            processes]


def measure(kind: str, steps: int, port: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as out:
        command = [*launcher(kind, port), str(TRAIN), "--mode", "psr", "--output-dir", out, "--max-steps",
                   str(steps), "--no-save-checkpoints", "--quiet", "--no-loss-curve", "--no-diagnostics",
                   "--no-live-control"]
        env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - started
        history = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]
        runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
        samples = sum(h.get("psr/positive_samples", 0) + h.get("psr/negative_samples", 0) for h in history)
    return wall, runtime, int(samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args(argv)
    kinds = ["1 process", "2 processes, DDP", "1 process, ZeRO-3", "2 processes, ZeRO-3"]
    results: dict[str, list] = {k: [] for k in kinds}
    port = 29800
    for _ in range(options.repeats):
        for kind in kinds:
            port += 1
            results[kind].append(measure(kind, options.steps, port))
    best = {k: min(v, key=lambda r: r[0]) for k, v in results.items()}
    base_wall, base_runtime, _ = best["1 process"]
    print(f"# tiny model, mode psr, {options.steps} steps, 16 completions per process per step, best of "
          f"{options.repeats}")
    print()
    print("| run | wall s | ratio | train_runtime s | ratio | samples | samples/s |")
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        wall, runtime, samples = best[kind]
        print(f"| {kind} | {wall:.1f} | {wall / base_wall:.2f} | {runtime:.1f} | {runtime / base_runtime:.2f} | "
              f"{samples} | {samples / runtime:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
