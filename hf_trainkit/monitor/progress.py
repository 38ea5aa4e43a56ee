"""A progress bar for long monitor jobs only."""

from __future__ import annotations

import sys


class Progress:
    """A tqdm bar on stderr for long jobs only; quiet otherwise (and when tqdm is missing)."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
            except ImportError:
                self.bar = None

    def __call__(self, count: int = 1):
        if self.bar is not None:
            self.bar.update(count)

    def close(self):
        if self.bar is not None:
            self.bar.close()
