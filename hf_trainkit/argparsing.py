"""Command-line parsing shared by the `hf-trainkit` commands and `scripts/train_grpo.py`: one line per mistake, the
same `PROG: error: MESSAGE` path for every command."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (no usage block above it), with the closest flag for a typo:

        train_grpo.py: error: unrecognized arguments: --learnig-rate 1e-3 (did you mean --learning-rate?) (see --help)
    """

    def error(self, message: str):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [action for action in self._option_string_actions if action.startswith("--")]
            hints = []
            for token in unknown.group(1).split():
                if token.startswith("--"):
                    close = difflib.get_close_matches(token.split("=", 1)[0], flags, n=1, cutoff=0.6)
                    if close:
                        hints.append(close[0])
            if hints:
                message += f" (did you mean {' / '.join(hints)}?)"
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")



class UsageError(Exception):
    """A user's mistake (a bad flag, a missing or unreadable input): reported as one line `PROG: error: MESSAGE`
    with exit code `exit_code` (2 unless said otherwise), never as a traceback."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def report_error(prog: str, message) -> None:
    """The one form every command gives a mistake or a failure: `PROG: error: MESSAGE` on stderr."""
    print(f"{prog}: error: {message}", file=sys.stderr)


def run_command(prog: str, command: Callable[..., int], *args, **kwargs) -> int:
    """`command(*args, **kwargs)`, with a `UsageError` printed by `report_error` and returned as its exit code
    (`HF_TRAINKIT_DEBUG=1` shows the traceback instead)."""
    try:
        return command(*args, **kwargs)
    except UsageError as error:
        if os.environ.get("HF_TRAINKIT_DEBUG"):
            raise
        report_error(prog, error)
        return error.exit_code


def flag(parser, name: str, **kwargs):
    """Register ``--kebab-case`` with its ``--snake_case`` alias (as HfArgumentParser accepts both)."""
    names = [f"--{name}"]
    if "-" in name:
        names.append(f"--{name.replace('-', '_')}")
    parser.add_argument(*names, **kwargs)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value
