"""End-of-training loss (and reward) curve images and `training_stats.json`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from transformers import TrainerCallback
from transformers.utils import logging

from ..constants import IMAGE_DIR, LOSS_CURVE, REWARD_CURVE, STATS_FILE


logger = logging.get_logger(__name__)

EPOCH_LINE_GID = "epoch-boundary"


def curve_stats(log_history: list[dict], key: str = "loss", mode: str = "min") -> dict | None:
    """Steps, values and per-epoch figures of one logged training metric (eval and summary entries left out).

    Returns `None` when the key was never logged. Epoch boundaries are the steps at which the integer part of
    `epoch` first grows; per-epoch averages group the logs by that integer part, each marked `complete` when the
    run went through that whole epoch (a 0.1-epoch run has one average, of a tenth of an epoch, not complete).
    """
    from ..monitor.load import parse_state

    # The monitor's reader: the same split of training logs, evaluations and the final summary as `hf-trainkit
    # monitor` makes, so the end-of-training figure and the monitor's never disagree on what a point is.
    series = parse_state({"log_history": log_history}, Path("log_history"), "run").train.get(key)
    if series is None or not series.values:
        return None
    steps, values, epochs = series.steps, [float(v) for v in series.values], series.epochs
    boundaries, per_epoch = [], {}
    previous = None
    for step, value, epoch in zip(steps, values, epochs):
        index = int(math.floor(epoch - 1e-9)) if isinstance(epoch, (int, float)) and epoch > 0 else 0
        if previous is not None and index > previous:
            boundaries.append(step)
        previous = index
        if math.isfinite(value):
            per_epoch.setdefault(index, []).append((step, value))
    finite = [v for v in values if math.isfinite(v)]
    best = (min(finite) if mode == "min" else max(finite)) if finite else None
    numeric_epochs = [e for e in epochs if isinstance(e, (int, float)) and math.isfinite(e)]
    last_epoch = max(numeric_epochs, default=0.0)
    return {
        "key": key,
        "steps": steps,
        "values": values,
        "epoch_boundaries": boundaries,
        "epoch_averages": [
            {"epoch": index + 1, "first_step": pairs[0][0], "last_step": pairs[-1][0],
             "average": sum(v for _, v in pairs) / len(pairs), "complete": last_epoch >= index + 1 - 1e-6}
            for index, pairs in sorted(per_epoch.items())
        ],
        "best": best,
        "best_step": steps[values.index(best)] if best is not None else None,
        "final": values[-1],
    }


def _per_log_label(key: str, steps: list) -> str:
    """'loss per step', or 'loss per log (every 20 steps)' when logs are that far apart."""
    numeric = [s for s in steps if isinstance(s, (int, float))]
    gaps = sorted(b - a for a, b in zip(numeric, numeric[1:]))
    every = gaps[len(gaps) // 2] if gaps else 1
    return f"{key} per step" if every <= 1 else f"{key} per log (every {every:g} steps)"


def plot_curve(stats: dict, path: str, *, total_steps: int, epochs: float | None, title: str, rl: bool = False):
    """Draw the curve, epoch boundaries (dashed, gid `epoch-boundary`), the average of each complete epoch, the
    legend beside the plot and the figures in one line under it (neither covers a data point); save to `path`.
    Returns the figure (closed) so callers can inspect what was drawn.

    `rl`: the loss of an RL run, whose level follows its advantages (PSR's +1, NSR's -1), not how good the model is:
    no "best" figure, which would call its most negative value the best."""
    from ..monitor.plots import headless_pyplot

    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    key = stats["key"]
    ax.plot(stats["steps"], stats["values"], color="tab:blue", linewidth=1.2,
            label=_per_log_label(key, stats["steps"]))
    for step in stats["epoch_boundaries"]:
        ax.axvline(step, color="grey", linestyle="--", linewidth=0.8, gid=EPOCH_LINE_GID)
    complete = [segment for segment in stats["epoch_averages"] if segment.get("complete", True)]
    for segment in complete:  # the average of part of an epoch would read as the epoch's
        ax.hlines(segment["average"], segment["first_step"], segment["last_step"], colors="tab:orange",
                  linewidth=2.2, label="epoch average" if segment is complete[0] else None)
    figures = [f"total steps: {total_steps}", f"epochs: {epochs:.2f}" if epochs is not None else "epochs: -",
               f"best {key}: {stats['best']:.4g} (step {stats['best_step']})"
               if stats["best"] is not None and not rl else "",
               f"final {key}: {stats['final']:.4g}"]
    ax.set_title(title)
    ax.set_xlabel("step\n" + "   ·   ".join(line for line in figures if line))
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def curve_titles(mode: str | None) -> dict[str, str]:
    """Figure titles. GRPO's loss is ~0 by construction (advantages are centred per group), so its loss figure says
    to look at the reward; PSR/NSR/W-REINFORCE losses are not ~0 but flat at their advantages' level, and say that
    they do not measure quality."""
    loss = "Training loss"
    if mode == "grpo":
        loss += " (GRPO's loss is ~0 by construction: the reward is what moves)"
    elif mode:
        loss += f" ({mode.upper()}: an RL loss, not a measure of quality; see reward_curve.png)"
    return {LOSS_CURVE: loss, REWARD_CURVE: "Reward" + (f" ({mode.upper()})" if mode else "")}


class LossCurveCallback(TrainerCallback):
    """At the end of training, write `img/loss_curve.png`, `img/reward_curve.png` (RL runs) and
    `training_stats.json` into `output_dir`, from the trainer's log history.

    Works with checkpoints off. Acts on `on_train_end`, on the world process zero only. A failure (no matplotlib,
    a full disk) is a warning: training has finished either way.

    Args:
        output_dir (`str`, *optional*): where to write (default: `args.output_dir`).
    """

    def __init__(self, output_dir: str | None = None):
        self.output_dir = output_dir
        self.titles: dict[str, str] = {}  # image name -> title, of the last write

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        try:
            self.write(args, state)
        except Exception as error:  # a plot must never turn a finished training into a failed one
            logger.warning(f"LossCurveCallback: could not write the loss curve ({type(error).__name__}: {error}).")

    def write(self, args, state) -> dict:
        output_dir = self.output_dir or args.output_dir
        history = state.log_history
        loss = curve_stats(history, "loss", "min")
        reward = curve_stats(history, "reward", "max")
        epochs = max((e["epoch"] for e in history if isinstance(e.get("epoch"), (int, float))), default=None)
        stats = {
            "total_steps": state.global_step,
            "epochs": epochs,
            "best_loss": loss["best"] if loss else None,
            "final_loss": loss["final"] if loss else None,
            "epoch_average_loss": loss["epoch_averages"] if loss else [],
            "steps": loss["steps"] if loss else [],
            "loss": loss["values"] if loss else [],
        }
        if reward:
            stats.update(best_reward=reward["best"], final_reward=reward["final"],
                         epoch_average_reward=reward["epoch_averages"], reward_steps=reward["steps"],
                         reward=reward["values"])
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, STATS_FILE), "w") as handle:
            json.dump(stats, handle, indent=2)
        image_dir = os.path.join(output_dir, IMAGE_DIR)
        os.makedirs(image_dir, exist_ok=True)
        # An RL run without a `mode` (TRL's own GRPOTrainer) is GRPO.
        mode = getattr(args, "mode", None) or ("grpo" if reward else None)
        titles = curve_titles(str(mode).replace("_", "-") if mode else None)
        self.titles = {}
        for curve, name in ((loss, LOSS_CURVE), (reward, REWARD_CURVE)):
            if curve:
                plot_curve(curve, os.path.join(image_dir, name), total_steps=state.global_step, epochs=epochs,
                           title=titles[name], rl=reward is not None and name == LOSS_CURVE)
                self.titles[name] = titles[name]
        return stats
