"""`hf-trainkit`: the command-line entry point.

Each subcommand imports its module only when it runs, so `hf-trainkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys


def _run_train_grpo(rest: list[str]) -> int:
    from .commands.train_grpo import main

    return main(rest, prog="hf-trainkit train-grpo")


def _run_monitor(rest: list[str]) -> int:
    from .monitor.command import main

    return main(rest)


def _run_checkpoints(rest: list[str]) -> int:
    from .checkpointing.command import main

    return main(rest)


def _run_control(rest: list[str]) -> int:
    from .checkpointing.control_command import main

    return main(rest)


def _run_dashboard(rest: list[str]) -> int:
    from .dashboard.command import main

    return main(rest)


def _run_eval(rest: list[str]) -> int:
    from .eval.command import main

    return main(rest)


def _run_demo(rest: list[str]) -> int:
    from .demo import main

    return main(rest)


# name -> (help, runner taking the remaining argv). The runners own their flags and their --help.
COMMANDS = {
    "train-grpo": ("train with GRPO, PSR, NSR or W-REINFORCE (same flags as scripts/train_grpo.py)", _run_train_grpo),
    "monitor": ("plot one run or compare many from trainer_state.json, with a diagnosis", _run_monitor),
    "checkpoints": ("find, list and inspect checkpoints: latest DIR | list DIR | inspect CKPT", _run_checkpoints),
    "control": ("act on a running training: save [--name N] RUN_DIR | stop RUN_DIR | status RUN_DIR", _run_control),
    "dashboard": ("a live page of one training or several: curves, diagnostics, checkpoints, Save and Stop",
                  _run_dashboard),
    "eval": ("pass@k, entropy and coverage of saved checkpoints or runs (and their base model)", _run_eval),
    "demo": ("train the four modes briefly on the built-in toy task and compare them", _run_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-trainkit", description="hf_trainkit command line.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hf_trainkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # handles --help, --version and unknown commands (exit 2)
        parser.print_help(sys.stderr)
        return 1
    from .argparsing import run_command

    # Each command reports its own mistakes; this catches what one lets through, in the same one-line form.
    return run_command(f"hf-trainkit {argv[0]}", COMMANDS[argv[0]][1], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
