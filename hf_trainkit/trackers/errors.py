"""The one exception the tracker readers raise, and the missing-extra message."""

from __future__ import annotations

from ..argparsing import UsageError


class TrackerInputError(UsageError, ValueError):
    """A tracker's run that cannot be read: one line naming the file and what is wrong (exit code 2)."""


def missing_extra(what: str, extra: str) -> TrackerInputError:
    return TrackerInputError(f"reading {what} needs the {extra} package: pip install \"hf_trainkit[{extra}]\"")
