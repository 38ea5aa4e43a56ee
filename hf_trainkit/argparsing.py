"""Command-line parsing shared by the `hf-trainkit` commands and `scripts/train_grpo.py`: one line per mistake."""

from __future__ import annotations

import argparse
import difflib
import re


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

