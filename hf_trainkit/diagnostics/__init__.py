"""Curve diagnostics: the one model of a run's trajectory (`trajectory.diagnose`), its noise (`noise`), the curve
primitives (`curves`: EMA, spikes, non-finite values) and the words every caller prints (`words`).

Pure functions, numpy only: shared by the live callbacks, early stopping, `monitor` and the dashboard.
"""

from .curves import (SPIKE_WINDOW, SPIKE_Z, Finding, ema, find_non_finite, find_spikes, is_finite,
                     robust_z, spike_message)
from .noise import noise_sd
from .trajectory import MIN_POINTS, Diagnosis, OnlineNoise, diagnose, new_bests
from .words import ADVICE, VERDICTS


__all__ = ["ADVICE", "MIN_POINTS", "SPIKE_WINDOW", "SPIKE_Z", "VERDICTS", "Diagnosis", "Finding", "OnlineNoise",
           "diagnose", "ema", "find_non_finite", "find_spikes", "is_finite", "new_bests", "noise_sd", "robust_z",
           "spike_message"]
