"""`hf-trainkit`: the command-line entry point.

Each subcommand imports its module only when it runs, so `hf-trainkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys


def _runner(module: str, **fixed):
    """main(argv) of `hf_trainkit.commands.<module>`, imported only when the command runs."""

    def run(rest: list[str]) -> int:
        from importlib import import_module

        return import_module(f".commands.{module}", __package__).main(rest, **fixed)

    return run


# name -> (help, runner taking the remaining argv). Every program is one module of hf_trainkit/commands/, which owns
# its flags and its --help.
COMMANDS = {
    "train-grpo": ("train with GRPO, PSR, NSR or W-REINFORCE (the flags of scripts/train_grpo.py)",
                   _runner("train_grpo", prog="hf-trainkit train-grpo")),
    "monitor": ("plot one run or compare many, with a diagnosis of each curve", _runner("monitor")),
    "checkpoints": ("find, list and inspect checkpoints: latest DIR | list DIR | inspect CKPT", _runner("checkpoints")),
    "control": ("act on a running training: save [--name N] RUN | stop RUN | status RUN",
                _runner("control")),
    "dashboard": ("a live page of trainings: curves, diagnosis, checkpoints, Save and Stop",
                  _runner("dashboard")),
    "eval": ("pass@k, entropy and coverage of checkpoints or runs (and their base model)", _runner("eval")),
    "demo": ("train the four modes briefly on the built-in toy task and compare them", _runner("demo")),
}


def build_parser() -> argparse.ArgumentParser:
    # One line per program (argparse would wrap a long name onto two), in the order of COMMANDS.
    width = max(len(name) for name in COMMANDS) + 3
    listing = "\n".join(f"  {name:<{width}}{help_text}" for name, (help_text, _) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="hf-trainkit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"hf_trainkit command line.\n\ncommands (hf-trainkit COMMAND --help for one's flags):\n{listing}")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hf_trainkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", help="one of the commands above")
    for name in COMMANDS:
        subparsers.add_parser(name, add_help=False)
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
