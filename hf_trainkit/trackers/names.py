"""Pure functions shared by every tracker reader: tracker metric names -> trainer_state.json names, and a tracker's
rows -> `log_history` entries (the shape `monitor.load.parse_state` reads).

transformers' integrations (`rewrite_logs`: TensorBoard, W&B, Trackio, MLflow) and our `WandbEveryNCallback` write
`loss` as `train/loss`, `eval_loss` as `eval/loss`, `test_loss` as `test/loss`, and the step as
`train/global_step`; this undoes that, so that a run reads the same whichever tracker wrote it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# The step metric transformers' integrations log beside every record (W&B and Trackio count their own steps).
STEP_KEYS = ("train/global_step", "global_step")
# The tracker's own bookkeeping: `_timestamp` is the wall time; `_step`/`_runtime` are W&B's counters.
TIME_KEYS = ("_timestamp", "_time")
TRACKER_KEYS = ("_step", "_runtime", "_wall_time", "timestamp", "step")


def canonical_key(name: str) -> str:
    """A tracker's metric name as trainer_state.json has it: ``train/loss`` -> ``loss``, ``train/epoch`` ->
    ``epoch``, ``eval/loss`` -> ``eval_loss``, ``test/acc`` -> ``test_acc``; anything else (``psr/kept_ratio``,
    ``rewards/f/mean``) is kept.

    Example:
        >>> [canonical_key(k) for k in ("train/loss", "eval/loss", "train/rewards/f/mean", "nsr/kept_ratio")]
        ['loss', 'eval_loss', 'rewards/f/mean', 'nsr/kept_ratio']
    """
    if name.startswith("train/"):
        return name[len("train/"):]
    if name.startswith("eval/"):
        return f"eval_{name[len('eval/'):]}"
    if name.startswith("test/"):
        return f"test_{name[len('test/'):]}"
    return name


class KeyMap:
    """`canonical_key`, remembered per name (a run has a few dozen names and millions of values), recording which
    names it changed (`renamed`) so that the mapping can be said once."""

    def __init__(self):
        self._cache: dict[str, str] = {}
        self.renamed: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        mapped = self._cache.get(name)
        if mapped is None:
            mapped = self._cache[name] = canonical_key(name)
            if mapped != name:
                self.renamed[name] = mapped
        return mapped


def _is_number(value) -> bool:
    return (type(value) is float or type(value) is int) and type(value) is not bool


def rows_to_entries(rows: Iterable[dict], keys: KeyMap, *, step_key: str | None = None,
                    time_key: str | None = None) -> list[dict]:
    """Tracker rows (one dict of names -> values per record, in the order they were written) as `log_history`
    entries: names mapped by `keys`, the step taken from the step metric (`train/global_step`, else `step_key`,
    else the previous entry's step), the wall time kept as `_time`, non-numeric values and tracker bookkeeping left
    out. A row without a step metric in a run that has one (TRL's profiling records in W&B) takes the step of the
    record before it."""
    entries = []
    step = 0
    for row in rows:
        entry = {}
        found = None
        for name in STEP_KEYS:
            value = row.get(name)
            if _is_number(value):
                found = value
                break
        if found is None and step_key is not None and _is_number(row.get(step_key)):
            found = row[step_key]
        if found is not None and math.isfinite(found):
            step = int(found)
        entry["step"] = step
        for name in ((time_key,) if time_key else TIME_KEYS):
            value = row.get(name)
            if _is_number(value):
                entry["_time"] = float(value)
                break
        for name, value in row.items():
            if name in STEP_KEYS or name in TIME_KEYS or name in TRACKER_KEYS or name == step_key:
                continue
            if _is_number(value):
                entry[keys(name)] = value
        if len(entry) > 1 + ("_time" in entry):
            entries.append(entry)
    return entries


def resumed(entries: list[dict]) -> list[dict]:
    """The history a resumed run's `trainer_state.json` holds: where the step goes back (a segment that started again
    from an earlier checkpoint), the earlier entries from that step on are dropped, as the Trainer drops them (and as
    TensorBoard purges orphaned events on a restart). Entries are in the order they were written."""
    kept: list[dict] = []
    last = -math.inf
    for entry in entries:
        step = entry["step"]
        if step < last:
            while kept and kept[-1]["step"] >= step:
                kept.pop()
        kept.append(entry)
        last = step
    return kept


def describe_renames(renamed: dict[str, str], limit: int = 6) -> str:
    """``train/loss → loss, eval/loss → eval_loss, ... (and 4 more)``: the mapping in one line."""
    first = ("train/loss", "train/reward", "eval/loss", "train/learning_rate", "train/grad_norm")
    pairs = sorted(renamed.items(), key=lambda item: (first.index(item[0]) if item[0] in first else len(first),
                                                      item[0]))
    shown = ", ".join(f"{old} → {new}" for old, new in pairs[:limit])
    return shown + (f" (and {len(pairs) - limit} more)" if len(pairs) > limit else "")
