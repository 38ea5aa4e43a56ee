#!/usr/bin/env python
"""How `hf-trainkit monitor` scales with the number and length of runs, against a bare `json.load`.

For 1, 8 and 32 runs of N log entries each (TRL-GRPO-like entries, 12 keys), prints:
- load + summarise (read, split train/eval, summary and diagnosis) vs `json.load` of the same files
  (target ratio <= 2);
- render (every figure, summary files and report.html) in seconds (target: 8 runs x 100k entries < 5 s).

    python benchmarks/monitor_scale.py [--entries 10000 100000 200000] [--runs 1 8 32]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path


def write_run(path: Path, entries: int, seed: int) -> Path:
    rng = random.Random(seed)
    history = []
    for step in range(1, entries + 1):
        history.append({
            "step": step, "epoch": step / entries, "loss": 1e-3 * rng.gauss(0, 1),
            "grad_norm": abs(rng.gauss(1, 0.2)), "learning_rate": 1e-6 * (1 - step / entries),
            "reward": 0.2 + 0.6 * (1 - math.exp(-step / (entries / 5))) + rng.gauss(0, 0.05),
            "reward_std": abs(rng.gauss(0.3, 0.05)), "entropy": abs(rng.gauss(1, 0.1)),
            "completions/mean_length": 100 + rng.random(), "kl": abs(rng.gauss(0, 0.01)),
            "frac_reward_zero_std": rng.random(), "num_tokens": float(step * 1000),
        })
        if step % 1000 == 0:
            history.append({"step": step, "epoch": step / entries, "eval_loss": rng.random(), "eval_reward": 0.5})
    path.mkdir(parents=True, exist_ok=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": entries, "log_history": history}))
    return path


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000, 200_000])
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-total", type=int, default=3_200_000,
                        help="skip combinations with more entries in all (default: %(default)s)")
    options = parser.parse_args(argv)

    import numpy  # noqa: F401  (imported once up front, as the monitor command does, not inside the first timing)

    from hf_trainkit.monitor.command import monitor_command_parser, render
    from hf_trainkit.monitor.load import load_run
    from hf_trainkit.monitor.summary import summarize

    print("| runs | entries/run | json.load s | load+summarise s | ratio | render s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for entries in options.entries:
            base = [write_run(Path(root) / f"e{entries}" / f"run{i}", entries, i) for i in range(max(options.runs))]
            for count in options.runs:
                if count * entries > options.max_total:
                    continue
                paths = base[:count]
                bare, _ = timed(lambda: [json.loads((p / "trainer_state.json").read_bytes()) for p in paths])
                ours, runs = timed(lambda: [(run, summarize(run)) for run in (load_run(p) for p in paths)])
                args = monitor_command_parser().parse_args([*map(str, paths), "--output-dir", str(Path(root) / "out")])
                render_seconds, _ = timed(render, [run for run, _ in runs], args, Path(root) / "out", False,
                                          [summary for _, summary in runs])
                print(f"| {count} | {entries:,} | {bare:.2f} | {ours:.2f} | {ours / bare:.2f} | {render_seconds:.2f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
