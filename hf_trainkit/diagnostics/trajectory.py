"""The one model of a run's trajectory: a verdict on a curve and the findings behind it, each change called only when
it is larger than the curve's own noise (`noise.py`). Every place that judges a curve calls `diagnose`: the live
callback (on the logs seen so far), `monitor`'s summary and report, the dashboard's headline; early stopping and
save-on-improvement use `OnlineNoise`, the same notion of a real improvement, one value at a time.

How a curve is read (``o`` turns "better" into "up": +1 for a reward, -1 for a loss):

- its level at the start, at the end and at its best are means of a tenth of its logs (`window_length`), each with
  a standard error from the noise;
- it *improved* when the end is above the start by more than 1.96 standard errors (the 95 % interval printed with
  it excludes zero);
- it is *still improving* when the slope over its last half is above zero by as much, that last half brought at
  least a tenth of the whole gain, and the end is above the best level reached before the last half (a recovery
  from a dip back to where it was is not an improvement); it has *levelled off* only when the end is above that
  earlier best by less than half of the gain (95 % upper bound): otherwise it may still be improving;
- it *fell from its best* when a window's level is below the best level before it by more than the noise allows
  over all the pairs of windows searched (Bonferroni over the pairs of the curve's independent windows); that is a *collapse* when it
  gave back at least half of what had been gained by then, and it has *recovered* once the level is back within
  the 95 % interval of that best;
- *overfitting*: the eval metric is worse than its best by more than its noise (from its second differences, which
  a curving eval does not inflate) while the train metric improved since that eval or held its level;
- *diverged*: the last value is not finite, or a loss ended worse than where it started, beyond its noise and by a
  tenth of its start.

Every difference is printed in the metric's units with its 95 % interval ("reward fell 0.21 ± 0.06 from its best
0.62 around step 83"), never as a percentage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .curves import SPIKE_Z, Finding, _as_arrays, find_non_finite, is_finite, spike_findings, spike_scores
from .noise import ALPHA, Z_REPORT, Levels, noise_sd, rolling_levels, slope_and_error, window_length, z_for
from .words import ADVICE, VERDICTS, amount, change, number

if TYPE_CHECKING:
    import numpy as np


# Fewer finite logs than this carry no trend: "too short", not enough evidence either way.
MIN_POINTS = 8
# Share of what had been gained that a fall from the best must give back to be a collapse (less is "past its best").
COLLAPSE_SHARE = 0.5
# Share of the whole gain the last half must bring for the run to be "still improving" rather than converged.
RECENT_SHARE = 0.1
# A run has levelled off when its end is above its best before the last half by less than this share of its gain
# (95 % upper bound); otherwise it may still be improving.
LEVELLED_SHARE = 0.5
Z_ONE_SIDED_95 = z_for(0.05)
# A loss that ends above its start beyond its noise and by this share of the start has diverged.
DIVERGED_SHARE = 0.1
# Spikes that make a curve "unstable": at least this many, or this share of its logs.
UNSTABLE_SPIKES, UNSTABLE_SHARE = 3, 0.05
__all__ = ["Diagnosis", "OnlineNoise", "diagnose", "new_bests", "MIN_POINTS", "VERDICTS"]


@dataclass
class Diagnosis:
    """The verdict on one curve (one of `VERDICTS`), why, and what to try; `findings` never contradict it."""

    verdict: str
    reason: str
    advice: str
    numbers: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


@dataclass
class _Curve:
    """A finite curve with its noise and window levels, oriented so that up is better."""

    x: "np.ndarray"
    y: "np.ndarray"
    orient: float
    sigma: float
    levels: Levels

    @classmethod
    def of(cls, x, y, mode: str) -> "_Curve":
        sigma = noise_sd(y)
        scale = float(abs(y).max()) if len(y) else 0.0
        sigma = max(sigma, 1e-9 * max(scale, 1e-3))  # a constant curve: differences of 0 still need a scale
        width = window_length(len(y))
        return cls(x, y, 1.0 if mode == "max" else -1.0, sigma, rolling_levels(y, width, sigma))

    @property
    def width(self) -> int:
        return self.levels.width

    def window_step(self, i: int) -> float:
        """The step at the middle of window i."""
        return float(self.x[min(i + self.width // 2, len(self.x) - 1)])

    def window_end(self, i: int) -> float:
        """The step at which window i's evidence is complete (its last log)."""
        return float(self.x[i + self.width - 1])

    def level_near(self, step: float) -> tuple[float, float]:
        """Level and standard error of the window that ends at the last log at or before `step`."""
        import numpy as np

        end = int(np.searchsorted(self.x, step, side="right"))
        i = min(max(end - self.width, 0), len(self.levels) - 1)
        return float(self.levels.means[i]), float(self.levels.errors[i])


def _falls(curve: _Curve, name: str, start: float) -> tuple[list[Finding], dict | None]:
    """Each stretch where the curve's level fell from its best by more than its noise, as findings (`collapse`,
    `dip` once recovered, `past best` for a smaller fall still going on); and the fall still open at the end."""
    import numpy as np

    levels, width, o = curve.levels, curve.width, curve.orient
    up = o * levels.means
    count = len(up)
    if count <= width:
        return [], None
    # The best level among windows that end before window i starts: no shared log with it.
    prefix = np.maximum.accumulate(up)
    positions = np.arange(count)
    prefix_at = np.maximum.accumulate(np.where(up >= prefix, positions, 0))
    best = np.full(count, -np.inf)
    best_at = np.zeros(count, dtype=int)
    best[width:], best_at[width:] = prefix[:-width], prefix_at[:-width]
    drop = best - up
    pair = np.sqrt(levels.errors[best_at] ** 2 + levels.errors ** 2)
    # A fall compares a best with a later window: every pair of the curve's independent windows (two per window
    # length) is searched, so the error rate is shared over them all.
    independent = 2 * len(curve.y) / width
    z_search = z_for(ALPHA, max(independent * (independent - 1) / 2, 1))
    gained = best - o * start
    material = drop >= COLLAPSE_SHARE * np.maximum(gained, 0.0)
    significant = drop > z_search * pair
    back = drop <= Z_REPORT * pair
    findings, open_fall, position = [], None, width
    while len(findings) < 50:
        starts = np.flatnonzero(significant[position:])
        if not len(starts):
            break
        first = position + int(starts[0])
        recovered = np.flatnonzero(back[first:])
        end = first + int(recovered[0]) if len(recovered) else count
        # A fall still open at the end is measured to the end (what the run has now); a recovered one at its worst.
        worst = count - 1 if end >= count else first + int(np.argmax(drop[first:end]))
        b = int(best_at[worst])
        best_level, level = o * float(up[b]), o * float(up[worst])
        error = float(pair[worst])
        collapse = bool(material[first:end].any())
        worst_step = curve.window_step(worst) if end < count else curve.window_end(worst)
        fall = {"best": best_level, "best_step": curve.window_step(b), "level": level,
                "drop": float(drop[worst]), "drop_se": error, "step": curve.window_end(first),
                "worst_step": worst_step, "gain": float(gained[worst]), "collapse": collapse,
                "recovered_step": curve.window_end(end) if end < count else None}
        what = (f"{name} {change(level - best_level)} {amount(fall['drop'], error)} from its best "
                f"{number(best_level)} around step {fall['best_step']:g} to {number(level)} "
                + (f"around step {worst_step:g}" if end < count else f"over the logs to step {worst_step:g}"))
        if collapse and fall["gain"] > 0:
            what += f", giving back at least half of its gain since the start ({fall['gain']:.3g})"
        if end < count:
            kind = "dip"
            what += f"; it recovered by step {fall['recovered_step']:g}"
            advice = ADVICE["dip"]
        else:
            kind = "collapse" if collapse else "past best"
            final_drop = float(drop[-1])
            if significant[-1]:
                what += ", and is still there at the end"
            else:
                what += f"; it is partly back: the fall is now within its noise ({amount(final_drop, error)})"
            fall["still_down"] = bool(significant[-1])
            advice = ADVICE["collapsed"] if kind == "collapse" and significant[-1] else ""
            open_fall = fall
        findings.append(Finding(kind, fall["step"], what, advice, fall))
        if end >= count:
            break
        position = end
    return findings, open_fall


def _isolated(x, spikes: list[Finding]) -> list[Finding]:
    """The spikes that are spikes: runs of at most two flagged logs that do not reach the end. A longer run, or one
    still going at the last log, is the level moving (a divergence, a collapse), which the levels judge."""
    import numpy as np

    if not spikes:
        return spikes
    positions = np.searchsorted(x, [f.step for f in spikes])
    kept, run = [], []
    for finding, position in zip(spikes, positions):
        if run and position != run[-1][1] + 1:
            kept.extend(f for f, _ in run) if len(run) <= 2 else None
            run = []
        run.append((finding, position))
    if run and len(run) <= 2 and run[-1][1] < len(x) - 1:
        kept.extend(f for f, _ in run)
    return kept


def _pending(x, flagged) -> set:
    """The last one or two logs when they are spikes either way (`flagged`): a spike or the start of a new level,
    which only the logs after them can tell. Left out of the levels until then, so one bad batch is not read as a
    collapse; three or more in a row are the level moving."""
    run = 0
    while run < min(3, len(flagged)) and flagged[len(flagged) - 1 - run]:
        run += 1
    return {float(s) for s in x[len(x) - run:]} if 1 <= run <= 2 else set()


def _eval_noise(values) -> float:
    """The noise of an eval curve: a few points that may curve (falling, then rising when it overfits), so from
    second differences (a straight trend cancels) when there are five or more, else from first differences."""
    import numpy as np

    y = np.asarray(values, dtype=float)
    if len(y) >= 5:
        return math.sqrt(float((np.diff(y, n=2) ** 2).mean()) / 6)
    return noise_sd(y)


def _overfitting(curve: _Curve, name: str, eval_steps, eval_values, eval_name: str, eval_mode: str):
    """The overfitting finding, or None: eval worse than its best beyond its noise while train improved since."""
    import numpy as np

    pairs = [(float(s), float(v)) for s, v in zip(eval_steps, eval_values) if is_finite(v) and is_finite(s)]
    if len(pairs) < 4:
        return None, {}
    ex, ey = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    eo = 1.0 if eval_mode == "max" else -1.0
    b = int(np.argmax(eo * ey))
    numbers = {"eval_best": float(ey[b]), "eval_best_step": float(ex[b]), "eval_final": float(ey[-1]),
               "eval_metric": eval_name}
    if b == len(ey) - 1:
        return None, numbers
    sigma = max(_eval_noise(ey), 1e-9 * max(float(abs(ey).max()), 1e-3))
    worse = eo * float(ey[b] - ey[-1])
    worse_se = sigma * math.sqrt(2)
    numbers.update(eval_worse_by=worse, eval_worse_se=worse_se)
    if worse <= z_for(ALPHA, len(ey)) * worse_se:
        return None, numbers
    then, then_se = curve.level_near(float(ex[b]))
    now, now_se = float(curve.levels.means[-1]), float(curve.levels.errors[-1])
    train_gain = curve.orient * (now - then)
    train_se = math.hypot(then_se, now_se)
    if train_gain < -z_for(ALPHA) * train_se:  # train got worse too: not overfitting (a collapse, a divergence)
        return None, numbers
    message = (f"{eval_name} {change(float(ey[-1] - ey[b]))} {amount(worse, worse_se)} from its best "
               f"{number(float(ey[b]))} at step {ex[b]:g} to {number(float(ey[-1]))} at step {ex[-1]:g}, while "
               f"train {name} {change(now - then)} {amount(train_gain, train_se)} since then")
    if abs(train_gain) <= z_for(ALPHA) * train_se:
        message = message.rsplit(", while", 1)[0] + f", while train {name} held its level"
    return Finding("overfitting", float(ex[-1]), message, ADVICE["overfitting"], numbers), numbers


def diagnose(
    steps: Sequence[float],
    values: Sequence[float],
    *,
    mode: str = "min",
    name: str = "loss",
    eval_steps: Sequence[float] = (),
    eval_values: Sequence[float] = (),
    eval_name: str = "eval_loss",
    eval_mode: str | None = None,
) -> Diagnosis:
    """Judge a training curve: one of `VERDICTS`, why (differences with their 95 % intervals), what to try, and the
    findings (spikes, non-finite values, falls from the best, overfitting) that agree with it.

    Args:
        steps, values: the monitored metric (train loss, or the reward for RL runs).
        mode: ``"min"`` when lower is better (loss), ``"max"`` when higher is better (reward).
        name: the metric's name, used in the messages.
        eval_steps, eval_values: an eval metric, if any (overfitting needs it).
        eval_name, eval_mode: its name and which way is better (default: from the name, as for `name`).

    Returns:
        [`Diagnosis`] whose `numbers` hold the figures behind the verdict: levels `first`, `final`, `best`
        (window means), `noise_sd` (per log), `window` (logs per level), `change` and `change_se`, ...
    """
    import numpy as np

    from ..metric_rules import default_mode

    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r} must be 'min' or 'max'.")
    eval_mode = eval_mode or default_mode(eval_name)
    findings = find_non_finite(steps, values, name)
    all_steps, all_values, finite = _as_arrays(steps, values)
    x, y = all_steps[finite], all_values[finite]
    if len(x) > 1 and np.any(np.diff(x) < 0):  # logs out of order (a resumed run's repeated steps): by step
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
    if len(y) < MIN_POINTS:
        plural = "s" * (len(y) != 1)
        return Diagnosis("too short", f"only {len(y)} finite {name} value{plural}: not enough evidence yet either way",
                         ADVICE["too short"], {"points": int(len(y))}, findings)
    logged = len(y)
    z, medians = spike_scores(y)
    spikes = _isolated(x, spike_findings(x, y, z, medians, name, mode))
    other_way = _isolated(x, spike_findings(x, y, z, medians, name, "max" if mode == "min" else "min"))
    # Levels are means: one batch far off the curve, either way, would move them. They are read without the spikes.
    outliers = {f.step for f in spikes + other_way} | _pending(x, np.abs(z) > SPIKE_Z)
    if outliers and len(y) - len(outliers) >= MIN_POINTS:
        keep = ~np.isin(x, list(outliers))
        x, y = x[keep], y[keep]
    curve = _Curve.of(x, y, mode)
    o, levels = curve.orient, curve.levels
    start, start_se = float(levels.means[0]), float(levels.errors[0])
    end, end_se = float(levels.means[-1]), float(levels.errors[-1])
    best_index = int(np.argmax(o * levels.means))
    best = float(levels.means[best_index])
    gain, gain_se = o * (end - start), math.hypot(start_se, end_se)
    half = len(y) // 2
    slope, slope_se = slope_and_error(x[half:], y[half:], curve.sigma)
    span = float(x[-1] - x[half])
    recent, recent_se = slope * span, slope_se * span
    numbers = {"first": start, "final": end, "best": best, "best_step": curve.window_step(best_index),
               "points": int(logged), "noise_sd": curve.sigma, "window": curve.width, "change": end - start,
               "change_se": gain_se, "recent_change": recent, "recent_change_se": recent_se,
               "recent_from_step": float(x[half])}
    numbers["spikes"] = len(spikes)
    falls, open_fall = _falls(curve, name, start)
    overfit, eval_numbers = _overfitting(curve, name, eval_steps, eval_values, eval_name, eval_mode)
    numbers.update(eval_numbers)
    findings = sorted(findings + spikes + falls + ([overfit] if overfit else []),
                      key=lambda f: -math.inf if f.step is None else f.step)
    z1 = z_for(ALPHA)  # alarms: a divergence
    # Whether it moved at all is decided at the level the printed intervals have (95 %, two-sided), so "within its
    # noise" is said exactly when the printed interval holds zero.
    z_moved = Z_REPORT
    since_start = f"{name} {change(end - start)} {amount(abs(end - start), gain_se)} since the start " \
                  f"({number(start)} -> {number(end)})"

    def verdict(kind: str, reason: str) -> Diagnosis:
        return Diagnosis(kind, reason, ADVICE[kind], numbers, findings)

    if len(values) and not is_finite(values[-1]):
        return verdict("diverged", f"the last {name} is {values[-1]}")
    if mode == "min" and -gain > max(z1 * gain_se, DIVERGED_SHARE * abs(start)):
        return verdict("diverged", f"{since_start}: worse than where it started")
    if open_fall and open_fall["collapse"] and open_fall.get("still_down"):
        numbers.update(best_step=open_fall["best_step"], given_back=open_fall["drop"])
        return verdict("collapsed", next(f.message for f in falls if f.kind == "collapse"))
    if overfit:
        return verdict("overfitting", overfit.message)
    if len(spikes) >= UNSTABLE_SPIKES or len(spikes) > UNSTABLE_SHARE * numbers["points"]:
        return verdict("unstable", f"{len(spikes)} spikes in {numbers['points']} logs (each beyond 6 robust standard "
                                   f"deviations of the logs before it)")
    improved = gain > z_moved * gain_se
    before_half = max(half - curve.width + 1, 1)  # windows that end before the last half starts
    best_before = int(np.argmax(o * levels.means[:before_half]))
    above_before = o * (end - float(levels.means[best_before]))
    above_before_se = math.hypot(end_se, float(levels.errors[best_before]))
    rising = (o * recent > z_moved * recent_se and (not improved or o * recent >= RECENT_SHARE * gain)
              and above_before > above_before_se)  # above the earlier best by a standard error
    last_half = (f"{change(recent)} {amount(abs(recent), recent_se)} over its last half (from step "
                 f"{x[half]:g})")
    if rising:
        return verdict("still improving", f"{since_start}, and it is still improving: {last_half}")
    # Levelled off only when the data says so: the end is above the best level before the last half by, at most
    # (95 % upper bound), less than half of the gain. Otherwise too few or too noisy logs cannot tell a slowing rise
    # from a flat end: train on.
    if improved and above_before + Z_ONE_SIDED_95 * above_before_se >= LEVELLED_SHARE * gain:
        return verdict("still improving", f"{since_start}; it {last_half}: not enough evidence yet that it has "
                                          "levelled off, so it may still be improving")
    if improved:
        earlier = float(levels.means[best_before])
        if abs(recent) <= z_moved * recent_se:
            tail = f"{last_half}, within its noise"
        else:  # the last half moved, but the end is not above where the curve already was before it
            word = "only {} better than" if above_before > 0 else "{} worse than"
            tail = (f"it ends {word.format(amount(above_before, above_before_se))} its best before step "
                    f"{x[half]:g} ({number(earlier)})")
        reason = f"{since_start}, then levelled off: {tail}"
        if open_fall and open_fall.get("still_down"):
            reason += f"; it is now {amount(open_fall['drop'], open_fall['drop_se'])} worse than its best"
        return verdict("converged", reason)
    noise = f"{name} moves by about ±{number(curve.sigma)} from log to log by chance"
    evidence = (f"{len(y)} logs show no change beyond it" if len(y) >= 50
                else f"not enough evidence yet of a change in {len(y)} logs")
    return verdict("plateau", f"{since_start}: within its noise ({noise}); {evidence}")


def new_bests(steps: Sequence[float], values: Sequence[float], mode: str, limit: int = 20) -> dict:
    """The steps where the curve's level (a mean of `window_length` logs) beat its best so far by more than its
    noise (95 %): the dashboard's "new best" lines; and the logs since the last one.

    Returns:
        {"new_best": the last `limit` of [{"step", "value" (the level), "error" (its 95 % half-width)}],
        "logs_since_best": logs since the last new best}.
    """
    import numpy as np

    _, y_all, finite = _as_arrays(steps, values)
    x = np.asarray(steps, dtype=float)[finite]
    y = y_all[finite]
    if len(y) < MIN_POINTS:
        return {"new_best": [], "logs_since_best": 0}
    curve = _Curve.of(x, y, mode)
    up = curve.orient * curve.levels.means
    errors = curve.levels.errors
    events, best, best_error, last = [], -math.inf, 0.0, 0
    for i in range(len(up)):  # a Python loop over window levels: ~50 ms for 100k logs, once per dashboard poll
        if up[i] > best + Z_REPORT * math.hypot(errors[i], best_error):
            best, best_error, last = float(up[i]), float(errors[i]), i
            events.append({"step": curve.window_end(i), "value": curve.orient * best,
                           "error": Z_REPORT * best_error})
    return {"new_best": events[-limit:], "logs_since_best": int(len(y) - (last + curve.width))}


class OnlineNoise:
    """A metric's per-log noise estimated one value at a time, as `diagnose` does over a whole curve (successive
    differences of the raw values), and the smallest difference between two of its (smoothed) values that is beyond
    that noise: 2.33 standard errors of the difference (one-sided, 1 %). Early stopping and save-on-improvement call
    a new value an improvement only when it beats the best by that much (and by their own `min_delta`).

    Unknown (0) before 8 values. `smoothing` is the EMA weight the compared values carry: the noise of an EMA of
    weight w is sigma * sqrt((1 - w) / (1 + w)).
    """

    def __init__(self):
        self.count, self.square_sum, self.last_raw = 0, 0.0, None

    def observe(self, raw: float):
        if not is_finite(raw):
            return
        if self.last_raw is not None:
            self.square_sum += (raw - self.last_raw) ** 2
            self.count += 1
        self.last_raw = float(raw)

    @property
    def sd(self) -> float:
        return math.sqrt(self.square_sum / self.count / 2) if self.count >= MIN_POINTS - 1 else 0.0

    def threshold(self, smoothing: float = 0.0) -> float:
        w = smoothing
        return z_for(ALPHA) * math.sqrt(2) * self.sd * math.sqrt((1 - w) / (1 + w))

    def improves(self, value: float, best: float | None, mode: str, min_delta: float = 0.0, relative: bool = False,
                 smoothing: float = 0.0) -> bool:
        """Whether `value` beats `best` by more than `min_delta` and by more than the noise."""
        from ..metric_rules import gain, is_improvement

        if not is_improvement(value, best, mode, min_delta, relative):
            return False
        return best is None or not math.isfinite(best) or gain(best, value, mode) > self.threshold(smoothing)

    def state_dict(self) -> dict:
        return {"noise_count": self.count, "noise_square_sum": self.square_sum, "noise_last_raw": self.last_raw}

    def load_state_dict(self, state: dict):
        self.count = int(state.get("noise_count") or 0)
        self.square_sum = float(state.get("noise_square_sum") or 0.0)
        last = state.get("noise_last_raw")
        self.last_raw = float(last) if is_finite(last) else None
