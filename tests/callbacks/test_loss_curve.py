"""loss_curve.png of an RL run and of a run shorter than an epoch: no figure that misleads (issue 31)."""

import math
from pathlib import Path

from hf_trainkit.callbacks.loss_curve import curve_stats, curve_titles, plot_curve


def _draw(history, tmp_path: Path, **kwargs):
    stats = curve_stats(history, "loss")
    epochs = max(entry["epoch"] for entry in history)
    figure = plot_curve(stats, str(tmp_path / "c.png"), total_steps=history[-1]["step"], epochs=epochs, title="t",
                        **kwargs)
    ax = figure.axes[0]
    return stats, ax, [t.get_text() for t in ax.get_legend().get_texts()]


def test_an_rl_loss_has_no_best_and_says_it_is_not_a_quality_measure(tmp_path):
    # PSR's loss sits at -1 (its advantages are +1): "best loss: -1" would praise nothing.
    history = [{"step": s, "epoch": s / 400, "loss": -1.0 + 0.01 * math.sin(s), "reward": 0.3} for s in range(1, 41)]
    _, ax, _ = _draw(history, tmp_path, rl=True)
    assert "best loss" not in ax.get_xlabel() and "final loss: " in ax.get_xlabel()
    for mode in ("psr", "nsr", "w-reinforce"):
        assert f"{mode.upper()}: an RL loss, not a measure of quality" in curve_titles(mode)["loss_curve.png"]
    assert "not a measure of quality" not in curve_titles(None)["loss_curve.png"]


def test_an_epoch_average_is_drawn_only_for_whole_epochs(tmp_path):
    short = [{"step": s, "epoch": s / 400, "loss": 2.0 - s / 100} for s in range(1, 41)]  # a tenth of an epoch
    stats, ax, legend = _draw(short, tmp_path)
    assert "epoch average" not in legend and not ax.collections
    assert [(e["epoch"], e["complete"]) for e in stats["epoch_averages"]] == [(1, False)]
    # 2.5 epochs: the averages of epochs 1 and 2, not of the half third one
    long = [{"step": s, "epoch": s / 10, "loss": 2.0 - s / 100} for s in range(1, 26)]
    stats, ax, legend = _draw(long, tmp_path)
    assert "epoch average" in legend
    drawn = [segments for collection in ax.collections for segments in collection.get_segments()]
    assert [(seg[0][0], seg[1][0]) for seg in drawn] == [(1, 10), (11, 20)]
    assert [e["complete"] for e in stats["epoch_averages"]] == [True, True, False]
