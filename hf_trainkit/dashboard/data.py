"""What the dashboard sends, as pure functions: series since a cursor, min/max thinning to the screen's width, the
current-metrics line and the ETA. No I/O here (see `runs.py` for reading the run folders).

Every value that goes out is JSON a browser can parse: NaN and infinities become `null`.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter


STEP_KEYS = ("step", "epoch", "_time")
DEFAULT_POINTS = 1000  # about a screen's width in points, per series


def thin_indices(values: Sequence[float], points: int = DEFAULT_POINTS) -> list[int]:
    """Indices of `values` to draw at about `points` points without losing a spike: the first and the last, and in
    each of `points // 2` equal buckets the minimum and the maximum (and the first non-finite value, so a NaN or an
    infinity still shows as a gap). All indices when there are no more than `points` values. Sorted.

    Vectorised: 100,000 values take about a millisecond.
    """
    import numpy as np

    n = len(values)
    if n <= max(points, 2):
        return list(range(n))
    buckets = max(1, points // 2)
    size = -(-n // buckets)
    buckets = -(-n // size)
    y = np.full(buckets * size, np.nan)
    y[:n] = np.asarray(values, dtype=float)
    y = y.reshape(buckets, size)
    real = (np.arange(buckets * size) < n).reshape(buckets, size)
    finite = np.isfinite(y)
    base = np.arange(buckets) * size
    low = np.where(finite, y, np.inf).argmin(axis=1)
    high = np.where(finite, y, -np.inf).argmax(axis=1)
    has_finite = finite.any(axis=1)
    odd = ~finite & real
    has_odd = odd.any(axis=1)
    chosen = [base[has_finite] + low[has_finite], base[has_finite] + high[has_finite],
              base[has_odd] + odd.argmax(axis=1)[has_odd], np.array([0, n - 1])]
    return np.unique(np.concatenate(chosen)).astype(int).tolist()


def json_number(value) -> float | None:
    """`value` as something `JSON.parse` accepts: a finite number, else None."""
    if type(value) is bool or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


class Columns:
    """A run's log as compact columns: per entry its step, epoch and time (`x`, `e`, `t`: `array('d')`, NaN when
    missing), per metric key the entries that hold it and the values (`series[key] = (i, y)`: `array('q')`,
    `array('d')`). 100,000 entries of 30 keys take ~40 MB (Python lists of floats would take ~10 times more), and
    numpy reads them without a copy."""

    __slots__ = ("x", "e", "t", "series")

    def __init__(self):
        self.x, self.e, self.t = array("d"), array("d"), array("d")
        self.series: dict[str, tuple[array, array]] = {}

    def __len__(self):
        return len(self.x)

    def __contains__(self, key):
        return key in self.series

    def keys(self):
        return self.series.keys()

    def column(self, key: str, indices: Sequence[int] | None = None) -> dict[str, list]:
        """{"x", "e", "t", "y"} of `key` (at positions `indices` of its points), JSON-safe."""
        rows, values = self.series[key]
        if indices is None:
            indices = range(len(values))
        x, e, t = self.x, self.e, self.t
        return {"x": [json_number(x[rows[k]]) for k in indices], "e": [json_number(e[rows[k]]) for k in indices],
                "t": [json_number(t[rows[k]]) for k in indices], "y": [json_number(values[k]) for k in indices]}

    def values(self, key: str):
        """The values of `key` as a float numpy array (no copy)."""
        import numpy as np

        return np.frombuffer(self.series[key][1], dtype=float) if key in self.series else np.empty(0)

    def steps(self, key: str):
        import numpy as np

        if key not in self.series:
            return np.empty(0)
        return np.frombuffer(self.x, dtype=float)[np.frombuffer(self.series[key][0], dtype=np.int64)]


_NAN = float("nan")


def _axis(value) -> float:
    kind = type(value)
    if kind is float:
        return value
    if kind is int and -2 ** 53 < value < 2 ** 53:
        return float(value)
    return _NAN


def append_entries(columns: Columns, entries: Sequence[dict]) -> Columns:
    """Add log entries (`Trainer.log` dicts) to `columns`, in place, and return it. Non-numeric values are left
    out; step/epoch/time are axes, not metrics; the end-of-training summary (`train_runtime` ...) is no point of a
    curve (its entry still counts, so cursors are entry counts). Each entry is read once: a run of 100,000 logs is
    ingested once, then only what is new. Consecutive entries with the same keys (a run logs the same metrics at
    every step) are read as columns, the same result as entry by entry (`_append_rows`), several times faster."""
    entries = entries if isinstance(entries, list) else list(entries)
    if entries and set(map(type, entries)) == {dict}:
        signatures = map(tuple, entries)
    else:
        signatures = (tuple(entry) if type(entry) is dict else None for entry in entries)
    start = 0
    for keys, group in groupby(signatures):
        end = start + len(list(group))
        if not keys or end - start < _COLUMNS_FROM:
            _append_rows(columns, entries, start, end)
        else:
            _append_columns(columns, entries[start:end], keys)
        start = end
    return columns


_COLUMNS_FROM = 8  # entries in a row with the same keys read as columns


def _append_rows(columns: Columns, entries: Sequence[dict], start: int, end: int):
    """`entries[start:end]` one by one (the reference reading)."""
    x, e, t, series = columns.x, columns.e, columns.t, columns.series
    index = len(x)
    for position in range(start, end):
        entry = entries[position]
        if type(entry) is not dict:
            entry = {}
        step = entry.get("step")
        x.append(_axis(step) if step is not None else float(index))
        e.append(_axis(entry.get("epoch")))
        t.append(_axis(entry.get("_time")))
        if "train_runtime" not in entry:
            for key, value in entry.items():
                kind = type(value)
                if (kind is not float and kind is not int) or key in STEP_KEYS:
                    continue
                column = series.get(key)
                if column is None:
                    column = series[key] = (array("q"), array("d"))
                column[0].append(index)
                column[1].append(_value(value))
        index += 1


def _value(value) -> float:
    """A metric's value as a float: an integer beyond 2**53 as an infinity of its sign."""
    return value if type(value) is float else _axis(value) if -2 ** 53 < value < 2 ** 53 else (
        math.inf if value > 0 else -math.inf)


def _plain(column) -> bool:
    """Every value a float, or every value an int below 2**53 in size (what an array('d') takes as is)."""
    types = set(map(type, column))
    return types == {float} or (types == {int} and max(map(abs, column)) < 2 ** 53)


def _append_columns(columns: Columns, entries: list, keys: tuple):
    """Entries that all have `keys` (in that order), read column by column: what `_append_rows` makes of them."""
    x, series = columns.x, columns.series
    first, count = len(x), len(entries)
    values = list(zip(*map(itemgetter(*keys), entries))) if len(keys) > 1 else [[e[keys[0]] for e in entries]]
    by_key = dict(zip(keys, values))
    steps = by_key.get("step")
    if steps is None:
        x.extend(map(float, range(first, first + count)))
    elif _plain(steps):
        x.extend(steps)
    else:
        x.extend([_axis(s) if s is not None else float(first + i) for i, s in enumerate(steps)])
    for name, axis in (("epoch", columns.e), ("_time", columns.t)):
        column = by_key.get(name)
        if column is None:
            axis.extend(array("d", [_NAN]) * count)
        else:
            axis.extend(column if _plain(column) else [_axis(v) for v in column])
    if "train_runtime" in by_key:
        return
    found = []  # (first entry holding a number, position, key, rows, values)
    for position, (key, column) in enumerate(zip(keys, values)):
        if key in STEP_KEYS:
            continue
        if _plain(column):
            found.append((0, position, key, range(first, first + count), column))
            continue
        rows = [i for i, v in enumerate(column) if type(v) is float or type(v) is int]
        if rows:
            found.append((rows[0], position, key, [first + i for i in rows], [_value(column[i]) for i in rows]))
    found.sort(key=itemgetter(0, 1))  # series created in the order entry by entry reading meets them
    for _, _, key, rows, column in found:
        target = series.get(key)
        if target is None:
            target = series[key] = (array("q"), array("d"))
        target[0].extend(rows)
        target[1].extend(column)


def series_from_entries(entries: Sequence[dict]) -> Columns:
    """The columns of `entries` (see `append_entries`)."""
    return append_entries(Columns(), entries)


def since_cursor(columns: Columns, cursor: int | None, generation: int, client_generation: int | None,
                 points: int = DEFAULT_POINTS) -> dict:
    """What a client holding the first `cursor` entries of generation `client_generation` needs: only the points of
    the entries after its cursor (`"reset": False`); or, for a new client, another generation (the log was set
    aside on a resume) or more new entries than `points` (a tab hidden for a long time), every series thinned to
    about `points` points (`"reset": True`, see `thin_indices`).

    Returns:
        {"generation", "cursor" (send it back next time), "reset", "series": key -> {"x", "e", "t", "y"}}.
    """
    total = len(columns)
    fresh = (cursor is None or client_generation != generation or not 0 <= cursor <= total
             or total - cursor > points)
    out = {}
    for key, (rows, values) in columns.series.items():
        if fresh:
            indices = thin_indices(columns.values(key), points)
        else:
            indices = range(bisect_left(rows, cursor), len(rows))
            if not indices:
                continue
        out[key] = columns.column(key, indices)
    return {"generation": generation, "cursor": total, "reset": fresh, "series": out}


def primary_metric(keys) -> tuple[str, str] | None:
    """(key, mode) of what a run is judged by: the reward for RL runs (their loss is ~0 by construction), else the
    loss."""
    keys = set(keys.keys() if hasattr(keys, "keys") else keys)
    if "reward" in keys:
        return "reward", "max"
    rewards = sorted(k for k in keys if k.startswith("rewards/") and k.endswith("/mean"))
    if rewards:
        return rewards[0], "max"
    if "loss" in keys:
        return "loss", "min"
    return None


def _finite(columns: Columns, key: str):
    import numpy as np

    values = columns.values(key)
    return values[np.isfinite(values)]


def metrics_line(columns: Columns, max_steps: int | None = None) -> dict:
    """The current-metrics line of a run, from its columns:
    `Step 120/500 | Epoch 0.24 | Reward: 0.812 | Loss: 0.001 | Eval loss: 0.35 | Gap: +0.03 | Improvement: +0.004 |
    Best reward: 0.83 ✓` (the gap is eval loss minus train loss; the improvement is the change since the previous
    log; ✓ when the last value is the best so far).

    Returns:
        {"text", "step", "max_steps", "epoch", "metric", "mode", "value", "best", "is_best", ...}, JSON-safe.
    """
    steps = [json_number(columns.x[-1])] if len(columns) else []
    epochs = [e for e in (json_number(v) for v in columns.e[-50:]) if e is not None]
    step = int(steps[0]) if steps and steps[0] is not None else 0
    line = {"step": step, "max_steps": max_steps, "epoch": epochs[-1] if epochs else None}
    parts = [f"Step {step}/{max_steps}" if max_steps else f"Step {step}"]
    if line["epoch"] is not None:
        parts.append(f"Epoch {line['epoch']:.2f}")
    chosen = primary_metric(columns)
    values = _finite(columns, chosen[0]) if chosen else []
    if len(values):
        key, mode = chosen
        value = float(values[-1])
        best = float(values.max() if mode == "max" else values.min())
        line.update(metric=key, mode=mode, value=value, best=best, is_best=value == best,
                    improvement=float(values[-1] - values[-2]) if len(values) > 1 else None)
        parts.append(f"{key[:1].upper()}{key[1:]}: {value:.4g}")
        train = _finite(columns, "loss")
        if len(train) and key != "loss":
            parts.append(f"Loss: {float(train[-1]):.4g}")
        evals = _finite(columns, "eval_loss")
        if len(evals):
            line["eval_loss"] = float(evals[-1])
            parts.append(f"Eval loss: {line['eval_loss']:.4g}")
            if len(train):
                line["gap"] = float(evals[-1] - train[-1])
                parts.append(f"Gap: {line['gap']:+.4g}")
        if line["improvement"] is not None:
            parts.append(f"Improvement: {line['improvement']:+.4g}")
        parts.append(f"Best {key}: {best:.4g}" + (" ✓" if line["is_best"] else ""))
    line["text"] = " | ".join(parts)
    return {k: (json_number(v) if isinstance(v, float) else v) for k, v in line.items()}


def progress(steps: Sequence[float], times: Sequence[float | None], max_steps: int | None,
             window: int = 50) -> dict:
    """Fraction done and the ETA from the last `window` logs' pace (seconds per step)."""
    pairs = [(s, t) for s, t in zip(steps, times) if json_number(s) is not None and json_number(t) is not None]
    step = pairs[-1][0] if pairs else (json_number(steps[-1]) if len(steps) else None) or 0
    out = {"step": step, "max_steps": max_steps, "fraction": None, "seconds_per_step": None, "eta_seconds": None}
    if max_steps:
        out["fraction"] = min(1.0, max(0.0, step / max_steps))
    recent = pairs[-window:]
    if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
        pace = (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
        out["seconds_per_step"] = pace
        if max_steps:
            out["eta_seconds"] = max(0.0, (max_steps - step) * pace)
    return out


AXES = ("x", "e", "t")


def window(columns: Columns, key: str, axis: str, low: float, high: float, points: int = DEFAULT_POINTS
           ) -> dict[str, list]:
    """The points of `key` whose `axis` value ("x" step, "e" epoch, "t" time) lies in [`low`, `high`], plus the one
    just outside each end (so the line reaches the plot's edges), thinned to about `points` (see `thin_indices`):
    what a zoomed plot shows in full detail."""
    import numpy as np

    if key not in columns.series or axis not in AXES:
        return {"x": [], "e": [], "t": [], "y": []}
    rows = np.frombuffer(columns.series[key][0], dtype=np.int64)
    where = np.frombuffer(getattr(columns, axis), dtype=float)[rows]
    inside = np.flatnonzero((where >= low) & (where <= high))
    if len(inside):
        first, last = max(int(inside[0]) - 1, 0), min(int(inside[-1]) + 1, len(rows) - 1)
    else:  # nothing inside: the two points around the window, if any
        after = int(np.searchsorted(where, high, side="right")) if np.all(np.diff(where) >= 0) else len(rows)
        first, last = max(after - 1, 0), min(after, len(rows) - 1)
    values = columns.values(key)[first:last + 1]
    return columns.column(key, [first + i for i in thin_indices(values, points)])
