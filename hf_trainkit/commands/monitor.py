"""`hf-trainkit monitor RUN [RUN ...]`: plot one run or compare many, with a written diagnosis."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from ..argparsing import OneLineArgumentParser, report_error, run_command
from ..monitor.load import MonitorInputError, expand_runs, load_runs
from ..monitor.outputs import prepare_output_dir, render


PROG = "hf-trainkit monitor"
X_AXES = ("step", "epoch", "time")


def _smoothing(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _watch_seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def monitor_command_parser(subparsers=None) -> argparse.ArgumentParser:
    description = ("Plot one training run or compare several from their trainer_state.json, and write a summary with "
                   "a diagnosis. A RUN is an output dir (its newest state is used), a checkpoint dir, or a "
                   "trainer_state.json file; globs such as 'runs/*-2025' are expanded.")
    if subparsers is not None:
        parser = subparsers.add_parser("monitor", help="plot or compare runs from trainer_state.json",
                                       description=description, allow_abbrev=False)
    else:  # no prefix matching: a typo is an error with a "did you mean", never another flag
        parser = OneLineArgumentParser(prog=PROG, description=description, allow_abbrev=False)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="output dir, checkpoint dir or trainer_state.json")
    parser.add_argument("--labels", "--label", nargs="+", metavar="LABEL",
                        help="one label per RUN, in order (default: the run directory's name)")
    parser.add_argument("--output-dir", "--output_dir", default="plots", metavar="DIR",
                        help="where figures, summary.txt/json and report.html go (default: %(default)s)")
    parser.add_argument("--x", choices=X_AXES, default="step", help="x axis (default: %(default)s)")
    parser.add_argument("--smooth", type=_smoothing, default=0.6, metavar="W",
                        help="TensorBoard EMA smoothing weight in [0, 1); raw curve drawn faintly behind; 0 = raw "
                        "(default: %(default)s)")
    parser.add_argument("--log-y", "--log_y", action="store_true", help="logarithmic y axis")
    parser.add_argument("--metrics", nargs="+", default=[], metavar="PATTERN",
                        help="also plot every logged key matching these globs (e.g. 'rewards/*' 'eval_*')")
    parser.add_argument("--group-by", "--group_by", default=None, metavar="REGEX",
                        help="group runs whose labels give the same first capture group (e.g. '(.*)-seed\\d+') "
                        "into a mean line with a min-max band")
    parser.add_argument("--watch", nargs="?", const=30.0, type=_watch_seconds, default=None, metavar="SECONDS",
                        help="re-read and re-render every SECONDS (default 30) until interrupted")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    parser.add_argument("--compare", action="store_true",
                        help="accepted, and changes nothing: several RUNs are compared already (the flag of "
                        "scripts/monitor_training.py, so that its commands work here too)")
    if subparsers is not None:
        parser.set_defaults(func=monitor_command)
    return parser


def monitor_command(args) -> int:
    if args.labels and len(args.labels) != len(args.runs):
        raise MonitorInputError(f"--labels: {len(args.labels)} labels for {len(args.runs)} runs; give one per RUN.")
    if args.group_by:
        try:
            re.compile(args.group_by)
        except re.error as error:
            raise MonitorInputError(f"--group-by {args.group_by!r}: not a regular expression ({error}).") from None
    paths = expand_runs(args.runs)
    labels = args.labels if args.labels and len(paths) == len(args.labels) else None
    if args.labels and labels is None:
        raise MonitorInputError(f"--labels: {len(args.labels)} labels but the RUN patterns expand to {len(paths)} runs.")
    output_dir = Path(args.output_dir)
    prepare_output_dir(output_dir)
    show_progress = not args.no_progress
    while True:
        runs, errors = load_runs(paths, labels, show_progress)
        for error in errors:
            report_error(PROG, error)
        if runs:
            written = render(runs, args, output_dir, show_progress)
            if args.watch is None:
                print(f"Wrote {len(written)} files to {output_dir}:")
                for path in written:
                    print(f"  {path}")
            else:
                print(f"[{time.strftime('%H:%M:%S')}] rendered {len(runs)} run(s) into {output_dir}", flush=True)
        if args.watch is None:
            if not runs:
                return 2
            return 2 if errors else 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = monitor_command_parser()
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # paths that are not UTF-8 (bytes from another system) still print
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return run_command(PROG, monitor_command, args)
    except KeyboardInterrupt:
        return 130
    except OSError as error:  # writing the outputs failed midway (disk full, folder removed)
        if os.environ.get("HF_TRAINKIT_DEBUG"):
            raise
        report_error(PROG, f"cannot write to {args.output_dir} ({error.strerror or error}).")
        return 2
