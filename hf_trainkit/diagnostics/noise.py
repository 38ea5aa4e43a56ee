"""How far a logged curve moves by chance, estimated from the curve itself, and the tests that call a change real
only when it is larger than that.

A logged training metric is a level that moves slowly (what training does) plus noise that is new at every log (one
batch's luck: an RL reward averaged over 16 right/wrong completions moves by ±0.1 from log to log by chance alone).
Successive differences cancel the level and keep the noise, so the noise's variance is half their mean square (the
von Neumann estimator); it needs no model of the trend and no knowledge of the batch size. The level over a window of
`w` logs is their mean, with standard error sigma / sqrt(w).

numpy only (no torch, no scipy): the monitor runs on machines without the training stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


# One-sided error rate of every decision that calls a change real. Searches over many windows (the best level of a
# curve) share it out Bonferroni-style, so a curve of pure noise is called "changed" about once in a hundred.
ALPHA = 0.01
# Intervals printed to the user: 95 %, two-sided.
Z_REPORT = NormalDist().inv_cdf(0.975)
# Share of the largest successive differences left out of the noise estimate: a spike makes two of them.
_TRIM = 0.01
# Variance a normal noise keeps when its top 1 % of |differences| are cut (E[X^2; |X| < 2.576] / 0.99): undone.
_TRIM_KEPT = 0.9248
# Pseudo-differences of the whole curve's noise that each window's own estimate is pulled towards, so a window of a
# few quantised rewards (all 0: a local variance of 0) is not taken as noiseless.
_SHRINK = 10


def z_for(alpha: float = ALPHA, tests: float = 1) -> float:
    """One-sided normal quantile for error rate `alpha` shared over `tests` comparisons (Bonferroni)."""
    return NormalDist().inv_cdf(1 - alpha / max(1.0, tests))


def noise_sd(values) -> float:
    """Per-log noise (standard deviation) of a curve from its successive differences, the largest 1 % left out.

    0.0 for fewer than 3 values or a constant curve.
    """
    import numpy as np

    y = np.asarray(values, dtype=float)
    y = y[np.isfinite(y)]
    if len(y) < 3:
        return 0.0
    squares = np.sort(np.diff(y) ** 2)
    keep = len(squares) - int(_TRIM * len(squares))
    variance = float(squares[:keep].mean()) / 2
    if keep < len(squares):
        variance /= _TRIM_KEPT
    return math.sqrt(variance)


def window_length(points: int) -> int:
    """Logs per level window: a tenth of the curve, at least 5 (fewer points than that carry no trend)."""
    return max(5, points // 10)


@dataclass
class Levels:
    """The mean of every window of `width` consecutive logs (window i covers logs i .. i + width - 1) and its
    standard error, from the window's own successive differences pulled towards the whole curve's noise."""

    width: int
    means: "np.ndarray"
    errors: "np.ndarray"

    def __len__(self) -> int:
        return len(self.means)


def rolling_levels(y, width: int, sigma: float) -> Levels:
    """Every window's level and standard error in O(n) (cumulative sums), for curves of any length."""
    import numpy as np

    y = np.asarray(y, dtype=float)
    width = min(width, len(y))
    sums = np.concatenate(([0.0], np.cumsum(y)))
    means = (sums[width:] - sums[:-width]) / width
    squares = np.concatenate(([0.0], np.cumsum(np.diff(y) ** 2)))
    # window i holds the width - 1 differences d_i .. d_{i+width-2}
    local = squares[width - 1:] - squares[: len(squares) - width + 1]
    variance = (local + 2 * _SHRINK * sigma**2) / (2 * (width - 1 + _SHRINK))
    return Levels(width, means, np.sqrt(variance / width))


def slope_and_error(x, y, sigma: float) -> tuple[float, float]:
    """Least-squares slope of y on x, and its standard error for independent noise of `sigma` per log."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    spread = float(((x - x.mean()) ** 2).sum())
    if len(x) < 3 or spread <= 0:
        return 0.0, math.inf
    slope = float(((x - x.mean()) * (y - y.mean())).sum()) / spread
    return slope, sigma / math.sqrt(spread)
