"""Figures of one or many runs (matplotlib, headless). One line per run, the same colour for a run in every figure."""

from __future__ import annotations

import fnmatch
import re
import sys
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from ..diagnostics import ema
from ..metric_rules import eval_counterpart
from .load import RunHistory, Series


MAX_DRAWN_POINTS = 1200  # ~1.5 points per pixel of an 8-inch figure: min/max thinning loses nothing visible
MODE_PANELS = (
    ("psr/positive_ratio", "PSR positive ratio"),
    ("nsr/negative_ratio", "NSR negative ratio"),
    ("w_reinforce/pos_neg_ratio", "W-REINFORCE positives per negative"),
)
MODE_PREFIXES = ("grpo", "psr", "nsr", "w_reinforce")


def headless_pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on a training node
    import matplotlib.pyplot as plt

    return plt


def decimate(xs: Sequence[float], ys: Sequence[float], max_points: int = MAX_DRAWN_POINTS):
    """At most `max_points` points: each bucket keeps its min and max (in x order), so peaks stay visible."""
    import numpy as np

    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(x) <= max_points:
        return x, y
    bucket = math.ceil(len(x) / (max_points // 2))
    count = len(x) // bucket
    body = np.where(np.isfinite(y[: count * bucket]), y[: count * bucket], np.nan).reshape(count, bucket)
    valid = ~np.all(np.isnan(body), axis=1)
    safe = np.where(np.isnan(body), 0.0, body)
    low = np.where(np.isnan(body), np.inf, safe).argmin(axis=1)
    high = np.where(np.isnan(body), -np.inf, safe).argmax(axis=1)
    offsets = np.arange(count) * bucket
    keep = np.sort(np.concatenate([(offsets + low)[valid], (offsets + high)[valid]]))
    keep = np.unique(np.concatenate([keep, np.arange(count * bucket, len(x))]))
    return x[keep], y[keep]


def x_values(series: Series, axis: str, run: RunHistory):
    steps, _ = series.arrays()
    if axis == "epoch":
        return [e if e is not None else math.nan for e in series.epochs]
    if axis == "time":
        # trainer_state.json has no wall clock per entry: spread train_runtime evenly over the steps.
        runtime = run.summary.get("total_train_runtime", run.summary.get("train_runtime"))
        last = run.global_step or 1
        return steps * ((runtime / last) if runtime else 1.0)
    return steps


def printable(text: str, limit: int = 80) -> str:
    """Text matplotlib can draw: no control characters (a NUL in a key), no lone surrogates, not a page long."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def draw_series(ax, run: RunHistory, series: Series, color, label: str, axis: str, smooth: float, **style):
    label = printable(label)
    if series.low is not None and series.high is not None:
        band_x = x_values(series, axis, run)
        ax.fill_between(band_x, series.low, series.high, color=color, alpha=0.15, linewidth=0)
    all_x, all_y = x_values(series, axis, run), series.arrays()[1]
    xs, ys = decimate(all_x, all_y)
    if smooth > 0 and len(ys) > 2:
        ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1, antialiased=False)
        # Smooth the full series, then thin it: smoothing the thinned min/max pairs would skew the curve.
        ax.plot(*decimate(all_x, ema(all_y, smooth)), color=color, label=label, linewidth=1.6, **style)
    else:
        ax.plot(xs, ys, color=color, label=label, **{"linewidth": 1.4, **style})


class FigureWriter:
    """Writes figures for a list of runs into a directory; returns the paths it wrote."""

    def __init__(self, runs: list[RunHistory], output_dir: Path, *, x: str = "step", smooth: float = 0.0,
                 log_y: bool = False, dpi: int = 110):
        self.runs, self.output_dir, self.x, self.smooth, self.log_y, self.dpi = runs, output_dir, x, smooth, log_y, dpi
        self.plt = headless_pyplot()
        cycle = self.plt.get_cmap("tab10")
        self.colors = {id(run): cycle(index % 10) for index, run in enumerate(runs)}
        self.written: list[Path] = []

    def _save(self, fig, name: str) -> Path:
        path = self.output_dir / name
        fig.savefig(path, dpi=self.dpi)
        self.plt.close(fig)
        self.written.append(path)
        return path

    def _axes_label(self, ax, title: str, ylabel: str):
        title, ylabel = printable(title), printable(ylabel)
        ax.set_title(title)
        ax.set_xlabel({"step": "step", "epoch": "epoch", "time": "seconds (estimated)"}[self.x])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if self.log_y:
            ax.set_yscale("log")
        entries = len(ax.get_legend_handles_labels()[0])
        if entries > 10:  # many runs: the legend goes beside the plot instead of hiding it
            ax.legend(fontsize=6, ncol=1 + entries // 25, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif entries:
            ax.legend(fontsize=8)

    def pass_at_k_figure(self) -> Path | None:
        """pass@k against k at each run's last evaluation, with the base model (step 0) dashed: the paper's figure."""
        from .pass_at_k import run_curves, write_pass_at_k_figure

        path = write_pass_at_k_figure(self.plt, run_curves(self.runs), self.output_dir / "pass_at_k.png",
                                      "pass@k on the evaluation prompts (eval/pass@k)", self.dpi)
        if path is not None:
            self.written.append(path)
        return path

    def metric_figure(self, name: str, title: str, pick: Callable[[RunHistory], dict[str, Series]],
                      schedule: bool = False, ylabel: str | None = None) -> Path | None:
        """One figure; `pick(run)` gives the series to draw for a run, as {suffix: series}.

        `schedule=True` (the learning rate): drawn raw, never smoothed (an EMA of a decaying schedule lags it: the
        final rate would read many times too high), and each run with its own dash pattern and a thinner line than
        the one before, so identical schedules of several runs all stay visible on top of each other.
        """
        fig, ax = self.plt.subplots(figsize=(8, 4.5), layout="constrained")
        drawn = 0
        dashes = ["-", "--", ":", "-."]
        for index, run in enumerate(self.runs):
            for suffix, series in pick(run).items():
                if not len(series):
                    continue
                label = run.label if not suffix else (f"{run.label} {suffix}" if len(self.runs) > 1 else suffix)
                if schedule:
                    style = {"linestyle": dashes[index % len(dashes)], "linewidth": max(2.6 - 0.5 * index, 0.8)}
                    draw_series(ax, run, series, self.colors[id(run)], label, self.x, 0.0, **style)
                else:
                    linestyle = "--" if suffix.startswith("eval") else "-"
                    draw_series(ax, run, series, self.colors[id(run)], label, self.x, self.smooth,
                                linestyle=linestyle)
                drawn += 1
        if not drawn:
            self.plt.close(fig)
            return None
        self._axes_label(ax, title, ylabel or title)
        return self._save(fig, name)

    def mode_metrics_figure(self) -> Path | None:
        if not any(key.startswith(f"{prefix}/") for run in self.runs for key in run.train for prefix in MODE_PREFIXES[1:]):
            return None
        fig, axes = self.plt.subplots(2, 2, figsize=(11, 7.5), layout="constrained")
        for ax, (key, title) in zip(axes.flat, MODE_PANELS):
            for run in self.runs:
                if key in run.train:
                    draw_series(ax, run, run.train[key], self.colors[id(run)], run.label, self.x, self.smooth)
            if not ax.lines:  # a mode none of these runs trained with: say so instead of an empty frame
                ax.text(0.5, 0.5, f"no data: no run logged {key}", ha="center", va="center", transform=ax.transAxes,
                        color="grey")
            self._axes_label(ax, title, key)
        ax = axes.flat[3]
        # A run that logged several modes (resumed with another --mode) has a series per mode here: each its own
        # colour when there is one run, else the run's colour in a line style per mode, never two alike.
        dashes = dict(zip(MODE_PREFIXES, ("-", "--", ":", "-.")))
        cycle = self.plt.get_cmap("tab10")
        for run in self.runs:
            for index, prefix in enumerate(MODE_PREFIXES):
                key = f"{prefix}/avg_reward"
                if key in run.train:
                    one_run = len(self.runs) == 1
                    draw_series(ax, run, run.train[key], cycle(index) if one_run else self.colors[id(run)],
                                f"{run.label} ({prefix})", self.x, self.smooth,
                                linestyle="-" if one_run else dashes[prefix])
        self._axes_label(ax, "Average reward of kept samples by mode", "avg_reward")
        return self._save(fig, "mode_metrics.png")

    def eval_metrics_figure(self) -> Path | None:
        keys = main_eval_metrics(self.runs)
        if not keys:
            return None
        columns = min(3, len(keys))
        rows = math.ceil(len(keys) / columns)
        fig, axes = self.plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False,
                                      layout="constrained")
        for ax, key in zip(axes.flat, keys):
            for run in self.runs:
                if key in run.eval:
                    draw_series(ax, run, run.eval[key], self.colors[id(run)], run.label, self.x, 0.0, marker=".")
            self._axes_label(ax, key, key)
        for ax in list(axes.flat)[len(keys):]:
            ax.set_visible(False)
        return self._save(fig, "eval_metrics.png")

    def diagnostics_figure(self, run: RunHistory, key: str) -> Path | None:
        """2x2: train vs eval, change per log, generalisation gap (eval - train), rolling std of the train curve."""
        train = run.train.get(key)
        if train is None or len(train) < 2:
            return None
        eval_key = eval_counterpart(run.eval, key)
        eval_series = run.eval.get(eval_key) if eval_key else None
        fig, axes = self.plt.subplots(2, 2, figsize=(11, 7.5), layout="constrained")
        color = self.colors[id(run)]
        steps, values = train.finite()
        if len(values) < 2:
            self.plt.close(fig)
            return None
        ax = axes[0][0]
        draw_series(ax, run, train, color, f"train {key}", self.x, self.smooth)
        if eval_series is not None:
            draw_series(ax, run, eval_series, "tab:red", eval_key, self.x, 0.0, linestyle="--", marker=".")
        self._axes_label(ax, "Train vs eval", key)
        ax = axes[0][1]
        deltas = [b - a for a, b in zip(values, values[1:])]
        if len(deltas) <= 200:
            ax.bar(steps[1:], deltas, width=max((steps[-1] - steps[0]) / max(len(steps), 1), 1e-9), color=color)
        else:  # thousands of bars draw slowly and read as a blur: the same data as a thinned line
            ax.plot(*decimate(steps[1:], deltas), color=color, linewidth=0.8)
        self._axes_label(ax, "Change per log", f"delta {key}")
        ax = axes[1][0]
        if eval_series is not None and values:
            eval_steps, eval_values = eval_series.finite()
            gap = [ev - _value_at(steps, values, s) for s, ev in zip(eval_steps, eval_values)]
            ax.plot(eval_steps, gap, marker="o", color="tab:red")
            ax.axhline(0, color="grey", linewidth=0.8)
        else:
            ax.text(0.5, 0.5, f"no eval metric for {key} logged", ha="center", va="center", transform=ax.transAxes)
        self._axes_label(ax, "Generalisation gap (eval - train)", "gap")
        ax = axes[1][1]
        window = max(5, len(values) // 20)
        ax.plot(*decimate(steps, rolling_std(values, window)), color=color)
        self._axes_label(ax, f"Rolling std ({window} logs)", "std")
        return self._save(fig, "diagnostics.png")


def _value_at(steps: list[float], values: list[float], step: float) -> float:
    """The train value logged at or just before `step`."""
    best = values[0]
    for s, v in zip(steps, values):
        if s > step:
            break
        best = v
    return best


def rolling_std(values: Sequence[float], window: int) -> list[float]:
    """Sample std of each trailing window (shorter at the start), in O(n) with cumulative sums."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return []
    sums = np.concatenate([[0.0], np.cumsum(x)])
    squares = np.concatenate([[0.0], np.cumsum(x * x)])
    ends = np.arange(1, len(x) + 1)
    starts = np.maximum(0, ends - window)
    counts = ends - starts
    mean = (sums[ends] - sums[starts]) / counts
    variance = (squares[ends] - squares[starts] - counts * mean * mean) / np.maximum(counts - 1, 1)
    return np.sqrt(np.clip(variance, 0.0, None)).tolist()


def keys_matching(runs: list[RunHistory], pattern: str) -> list[str]:
    """Logged keys (train and eval) matching a glob pattern, e.g. ``rewards/*`` or ``eval_*``."""
    keys = {key for run in runs for key in (*run.train, *run.eval)}
    return sorted(key for key in keys if fnmatch.fnmatchcase(key, pattern))


def safe_file_name(key: str) -> str:
    """A portable file name for a metric key: no '/', NUL or other odd characters, and short enough for any
    filesystem (a long key keeps its start plus a hash, so two keys never share a file)."""
    import hashlib

    name = re.sub(r"[^A-Za-z0-9._=+-]", "_", key).strip(".") or "_"
    if len(name) > 100 or name != key.replace("/", "_").replace(" ", "_"):
        name = f"{name[:100]}-{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return name + ".png"


def write_figures(runs: list[RunHistory], output_dir: Path, *, x: str = "step", smooth: float = 0.0,
                  log_y: bool = False, metrics: Sequence[str] = (), progress=None) -> list[Path]:
    """Every figure that the runs have data for; returns the written paths."""
    writer = FigureWriter(runs, output_dir, x=x, smooth=smooth, log_y=log_y)
    tasks: list[Callable[[], object]] = [
        lambda: writer.metric_figure("training_loss.png", loss_title(runs), lambda r: _pick(r.train, "loss", ""),
                                     ylabel="loss"),
        lambda: writer.metric_figure("learning_rate.png", "Learning rate",
                                     lambda r: _pick(r.train, "learning_rate", ""), schedule=True),
        lambda: writer.metric_figure("gradient_norm.png", "Gradient norm", lambda r: _pick(r.train, "grad_norm", "")),
        lambda: writer.metric_figure("rewards.png", "Reward", _rewards),
        writer.mode_metrics_figure,
    ]
    tasks.append(lambda: writer.metric_figure("eval_loss.png", "Train vs eval loss", _train_and_eval_losses))
    tasks.append(writer.eval_metrics_figure)
    tasks.append(writer.pass_at_k_figure)
    if len(runs) == 1:
        tasks.append(lambda: writer.diagnostics_figure(runs[0], "reward" if runs[0].is_rl else "loss"))
    for pattern in metrics:
        for key in keys_matching(runs, pattern):
            tasks.append(lambda key=key: writer.metric_figure(
                "metric_" + safe_file_name(key), key,
                lambda r: _pick(r.eval if key in r.eval else r.train, key, "")))
    import warnings

    for task in tasks:
        # One figure that cannot be drawn (values matplotlib rejects, a file it cannot write) costs that figure only.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # matplotlib's notes on log scales of non-positive data and such
                task()
        except (ValueError, OverflowError, OSError, RuntimeError, TypeError, IndexError, ZeroDivisionError) as error:
            writer.plt.close("all")
            first_line = (str(error).strip().splitlines() or [""])[0][:160]
            print(f"hf-trainkit monitor: skipped a figure ({type(error).__name__}: {first_line}).", file=sys.stderr)
        if progress is not None:
            progress()
    return writer.written


RL_LOSS_NOTE = "RL: not a measure of quality; see rewards.png"


def loss_title(runs: list[RunHistory]) -> str:
    """The title of training_loss.png: an RL run's loss (flat near -1, 0 or 1 by its advantages: PSR's +1, NSR's -1,
    GRPO's centred ones) says nothing of how well it does, and the figure says so."""
    return f"Training loss ({RL_LOSS_NOTE})" if any(run.is_rl for run in runs) else "Training loss"


def _pick(table: dict[str, Series], key: str | None, suffix: str) -> dict[str, Series]:
    return {suffix: table[key]} if key and key in table else {}


def _rewards(run: RunHistory) -> dict[str, Series]:
    if not run.is_rl:
        return {}
    if "reward" in run.train:
        return {"": run.train["reward"]}
    return {key.split("/")[1]: series for key, series in run.train.items()
            if key.startswith("rewards/") and key.endswith("/mean")}


def _train_and_eval_losses(run: RunHistory) -> dict[str, Series]:
    losses = {key: series for key, series in run.eval.items() if key.endswith("loss")}
    if not losses:
        return {}
    return {**_pick(run.train, "loss", "train loss"), **losses}


# Eval keys that describe the evaluation itself, not the model: left to --metrics.
_EVAL_INTERNALS = ("_runtime", "_per_second", "_num_tokens", "_logits_chosen", "_logits_rejected", "_logps_chosen",
                   "_logps_rejected", "_std")


def main_eval_metrics(runs: list[RunHistory], limit: int = 9) -> list[str]:
    """Eval metrics worth a panel: not losses (eval_loss.png has them), not timings, not TRL's `a/b` internals."""
    keys = sorted({key for run in runs for key in run.eval})
    return [key for key in keys if not key.endswith("loss") and "/" not in key
            and not any(key.endswith(suffix) for suffix in _EVAL_INTERNALS)][:limit]
