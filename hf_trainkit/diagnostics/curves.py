"""Curve primitives on (steps, values): the EMA the plots draw, non-finite values and spikes.

No torch: plain floats in, numpy only inside, so the monitor runs on a laptop without the training stack.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .words import ADVICE

# Robust z-score (median/MAD over the trailing window) above which a point is a spike.
SPIKE_Z = 6.0
SPIKE_WINDOW = 20


def is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average; non-finite values pass through unsmoothed.

    ``weight`` is the smoothing slider (0 = raw, 0.99 = very smooth). Debiasing divides by ``1 - weight**n`` (n
    finite points so far) so the first points are not pulled towards 0. Vectorised in blocks, so a 100k-point
    history takes milliseconds: inside a block, s_j = w^(j+1) s_prev + (1-w) w^j cumsum_k(w^-k x_k).
    """
    import numpy as np

    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight={weight!r} must be in [0, 1).")
    _, y, finite = _as_arrays(None, values)
    x = y[finite]
    smoothed = np.empty(len(x))
    if weight == 0:
        smoothed[:] = x
    elif len(x):
        # Block length such that w^-block stays far from overflow (<= 1e100).
        block = int(max(1, min(4096, 100 / -math.log10(weight))))
        powers = weight ** np.arange(block + 1, dtype=float)
        inverse = 1.0 / powers[:block]
        last = 0.0
        with np.errstate(over="ignore", invalid="ignore"):  # values near 1e308 smooth to inf, as they are
            for start in range(0, len(x), block):
                chunk = x[start : start + block]
                n = len(chunk)
                raw = powers[1 : n + 1] * last + (1 - weight) * powers[:n] * np.cumsum(chunk * inverse[:n])
                smoothed[start : start + n] = raw
                last = raw[-1]
            smoothed /= 1 - weight ** np.arange(1, len(x) + 1, dtype=float)
    if bool(finite.all()):
        return smoothed.tolist()
    out = list(values)
    for index, value in zip(np.flatnonzero(finite).tolist(), smoothed.tolist()):
        out[index] = value
    return out


def spike_message(name: str, step: float, value: float, median: float, z: float) -> str:
    return f"{name} spike at step {step:g}: {value:.4g} vs median {median:.4g} (robust z={z:.1f})"


def _difference_scale(squares) -> float:
    """The noise of a stretch of logs from its squared successive differences, the two largest left out (one
    spike makes two): sqrt(mean / 2). Batch means of 0/1 rewards, whose median absolute deviation is often 0
    (half the batches hit the same value), still get their true spread."""
    kept = sorted(squares)[: max(1, len(squares) - 2)] if len(squares) >= 10 else list(squares)
    return math.sqrt(sum(kept) / len(kept) / 2) if kept else 0.0


def robust_z(recent: Sequence[float], value: float, floor: float = 1e-12) -> tuple[float, float]:
    """(z, median) of `value` against `recent`: (value - median) / max(1.4826 * MAD, difference scale, floor)."""
    median = statistics.median(recent)
    mad = statistics.median(abs(v - median) for v in recent) * 1.4826
    spread = _difference_scale([(b - a) ** 2 for a, b in zip(recent, recent[1:])])
    return (value - median) / max(mad, spread, floor), median


@dataclass
class Finding:
    """One problem in a curve: what (``kind``), where (``step``), the numbers behind it, and what to try."""

    kind: str
    step: float | None
    message: str
    advice: str = ""
    numbers: dict = field(default_factory=dict)


def _as_arrays(steps: Sequence[float] | None, values: Sequence[float]):
    """(steps, values, finite mask) as numpy arrays (steps None if not given); non-numbers become NaN."""
    import numpy as np

    try:
        y = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        y = np.asarray([v if is_finite(v) else math.nan for v in values], dtype=float)
    return (None if steps is None else np.asarray(steps, dtype=float)), y, np.isfinite(y)


def find_non_finite(steps: Sequence[float], values: Sequence[float], name: str = "value") -> list[Finding]:
    """One finding at the first non-finite value (NaN, ±inf, None), with the count."""
    x, _, finite = _as_arrays(steps, values)
    bad = (~finite).nonzero()[0]
    if not len(bad):
        return []
    first = int(bad[0])
    step, value = float(x[first]), values[first]
    return [Finding("non_finite", step, f"{name} is {value} at step {step:g} ({len(bad)} non-finite of "
                    f"{len(values)})", ADVICE["diverged"], {"count": int(len(bad))})]


def spike_scores(x, window: int = SPIKE_WINDOW, z_threshold: float = SPIKE_Z):
    """(z, medians) for each value of the finite array `x` against the trailing `window` values before it: the
    distance from their median in robust standard deviations (their MAD, or their successive differences when
    that is larger: batch means of 0/1 rewards, whose MAD is often 0). z is 0 for the first values, which have too
    short a history.

    The scale never falls below 1% of the curve's whole range, so a loss resting near 0 (MAD ~ 0) does not turn
    every wiggle into a spike; nor, for a curve of few distinct values (an RL reward averaging 0/1 rewards over a
    batch of n: multiples of 1/n), below two of its steps, so a saturated reward's 1.0 -> 0.9375 is no spike.

    Only |z| above `z_threshold` matters to a caller, so z (and its median) is computed exactly only where it can
    be: the distance from the window's median is at most the distance from its mean plus its standard deviation
    (|mean - median| <= sd), which bounds z from above in O(n); elsewhere z is 0. Histories of 100k+ points take
    milliseconds.
    """
    import numpy as np

    minimum = max(5, window // 2)
    z, medians = np.zeros(len(x)), np.full(len(x), np.nan)
    if len(x) <= minimum:
        return z, medians
    floor = max(0.01 * float(x.max() - x.min()), 1e-12)
    distinct = np.unique(x)
    if 1 < len(distinct) <= max(2, len(x) // 4):  # quantised values: batch means of discrete rewards
        floor = max(floor, 2.0 * float(np.diff(distinct).min()))
    # Points minimum..window-1 see a shorter history: exact, one by one.
    for i in range(minimum, min(window, len(x))):
        recent = x[:i]
        medians[i] = np.median(recent)
        mad = np.median(np.abs(recent - medians[i]))
        scale = max(mad * 1.4826, _difference_scale((np.diff(recent) ** 2).tolist()), floor)
        z[i] = (x[i] - medians[i]) / scale
    if len(x) <= window:
        return z, medians
    # The rest see a full window (a strided view, no copy).
    windows = np.lib.stride_tricks.sliding_window_view(x[:-1], window)
    squares = np.sort(np.diff(windows, axis=1) ** 2, axis=1)  # as _difference_scale: the two largest left out
    squares = squares[:, : squares.shape[1] - 2] if squares.shape[1] >= 10 else squares
    spreads = np.maximum(np.sqrt(squares.mean(axis=1) / 2), floor)
    sums = np.concatenate(([0.0], np.cumsum(x)))
    square_sums = np.concatenate(([0.0], np.cumsum(x * x)))
    means = (sums[window:-1] - sums[: len(x) - window]) / window
    sds = np.sqrt(np.maximum((square_sums[window:-1] - square_sums[: len(x) - window]) / window - means**2, 0.0))
    rest = x[window:]
    bound = (np.abs(rest - means) + sds) * 1.001 + 1e-9 * (np.abs(rest) + 1)  # rounding slack: never too low
    candidates = np.flatnonzero(bound > z_threshold * spreads)
    if len(candidates):
        chosen = windows[candidates]
        middle = np.median(chosen, axis=1)
        mads = np.median(np.abs(chosen - middle[:, None]), axis=1)
        scale = np.maximum(mads * 1.4826, spreads[candidates])
        medians[window + candidates] = middle
        z[window + candidates] = (rest[candidates] - middle) / scale
    return z, medians


def spike_findings(steps, x, z, medians, name: str, mode: str, z_threshold: float = SPIKE_Z) -> list[Finding]:
    """The `spike_scores` beyond `z_threshold` the wrong way (up for ``mode="min"``, down for ``"max"``)."""
    import numpy as np

    sign = 1.0 if mode == "min" else -1.0
    return [
        Finding("spike", float(steps[i]), spike_message(name, float(steps[i]), float(x[i]), float(medians[i]),
                                                        float(z[i])), ADVICE["spike"], {"z": float(z[i])})
        for i in np.flatnonzero(sign * z > z_threshold)
    ]


def find_spikes(steps: Sequence[float], values: Sequence[float], name: str = "value", *, mode: str = "min",
                window: int = SPIKE_WINDOW, z_threshold: float = SPIKE_Z) -> list[Finding]:
    """Points that jump the wrong way (up for ``mode="min"``, down for ``"max"``) by more than `z_threshold`
    robust standard deviations of the trailing `window` points before them (`spike_scores`)."""
    all_steps, all_values, finite = _as_arrays(steps, values)
    step_of, x = all_steps[finite], all_values[finite]
    z, medians = spike_scores(x, window, z_threshold)
    return spike_findings(step_of, x, z, medians, name, mode, z_threshold)
