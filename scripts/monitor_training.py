#!/usr/bin/env python
"""Plot a training run, or compare several, from trainer_state.json (the original guide's flags).

    python scripts/monitor_training.py --checkpoint-dir runs/nsr-2025 --output-dir plots/nsr
    python scripts/monitor_training.py --compare --checkpoints runs/psr runs/nsr --labels PSR NSR --output-dir plots/cmp

Every other flag of `hf-trainkit monitor` (--smooth, --x, --metrics, --group-by, --watch ...) is passed through.
"""

import argparse
import sys

from hf_trainkit.commands.monitor import main as monitor_main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    parser.add_argument("--checkpoint-dir", "--checkpoint_dir", metavar="RUN", help="the run to plot")
    parser.add_argument("--compare", action="store_true", help="compare the runs given with --checkpoints")
    parser.add_argument("--checkpoints", nargs="+", metavar="RUN", help="runs to compare (with --compare)")
    args, rest = parser.parse_known_args(argv)
    if args.compare:
        if not args.checkpoints:
            print("monitor_training.py: error: --compare needs --checkpoints RUN [RUN ...]", file=sys.stderr)
            return 2
        runs = args.checkpoints
    elif args.checkpoint_dir:
        runs = [args.checkpoint_dir]
    else:
        print("monitor_training.py: error: give --checkpoint-dir RUN, or --compare --checkpoints RUN [RUN ...]",
              file=sys.stderr)
        return 2
    return monitor_main([*runs, *rest])


if __name__ == "__main__":
    raise SystemExit(main())
