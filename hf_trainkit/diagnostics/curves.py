"""Curve diagnostics: pure functions on (steps, values), shared by `monitor` and the live callbacks.

No torch: plain floats in, numpy only inside, so the monitor runs on a laptop without the training stack. The words and
thresholds here are the ones every caller prints, so a finding reads the same live and post hoc.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..metric_rules import gain as metric_gain
from ..metric_rules import is_improvement


VERDICTS = ("converged", "still improving", "plateau", "overfitting", "unstable", "collapsed", "diverged", "too short")
# Relative change of the smoothed curve over its last quarter above which a run is "still improving".
IMPROVING_FRACTION = 0.02
# Share of the first-to-best improvement a run must have made to be called "converged" rather than "plateau".
CONVERGED_FRACTION = 0.10
# Robust z-score (median/MAD over the trailing window) above which a point is a spike.
SPIKE_Z = 6.0
SPIKE_WINDOW = 20
# A smoothed curve that gave back more than this share of its gain (first -> best) has collapsed.
COLLAPSE_FRACTION = 0.5
# Eval worse than its best by this share of the train improvement, while train still improves: overfitting.
OVERFIT_FRACTION = 0.05
ADVICE = {
    "converged": "Training has flattened after improving: more steps will not help much; compare checkpoints or "
    "change the data or model to go further.",
    "still improving": "The metric is still moving the right way: train longer (raise --max-steps or "
    "--num-train-epochs).",
    "plateau": "The metric stopped improving early: raise the learning rate, check the data and reward, or for RL "
    "raise --num-generations / lower --reward-threshold.",
    "overfitting": "Eval is getting worse while train improves: stop earlier (the best checkpoint is at the eval "
    "minimum), add data, regularise (weight decay, dropout, LoRA rank) or lower the learning rate.",
    "unstable": "The curve has spikes: lower the learning rate, enable or tighten gradient clipping "
    "(--max-grad-norm), or raise the batch size.",
    "collapsed": "The metric improved, then lost most of that gain: lower the learning rate (or for RL raise beta, "
    "the KL weight), and resume from the checkpoint at its best (--checkpoint-metric with --save-top-k keeps it).",
    "diverged": "The run blew up (non-finite values or far worse than at the start): lower the learning rate, "
    "check for bad data, and resume from a checkpoint before the divergence.",
    "too short": "Too few logged points to judge: log more often (--logging-steps) or train longer.",
}


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


def robust_z(recent: Sequence[float], value: float, floor: float = 1e-12) -> tuple[float, float]:
    """(z, median) of `value` against `recent`: (value - median) / max(1.4826 * MAD, floor)."""
    median = statistics.median(recent)
    mad = statistics.median(abs(v - median) for v in recent) * 1.4826
    return (value - median) / max(mad, floor), median


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


def find_spikes(steps: Sequence[float], values: Sequence[float], name: str = "value", *, mode: str = "min",
                window: int = SPIKE_WINDOW, z_threshold: float = SPIKE_Z) -> list[Finding]:
    """Points that jump the wrong way (up for ``mode="min"``, down for ``"max"``) by more than `z_threshold`
    robust standard deviations (median/MAD) of the trailing `window` points before them.

    The scale never falls below 1% of the curve's whole range, so a loss resting near 0 (MAD ~ 0) does not turn
    every wiggle into a spike; nor, for a curve of few distinct values (an RL reward averaging 0/1 rewards over a
    batch of n: multiples of 1/n), below two of its steps, so a saturated reward's 1.0 -> 0.9375 is no spike.
    Vectorised: histories of 100k+ points take milliseconds.
    """
    import numpy as np

    all_steps, all_values, finite = _as_arrays(steps, values)
    step_of, x = all_steps[finite], all_values[finite]
    minimum = max(5, window // 2)
    if len(x) <= minimum:
        return []
    floor = max(0.01 * float(x.max() - x.min()), 1e-12)
    distinct = np.unique(x)
    if 1 < len(distinct) <= max(2, len(x) // 4):  # quantised values: batch means of discrete rewards
        floor = max(floor, 2.0 * float(np.diff(distinct).min()))
    medians = np.empty(len(x))
    mads = np.empty(len(x))
    # Points minimum..window-1 see a shorter history; the rest a full window (a strided view, no copy).
    for i in range(minimum, min(window, len(x))):
        recent = x[:i]
        medians[i] = np.median(recent)
        mads[i] = np.median(np.abs(recent - medians[i]))
    if len(x) > window:
        windows = np.lib.stride_tricks.sliding_window_view(x[:-1], window)
        medians[window:] = np.median(windows, axis=1)
        mads[window:] = np.median(np.abs(windows - medians[window:, None]), axis=1)
    z = np.zeros(len(x))
    z[minimum:] = (x[minimum:] - medians[minimum:]) / np.maximum(mads[minimum:] * 1.4826, floor)
    sign = 1.0 if mode == "min" else -1.0
    return [
        Finding("spike", float(step_of[i]), spike_message(name, float(step_of[i]), float(x[i]), float(medians[i]),
                                                          float(z[i])), ADVICE["unstable"], {"z": float(z[i])})
        for i in np.flatnonzero(sign * z > z_threshold)
    ]


def steps_since_improvement(values: Sequence[float], mode: str = "min", min_delta: float = 0.0,
                            relative: bool = True) -> int:
    """Number of points since the last one that beat the best so far by more than `min_delta`.

    With ``relative=True`` the threshold is ``min_delta * |best|``, as for noisy losses of any scale.
    """
    best, since = None, 0
    for value in values:
        if not is_finite(value):
            since += 1
            continue
        if is_improvement(value, best, mode, min_delta, relative):
            best, since = value, 0
        else:
            since += 1
    return since


@dataclass
class Diagnosis:
    """The verdict on one curve (one of `VERDICTS`), why, and what to try."""

    verdict: str
    reason: str
    advice: str
    numbers: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


def diagnose(
    steps: Sequence[float],
    values: Sequence[float],
    *,
    mode: str = "min",
    name: str = "loss",
    eval_steps: Sequence[float] = (),
    eval_values: Sequence[float] = (),
    smoothing: float = 0.6,
) -> Diagnosis:
    """Classify a training curve: converged, still improving, plateau, overfitting, unstable, diverged, too short.

    Args:
        steps, values: the monitored metric (train loss, or the reward for RL runs).
        mode: ``"min"`` when lower is better (loss), ``"max"`` when higher is better (reward).
        name: the metric's name, used in the messages.
        eval_steps, eval_values: the eval loss, if any (overfitting needs it; always ``"min"``).
        smoothing: TensorBoard EMA weight applied before judging trends.

    Returns:
        [`Diagnosis`] whose `numbers` hold the figures behind the verdict.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r} must be 'min' or 'max'.")
    findings = find_non_finite(steps, values, name)
    all_steps, all_values, finite = _as_arrays(steps, values)
    finite_steps, finite_values = all_steps[finite].tolist(), all_values[finite].tolist()
    if len(finite_values) < 4:
        return Diagnosis("too short", f"only {len(finite_values)} finite {name} values", ADVICE["too short"],
                         {"points": len(finite_values)}, findings)
    smooth = ema(finite_values, smoothing)
    first, final = smooth[0], smooth[-1]
    best = min(smooth) if mode == "min" else max(smooth)
    quarter = smooth[max(0, (3 * len(smooth)) // 4 - 1)]
    scale = max(abs(metric_gain(first, best, mode)), abs(first) * 1e-3, 1e-12)
    recent_change = metric_gain(quarter, final, mode) / scale
    total_change = metric_gain(first, best, mode) / max(abs(first), abs(best), 1e-12)
    numbers = {
        "first": first, "final": final, "best": best, "points": len(finite_values),
        "recent_change_of_total": recent_change, "total_change_relative": total_change,
    }
    # The live plateau rule (TrainingDiagnosticsCallback): logs since the smoothed curve last gained 1%.
    numbers["logs_since_improvement"] = steps_since_improvement(smooth, mode, min_delta=0.01)
    spikes = find_spikes(finite_steps, finite_values, name, mode=mode)
    findings.extend(spikes)
    numbers["spikes"] = len(spikes)

    tail_non_finite = values and not is_finite(values[-1])
    worse_than_start = metric_gain(first, final, mode) < -0.5 * max(abs(first), 1e-12)
    if tail_non_finite or worse_than_start:
        reason = (f"last {name} is {values[-1]}" if tail_non_finite
                  else f"smoothed {name} went from {first:.4g} to {final:.4g}, far worse than at the start")
        return Diagnosis("diverged", reason, ADVICE["diverged"], numbers, findings)

    gain = metric_gain(first, best, mode)
    given_back = metric_gain(final, best, mode)  # how far the end is from the best, the wrong way
    if gain > CONVERGED_FRACTION * max(abs(first), abs(best), 1e-12) and given_back > COLLAPSE_FRACTION * gain:
        best_step = finite_steps[smooth.index(best)]
        numbers.update(best_step=best_step, given_back_of_gain=given_back / gain)
        return Diagnosis(
            "collapsed",
            f"smoothed {name} reached {best:.4g} at step {best_step:g}, then fell back to {final:.4g}: "
            f"{given_back / gain:.0%} of its gain since the start ({first:.4g}) is lost",
            ADVICE["collapsed"], numbers, findings)

    eval_pairs = [(s, v) for s, v in zip(eval_steps, eval_values) if is_finite(v)]
    if len(eval_pairs) >= 3:
        eval_only = [v for _, v in eval_pairs]
        eval_best = min(eval_only)
        eval_best_step = eval_pairs[eval_only.index(eval_best)][0]
        gap = eval_only[-1] - eval_best
        numbers.update(eval_best=eval_best, eval_best_step=eval_best_step, eval_final=eval_only[-1])
        train_gain = metric_gain(first, final, mode)
        if gap > OVERFIT_FRACTION * max(abs(eval_best), 1e-12) and train_gain > 0:
            return Diagnosis(
                "overfitting",
                f"eval loss rose from its best {eval_best:.4g} (step {eval_best_step:g}) to {eval_only[-1]:.4g} "
                f"while train {name} kept improving",
                ADVICE["overfitting"], numbers, findings)

    if len(spikes) >= 3 or len(spikes) > 0.05 * len(finite_values):
        return Diagnosis("unstable", f"{len(spikes)} spikes in {len(finite_values)} points (robust z > {SPIKE_Z:g})",
                         ADVICE["unstable"], numbers, findings)
    if abs(total_change) <= CONVERGED_FRACTION:
        return Diagnosis("plateau",
                         f"smoothed {name} changed by only {final - first:+.4g} ({first:.4g} -> {final:.4g})",
                         ADVICE["plateau"], numbers, findings)
    if recent_change > IMPROVING_FRACTION:
        return Diagnosis(
            "still improving",
            f"smoothed {name} went from {first:.4g} to {final:.4g}; the last quarter alone brought "
            f"{recent_change:.0%} of that gain ({quarter:.4g} -> {final:.4g})",
            ADVICE["still improving"], numbers, findings)
    return Diagnosis(
        "converged",
        f"smoothed {name} went from {first:.4g} to {final:.4g} ({final - first:+.4g}) and the last quarter brought "
        f"less than {IMPROVING_FRACTION:.0%} of that change",
        ADVICE["converged"], numbers, findings)
