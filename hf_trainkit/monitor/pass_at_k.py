"""pass@k across k: the paper's figure. Read from the `eval/pass@K` entries that `PassAtKCallback` logs, or drawn
from the results of `hf-trainkit eval` (stdlib and matplotlib only, like the rest of the monitor)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from .load import RunHistory


PASS_AT_KEY = re.compile(r"^eval/pass@(\d+)$")


def pass_at_k_at(run: RunHistory, which: str = "last") -> tuple[float, dict[int, float]] | None:
    """(step, {k: pass@k}) of the run's first (``which="first"``: the base model, when logged at step 0) or last
    evaluation; None when the run logged no pass@k."""
    series = {int(match.group(1)): run.eval[key] for key in run.eval if (match := PASS_AT_KEY.match(key))}
    points = [(step, k, value) for k, s in series.items() for step, value in zip(s.steps, s.values)
              if isinstance(value, (int, float)) and math.isfinite(value)]
    if not points:
        return None
    steps = sorted({step for step, _, _ in points})
    step = steps[0] if which == "first" else steps[-1]
    return step, {k: value for s, k, value in sorted(points) if s == step}


def run_curves(runs: list[RunHistory]) -> list[tuple[str, dict[int, float], bool]]:
    """(label, curve, is_base) to draw: each run's last evaluation, and the first run's step-0 evaluation as the
    base when it has one."""
    curves = []
    for run in runs:
        first, last = pass_at_k_at(run, "first"), pass_at_k_at(run, "last")
        if first and first[0] == 0 and not any(is_base for _, _, is_base in curves):
            curves.append((f"base (step 0 of {run.label})", first[1], True))
        if last and (not first or last[0] != first[0] or first[0] != 0):
            curves.append((f"{run.label} (step {last[0]:g})", last[1], False))
    return curves


def draw_pass_at_k(plt, curves: list[tuple[str, dict[int, float], bool]], title: str, colors=None):
    """A pass@k-vs-k figure (log-2 k axis); returns the figure, or None when no curve has a point."""
    curves = [(label, curve, is_base) for label, curve, is_base in curves if curve]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    cycle = plt.get_cmap("tab10")
    drawn = 0
    for label, curve, is_base in curves:
        ks = sorted(curve)
        style = dict(color="black", linestyle="--", linewidth=1.5) if is_base else dict(
            color=(colors or {}).get(label, cycle(drawn % 10)), linewidth=1.8)
        drawn += 0 if is_base else 1
        ax.plot(ks, [curve[k] for k in ks], marker="o", markersize=3, label=label, **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per prompt)")
    ax.set_ylabel("pass@k")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def write_pass_at_k_figure(plt, curves, path: Path, title: str, dpi: int = 110) -> Path | None:
    fig = draw_pass_at_k(plt, curves, title)
    if fig is None:
        return None
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
