#!/usr/bin/env python
"""Reading TensorBoard runs: `hf_trainkit`'s reader (`load_run` on the folder: scalars -> log entries -> RunHistory)
against TensorBoard's own loaders on the same files, measured in the same run, as ratios (target: <= 2).

Writes one run of `--scalars` scalars (4 tags, as transformers' TensorBoardCallback writes them: one event per
scalar) with TensorBoard's own writer (via torch's SummaryWriter), copies it into `--runs` run folders, then times:
- `EventAccumulator` (tensorboard.backend.event_processing.event_accumulator, every scalar kept: size_guidance 0),
  `Reload()` + `Scalars(tag)` of every tag: the yardstick;
- `plugin_event_accumulator.EventAccumulator` (what the TensorBoard server loads with), `Reload()` + `Tensors(tag)`;
- `load_run` of every run folder.

    python benchmarks/tracker_read.py [--runs 8] [--scalars 100000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

TAGS = ("train/loss", "train/grad_norm", "train/learning_rate", "train/epoch")


def write_run(folder: Path, scalars: int) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step in range(1, scalars // len(TAGS) + 1):
        for index, tag in enumerate(TAGS):
            writer.add_scalar(tag, 1.0 / step + index, step)
    writer.close()
    return folder


def timed(function, runs):
    start = time.perf_counter()
    counts = [function(run) for run in runs]
    return time.perf_counter() - start, sum(counts)


def tensorboard_accumulator(run: Path) -> int:
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(run), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return sum(len(accumulator.Scalars(tag)) for tag in accumulator.Tags()["scalars"])


def tensorboard_plugin_accumulator(run: Path) -> int:
    from tensorboard.backend.event_processing import plugin_event_accumulator

    accumulator = plugin_event_accumulator.EventAccumulator(str(run), size_guidance={"tensors": 0})
    accumulator.Reload()
    return sum(len(accumulator.Tensors(tag)) for tag in accumulator.Tags()["tensors"])


def ours(run: Path) -> int:
    from hf_trainkit.monitor import load_run

    history = load_run(str(run))
    return sum(len(series) for series in (*history.train.values(), *history.eval.values()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--scalars", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1, help="best of this many timings of each reader")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        first = write_run(root / "run-0", options.scalars)
        runs = [first] + [Path(shutil.copytree(first, root / f"run-{i}")) for i in range(1, options.runs)]
        print(f"{options.runs} TensorBoard runs x {options.scalars:,} scalars written in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
        results = {}
        for name, reader in (("TensorBoard EventAccumulator (yardstick)", tensorboard_accumulator),
                             ("TensorBoard plugin_event_accumulator", tensorboard_plugin_accumulator),
                             ("hf_trainkit load_run", ours)):
            results[name] = min((timed(reader, runs) for _ in range(options.repeat)), key=lambda r: r[0])
        base = results["TensorBoard EventAccumulator (yardstick)"][0]
        print(f"{'reader':<42} {'scalars':>10} {'seconds':>8} {'ratio':>6}")
        for name, (seconds, count) in results.items():
            print(f"{name:<42} {count:>10,} {seconds:>8.2f} {seconds / base:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
