"""`--group-by`: several seeds of one setting drawn as one mean line with a min-max band."""

from __future__ import annotations

import math
import re
from collections import defaultdict

from .load import RunHistory, Series


def group_key(label: str, pattern: re.Pattern) -> str:
    """The first capture group of `pattern` in `label` (the whole match without groups); the label if no match."""
    match = pattern.search(label)
    if not match:
        return label
    return match.group(1) if match.groups() else match.group(0)


def aggregate(members: list[Series]) -> Series:
    """Mean, min and max across runs at every step that at least one run logged (finite values only)."""
    by_step: dict[float, list[float]] = defaultdict(list)
    epochs: dict[float, float | None] = {}
    for series in members:
        for step, value, epoch in zip(series.steps, series.values, series.epochs):
            if math.isfinite(value):
                by_step[step].append(value)
                epochs.setdefault(step, epoch)
    out = Series(low=[], high=[])
    for step in sorted(by_step):
        values = by_step[step]
        out.append(step, sum(values) / len(values), epochs[step])
        out.low.append(min(values))
        out.high.append(max(values))
    return out


def group_runs(runs: list[RunHistory], pattern: str) -> list[RunHistory]:
    compiled = re.compile(pattern)
    groups: dict[str, list[RunHistory]] = defaultdict(list)
    for run in runs:
        groups[group_key(run.label, compiled)].append(run)
    grouped = []
    for key, members in groups.items():
        if len(members) == 1:
            grouped.append(members[0])
            continue
        combined = RunHistory(label=f"{key} (n={len(members)})", source=members[0].source,
                              state={"global_step": max(m.global_step for m in members)})
        for table in ("train", "eval"):
            keys = {k for m in members for k in getattr(m, table)}
            for k in keys:
                getattr(combined, table)[k] = aggregate([getattr(m, table)[k] for m in members if k in getattr(m, table)])
        runtimes = [m.summary["train_runtime"] for m in members if "train_runtime" in m.summary]
        if runtimes:
            combined.summary["train_runtime"] = sum(runtimes) / len(runtimes)
        grouped.append(combined)
    return grouped
