#!/usr/bin/env python
"""How `hf-trainkit monitor` scales with the number and length of runs, against a bare `json.load`.

For 1, 8 and 32 runs of N log entries each (TRL-GRPO-like entries, 12 keys), prints, measured in the same run:
- `json.load` of the trainer_state.json files (the yardstick);
- load: `load_run` (read, split train/eval) and its ratio to `json.load`; with --stdlib also the same load through
  Python's json (msgspec hidden), today's path on an install without msgspec;
- summarise: `summarize` of every run, and of that the diagnosis (`diagnostics.diagnose`, out of this benchmark's
  reach);
- load + summarise and its ratio to `json.load` (target: under 1, faster than a bare `json.load`);
- render (every figure, summary files and report.html) in seconds (target: 8 runs x 100k entries < 5 s).

    python benchmarks/monitor_scale.py [--entries 10000 100000 200000] [--runs 1 8 32] [--stdlib] [--no-render]
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


REPEAT = [1]


def timed(function, *args):
    best, result = math.inf, None
    for _ in range(REPEAT[0]):
        result = None  # the previous result freed outside the timing
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000, 200_000])
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-total", type=int, default=3_200_000,
                        help="skip combinations with more entries in all (default: %(default)s)")
    parser.add_argument("--stdlib", action="store_true", help="also time the load through Python's json")
    parser.add_argument("--no-render", action="store_true", help="skip the render column")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="time each step N times, interleaved, and keep the fastest (a shared machine's noise "
                        "is all upward) (default: %(default)s)")
    options = parser.parse_args(argv)
    REPEAT[0] = max(1, options.repeat)

    import numpy  # noqa: F401  (imported once up front, as the monitor command does, not inside the first timing)

    from hf_trainkit.monitor import load, summary
    from hf_trainkit.commands.monitor import monitor_command_parser, render
    from hf_trainkit.monitor.load import load_run
    from hf_trainkit.monitor.summary import summarize

    diagnosis_seconds = [0.0]
    diagnose = summary.diagnose

    def timed_diagnose(*args, **kwargs):
        started = time.perf_counter()
        try:
            return diagnose(*args, **kwargs)
        finally:
            diagnosis_seconds[0] += time.perf_counter() - started

    summary.diagnose = timed_diagnose
    print(f"JSON parser: {'msgspec' if load._fast_decoder() is not None else 'Python json (msgspec not installed)'}")
    stdlib_head = " load, stdlib json s (x) |" if options.stdlib else ""
    print(f"| runs | entries/run | json.load s | load s (x json.load) |{stdlib_head} summarise s (diagnosis s) "
          "| load+summarise s | ratio | render s |")
    print("|---|---|---|---|" + ("---|" if options.stdlib else "") + "---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for entries in options.entries:
            base = [write_run(Path(root) / f"e{entries}" / f"run{i}", entries, i) for i in range(max(options.runs))]
            for count in options.runs:
                if count * entries > options.max_total:
                    continue
                paths = base[:count]
                bare, _ = timed(lambda: [json.loads((p / "trainer_state.json").read_bytes()) for p in paths])
                loading, runs = timed(lambda: [load_run(p) for p in paths])
                stdlib_cell = ""
                if options.stdlib:
                    decoder = load._fast_decoder
                    load._fast_decoder = lambda: None
                    try:
                        stdlib, _ = timed(lambda: [load_run(p) for p in paths])
                    finally:
                        load._fast_decoder = decoder
                    stdlib_cell = f" {stdlib:.2f} ({stdlib / bare:.2f}) |"
                diagnosis_seconds[0] = 0.0
                summarising, summaries = timed(lambda: [summarize(run) for run in runs])
                ours = loading + summarising
                render_cell = "-"
                if not options.no_render:
                    args = monitor_command_parser().parse_args([*map(str, paths), "--output-dir",
                                                                str(Path(root) / "out")])
                    render_seconds, _ = timed(render, runs, args, Path(root) / "out", False, summaries)
                    render_cell = f"{render_seconds:.2f}"
                print(f"| {count} | {entries:,} | {bare:.2f} | {loading:.2f} ({loading / bare:.2f}) |{stdlib_cell} "
                      f"{summarising:.2f} ({diagnosis_seconds[0] / REPEAT[0]:.2f}) | {ours:.2f} | {ours / bare:.2f} | "
                      f"{render_cell} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
