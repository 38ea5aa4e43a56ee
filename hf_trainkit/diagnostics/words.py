"""What a verdict tells the user to do, and how a difference is written: in the metric's own units, with its 95 %
interval, never as a percentage. One place, so a finding reads the same live, in `monitor` and on the dashboard."""

from __future__ import annotations

import math

VERDICTS = ("converged", "still improving", "plateau", "overfitting", "unstable", "collapsed", "diverged", "too short")
# Advice follows from the verdict alone; a finding's advice never contradicts the verdict's (no learning-rate advice
# outside "plateau", "collapsed", "overfitting" and "diverged", which exclude each other).
ADVICE = {
    "converged": "Training has levelled off after improving: more steps will not help much; compare checkpoints or "
    "change the data or model to go further.",
    "still improving": "The metric is still moving the right way: train longer (raise --max-steps or "
    "--num-train-epochs).",
    "plateau": "Nothing has changed beyond the noise: check the data and the reward first; then raise the learning "
    "rate, or for RL raise --num-generations / lower --reward-threshold so more groups carry a signal.",
    "overfitting": "Eval is getting worse while train improves: stop earlier (the best checkpoint is at the eval "
    "best), add data, regularise (weight decay, dropout, LoRA rank) or lower the learning rate.",
    "unstable": "The curve has repeated spikes: enable or tighten gradient clipping (--max-grad-norm), raise the "
    "batch size, and look at the batches logged at those steps.",
    "collapsed": "The metric improved, then lost most of that gain: lower the learning rate (or for RL raise beta, "
    "the KL weight), and resume from the checkpoint at its best (--checkpoint-metric with --save-top-k keeps it).",
    "diverged": "The run blew up (non-finite values or far worse than at the start): lower the learning rate, "
    "check for bad data, and resume from a checkpoint before the divergence.",
    "too short": "Too few logged points to judge: log more often (--logging-steps) or train longer.",
    # findings
    "spike": "One batch far off the curve: if it recurs, tighten gradient clipping (--max-grad-norm) or raise the "
    "batch size.",
    "dip": "A transient fall that recovered: nothing to do unless it recurs.",
}


def number(value: float) -> str:
    """A level, to 3 significant digits."""
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def amount(size: float, error: float) -> str:
    """`size ± half-width of its 95 % interval`, e.g. `0.21 ± 0.06`."""
    from .noise import Z_REPORT

    return f"{abs(size):.2g} ± {Z_REPORT * error:.2g}" if math.isfinite(error) else f"{abs(size):.2g}"


def change(difference: float) -> str:
    return "rose" if difference > 0 else "fell" if difference < 0 else "stayed"
