"""The callbacks on real trainers (FilteredGRPOTrainer on the tiny model), real W&B offline, real files."""

import json
import math
import random
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_trainkit.diagnostics import ema
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_trainkit.callbacks import (LossCurveCallback, MetricEarlyStoppingCallback, TrainingDiagnosticsCallback,
                                   WandbEveryNCallback, aggregate_window, curve_stats, wandb_key)
from hf_trainkit.callbacks.loss_curve import EPOCH_LINE_GID, plot_curve

from tests.testing_utils import ROOT

from .wandb_records import history_rows




def train_logs(trainer):
    return [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]


def constant_reward(completions, **kwargs):
    return [0.0] * len(completions)


# --- W&B every N --------------------------------------------------------------------------------------------------


def test_wandb_records_every_n_steps_with_window_means(make_trainer, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    trainer = make_trainer("psr", max_steps=25, callbacks=[WandbEveryNCallback(10, project="tests")],
                           log_mode_summary=False)
    trainer.train()
    rows = [r for r in history_rows(Path(trainer.args.output_dir) / "wandb") if "train/loss" in r]
    assert [r["train/global_step"] for r in rows] == [10, 20, 25]
    logs = train_logs(trainer)
    for row, (start, end) in zip(rows, [(0, 10), (10, 20), (20, 25)]):
        window = logs[start:end]
        assert row["train/loss"] == pytest.approx(sum(h["loss"] for h in window) / len(window))
        assert row["train/reward"] == pytest.approx(sum(h["reward"] for h in window) / len(window))
        assert row["train/learning_rate"] == pytest.approx(window[-1]["learning_rate"])
        assert row["train/epoch"] == pytest.approx(window[-1]["epoch"])
        assert row["psr/positive_samples"] == sum(h["psr/positive_samples"] for h in window)
        assert row["psr/kept_ratio"] == pytest.approx(sum(h["psr/kept_ratio"] for h in window) / len(window))
        assert "train/grad_norm" in row and not any(key.startswith("profiling/") for key in row)


def test_wandb_run_continues_after_resume(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env.pop("WANDB_DIR", None)
    out = tmp_path / "run"
    common = [sys.executable, ROOT / "scripts" / "train_grpo.py", "--mode", "nsr", "--output-dir", out,
              "--wandb-every", "3", "--save-steps", "6", "--quiet"]
    first = subprocess.run([*map(str, common), "--max-steps", "6"], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    run_id = (out / "wandb_run_id.txt").read_text().strip()
    assert f"wandb sync {out}/wandb/offline-run-" in first.stdout + first.stderr
    second = subprocess.run([*map(str, common), "--max-steps", "9", "--resume-from-checkpoint", "latest"],
                            capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(run.name.endswith(run_id) for run in runs)
    steps = [r["train/global_step"] for r in history_rows(out / "wandb") if "train/loss" in r]
    assert steps == [3, 6, 9]


def test_window_aggregation_and_names():
    window = {"loss": [1.0, float("nan"), 3.0], "learning_rate": [3.0, 2.0, 1.0], "nsr/negative_samples": [2, 3, 4],
              "grad_norm": [float("inf")]}
    record = aggregate_window(window)
    assert record == {"loss": 2.0, "learning_rate": 1.0, "nsr/negative_samples": 9.0, "grad_norm": float("inf")}
    assert [wandb_key(k) for k in ("loss", "eval_loss", "nsr/kept_ratio", "rewards/f/mean")] == [
        "train/loss", "eval/loss", "nsr/kept_ratio", "train/rewards/f/mean"]
    with pytest.raises(ValueError, match="every_n_steps=0 must be an integer >= 1"):
        WandbEveryNCallback(0)


# --- loss curve and stats -----------------------------------------------------------------------------------------


def test_loss_curve_images_and_stats(make_trainer):
    # 8 prompts, 2 per step: 4 steps per epoch, 3 epochs -> 2 epoch boundaries.
    trainer = make_trainer("w-reinforce", num_prompts=8, max_steps=-1, num_train_epochs=3,
                           callbacks=[LossCurveCallback()], log_mode_summary=False)
    trainer.train()
    out = Path(trainer.args.output_dir)
    for name in ("loss_curve.png", "reward_curve.png"):
        data = (out / "img" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        import matplotlib.image

        assert matplotlib.image.imread(out / "img" / name).shape[0] > 100
    stats = json.loads((out / "training_stats.json").read_text())
    logs = train_logs(trainer)
    assert stats["total_steps"] == trainer.state.global_step == 12
    assert stats["loss"] == [h["loss"] for h in logs] and stats["steps"] == [h["step"] for h in logs]
    assert stats["reward"] == [h["reward"] for h in logs]
    assert stats["final_loss"] == logs[-1]["loss"]
    assert stats["best_reward"] == max(h["reward"] for h in logs)
    assert [e["epoch"] for e in stats["epoch_average_loss"]] == [1, 2, 3]
    first_epoch = [h["loss"] for h in logs if h["epoch"] <= 1.0 + 1e-9]
    assert stats["epoch_average_loss"][0]["average"] == pytest.approx(sum(first_epoch) / len(first_epoch))
    figure = plot_curve(curve_stats(trainer.state.log_history, "loss"), str(out / "check.png"), total_steps=12,
                        epochs=3.0, title="t")
    boundaries = [line for line in figure.axes[0].lines if line.get_gid() == EPOCH_LINE_GID]
    assert [line.get_xdata()[0] for line in boundaries] == [5, 9]


def test_loss_curve_legend_and_figures_never_cover_the_data():
    """The legend and the figures sit outside the plotting area; labels say how often the run logged; only GRPO's
    loss figure speaks of a loss that is ~0 by construction."""
    import tempfile

    from hf_trainkit.callbacks.loss_curve import curve_titles

    history = [{"step": s, "loss": 2.0 - s / 200, "epoch": s / 100} for s in range(20, 201, 20)]
    with tempfile.TemporaryDirectory() as folder:
        figure = plot_curve(curve_stats(history, "loss"), str(Path(folder) / "c.png"), total_steps=200, epochs=2.0,
                            title="t")
    figure.canvas.draw()
    ax = figure.axes[0]
    plot_area = ax.get_window_extent()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= plot_area.x1  # beside the plot, not on it
    assert all(not text.get_window_extent().overlaps(plot_area) for text in ax.texts)
    assert "final loss: 1" in ax.get_xlabel() and "best loss: 1" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "loss per log (every 20 steps)"
    assert "GRPO" in curve_titles("grpo")["loss_curve.png"]
    for mode in ("psr", "nsr", "w-reinforce"):
        assert "GRPO" not in " ".join(curve_titles(mode).values())


def test_plot_failure_does_not_stop_training(make_trainer, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    trainer = make_trainer("psr", max_steps=3, callbacks=[LossCurveCallback()], log_mode_summary=False)
    trainer.train()
    out = Path(trainer.args.output_dir)
    assert trainer.state.global_step == 3
    assert (out / "training_stats.json").exists() and not (out / "img" / "loss_curve.png").exists()


# --- live diagnostics ---------------------------------------------------------------------------------------------


def drive(callback, series, key="loss", extra=None):
    args, state, control = TrainingArguments(output_dir="/tmp/unused", report_to=[]), TrainerState(), TrainerControl()
    for step, value in enumerate(series, start=1):
        state.global_step = step
        logs = {key: value, **(extra(step) if extra else {})}
        callback.on_log(args, state, control, logs=logs)
    return [f["kind"] for f in callback.findings], callback


def clean_curve(n=200):
    return [2.0 * math.exp(-s / 40) + 0.3 + 0.01 * math.sin(s) for s in range(n)]


def test_clean_curve_raises_nothing():
    kinds, _ = drive(TrainingDiagnosticsCallback(patience=50), clean_curve())
    assert kinds == []


def test_spike_is_reported_once_per_episode():
    values = clean_curve()
    values[100] = 8.0
    values[101] = 8.0  # the same episode
    values[150] = 9.0  # a new one
    kinds, callback = drive(TrainingDiagnosticsCallback(patience=500), values)
    assert kinds == ["spike", "spike"]
    assert [f["step"] for f in callback.findings] == [101, 151]
    # A finding's advice never touches the learning rate: only verdicts do, so the two never contradict.
    assert "gradient clipping" in callback.findings[0]["advice"]
    assert "learning rate" not in callback.findings[0]["advice"]


def test_nan_and_plateau():
    values = clean_curve(60) + [float("nan")] + [0.35] * 3
    kinds, _ = drive(TrainingDiagnosticsCallback(patience=500), values)
    assert kinds == ["non_finite"]
    kinds, callback = drive(TrainingDiagnosticsCallback(patience=20), [1.0 + 0.001 * (s % 3) for s in range(100)])
    # Nothing changes beyond the noise: called once, as soon as `patience` logs are in, and not again.
    assert kinds == ["plateau"] and callback.findings[0]["step"] == 20


def test_a_collapsing_reward_is_a_collapse_not_a_plateau():
    """A reward that rises to 0.8 and falls back to 0.1: the advice is to lower the learning rate, never to raise it."""
    rise_and_fall = [0.1 + 0.7 * min(s, 60) / 60 - (0.7 * (s - 60) / 30 if s > 60 else 0) for s in range(90)]
    kinds, callback = drive(TrainingDiagnosticsCallback(patience=20), rise_and_fall, key="reward")
    assert kinds == ["collapse"]
    finding = callback.findings[0]
    assert "lower the learning rate" in finding["advice"] and "raise the learning rate" not in finding["advice"]
    # Reported during the fall, once the smoothed reward has lost half of its gain (computed plainly here):
    smooth = ema(rise_and_fall, 0.6)
    gain = max(smooth) - smooth[0]
    assert 61 < finding["step"] <= 90 and max(smooth) - smooth[finding["step"] - 1] > 0.5 * gain


def test_live_lines_are_the_monitors_model_on_the_logs_so_far_each_said_once(caplog):
    """A 16-sample reward that rises, collapses and later recovers: one collapse line (when the evidence is in, with
    diagnose's own reason on the logs up to that step), one recovery line, no plateau and no re-announcement."""
    from hf_trainkit.diagnostics import diagnose

    rng = random.Random(4)
    # Up to 0.7 by step 90; down by 0.5 over steps 130-160; back up over steps 230-260.
    rate = [0.15 + 0.55 * min(s / 90, 1) - 0.5 * min(max((s - 130) / 30, 0), 1) + 0.5 * min(max((s - 230) / 30, 0), 1)
            for s in range(400)]
    rewards = [sum(rng.random() < p for _ in range(16)) / 16 for p in rate]
    with caplog.at_level("WARNING"):
        kinds, callback = drive(TrainingDiagnosticsCallback(patience=50), rewards, key="reward")
    assert kinds == ["collapse", "recovered"], kinds
    collapse = callback.findings[0]
    step = collapse["step"]
    assert 130 < step < 230  # after the fall began, before the recovery began
    expected = diagnose(range(1, step + 1), rewards[:step], mode="max", name="reward")
    assert expected.verdict == "collapsed" and collapse["message"] == f"collapse at step {step}: {expected.reason}"
    assert callback.findings[1]["step"] > 240
    lines = [r.getMessage() for r in caplog.records if "[diagnostics]" in r.getMessage()]
    assert len(lines) == 2 and "no longer collapsed" in lines[1]


def test_a_plateau_that_ends_is_said_to_be_over_once():
    """Flat 16-sample rewards for 80 logs, then a steady rise: the plateau is called at `patience` logs, and once
    the rise is beyond the noise, one line says it is over; nothing is said twice."""
    rng = random.Random(2)
    rate = [0.2 if s < 80 else min(0.2 + (s - 80) / 100, 0.9) for s in range(260)]
    rewards = [sum(rng.random() < p for _ in range(16)) / 16 for p in rate]
    kinds, callback = drive(TrainingDiagnosticsCallback(patience=50), rewards, key="reward")
    assert kinds == ["plateau", "plateau over"], kinds
    assert callback.findings[0]["step"] == 50 and callback.findings[1]["step"] > 80


def test_a_resumed_callback_reads_the_curve_back_from_the_log_history():
    """After a resume only what was announced is restored: the curve comes from state.log_history."""
    rng = random.Random(0)
    rewards = [0.2 + 0.5 * min(s, 60) / 60 - (0.5 * min((s - 90) / 20, 1) if s > 90 else 0) + rng.gauss(0, 0.03)
               for s in range(140)]
    first = TrainingDiagnosticsCallback()
    args, state, control = TrainingArguments(output_dir="/tmp/unused", report_to=[]), TrainerState(), TrainerControl()
    for step, value in enumerate(rewards[:120], start=1):
        state.global_step = step
        state.log_history.append({"reward": value, "step": step})
        first.on_log(args, state, control, logs=state.log_history[-1])
    assert [f["kind"] for f in first.findings] == ["collapse"]
    resumed = TrainingDiagnosticsCallback(**first.state()["args"])
    for key, value in first.state()["attributes"].items():
        setattr(resumed, key, value)
    for step, value in enumerate(rewards[120:], start=121):
        state.global_step = step
        state.log_history.append({"reward": value, "step": step})
        resumed.on_log(args, state, control, logs=state.log_history[-1])
    assert [f["kind"] for f in resumed.findings] == ["collapse"]  # still collapsed, not said again
    assert resumed._curve[1] == rewards  # every log once: the one the Trainer appended is not read twice


def test_overfitting_from_eval_logs():
    callback = TrainingDiagnosticsCallback(patience=500)
    args, state, control = TrainingArguments(output_dir="/tmp/unused", report_to=[]), TrainerState(), TrainerControl()
    # Eval loss every 10 steps: falls to its best 0.80 at step 50, then rises by 0.05 per eval (its noise, from its
    # second differences, is ~0.003: the rise is beyond it from step 70 on, two evals after the best).
    evals = {10: 1.2, 20: 1.0, 30: 0.9, 40: 0.84, 50: 0.80, 60: 0.81, 70: 0.86, 80: 0.91, 90: 0.96}
    for step, value in enumerate(clean_curve(90), start=1):
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": value})
        if step in evals:
            callback.on_log(args, state, control, logs={"eval_loss": evals[step]})
    assert [f["kind"] for f in callback.findings] == ["overfitting"]
    assert 60 < callback.findings[0]["step"] <= 80
    assert "eval_loss rose" in callback.findings[0]["message"] and "from its best 0.8 at step 50" in \
        callback.findings[0]["message"]


# --- early stopping -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values,kwargs,stop_at", [
    ([5, 4, 3, 3.5, 3.2, 3.1], {"patience": 3}, 6),
    ([5, 4, 3, 3.5, 2.9, 3.1], {"patience": 3}, None),
    ([5, 4, 3, 2.95, 2.96, 2.97], {"patience": 3, "min_delta": 0.1}, 6),
    ([5, 4, float("nan")], {"patience": 3}, 3),
    ([5, 4, 12], {"patience": 3, "divergence_threshold": 10}, 3),
    ([5, 4, 0.5], {"patience": 3, "stopping_threshold": 1.0}, 3),
    ([0.1, 0.2, 0.19, 0.18, 0.17], {"patience": 3, "mode": "max"}, 5),
])
def test_stopping_rules(values, kwargs, stop_at):
    callback = MetricEarlyStoppingCallback("loss", **kwargs)
    stops = [i + 1 for i, v in enumerate(values) if callback.check(float(v)).should_stop]
    assert (stops[0] if stops else None) == stop_at


def test_smoothing_ignores_a_lucky_batch():
    rewards = [0.5] * 10 + [0.9] + [0.5] * 5
    raw = MetricEarlyStoppingCallback("reward", mode="max", patience=100, min_delta=0.1)
    smooth = MetricEarlyStoppingCallback("reward", mode="max", patience=100, min_delta=0.1, smoothing=0.9)
    for reward in rewards:
        raw.check(reward)
        smooth.check(reward)
    assert raw.best == 0.9  # the lucky batch became the bar to beat
    assert smooth.best == pytest.approx(0.5) and smooth.wait == 15


def test_early_stopping_does_not_count_a_lucky_batch_as_an_improvement():
    """A flat 16-sample reward (pure noise): with the noise-aware rule a lucky batch neither becomes the bar nor
    resets the countdown, so patience 15 stops it; Lightning's raw rule keeps being reset by the noise's maxima."""
    rng = random.Random(7)
    rewards = [sum(rng.random() < 0.4 for _ in range(16)) / 16 for _ in range(300)]

    def expected_stop(values, patience, noise_aware):
        best, wait, differences = None, 0, []
        for i, value in enumerate(values):
            if i:
                differences.append(value - values[i - 1])
            margin = 0.0
            if noise_aware and len(differences) >= 7:
                margin = 2.3263 * math.sqrt(2) * math.sqrt(sum(d * d for d in differences) / len(differences) / 2)
            if best is None or value - best > margin:
                best, wait = value, 0
                continue
            wait += 1
            if wait >= patience:
                return i + 1
        return None

    for noise_aware in (True, False):
        callback = MetricEarlyStoppingCallback("reward", mode="max", patience=15, noise_aware=noise_aware)
        stops = [i + 1 for i, r in enumerate(rewards) if callback.check(r).should_stop]
        assert (stops[0] if stops else None) == expected_stop(rewards, 15, noise_aware)
    aware = MetricEarlyStoppingCallback("reward", mode="max", patience=15)
    decision = next(d for d in map(aware.check, rewards) if d.should_stop)
    assert "did not improve by more than" in decision.reason and "(its noise)" in decision.reason


def test_early_stop_in_training_stops_at_the_right_step_with_a_checkpoint(make_trainer):
    stopper = MetricEarlyStoppingCallback("reward", mode="max", patience=3)
    trainer = make_trainer("nsr", max_steps=20, reward_funcs=constant_reward, callbacks=[stopper],
                           save_strategy="steps", save_steps=100, log_mode_summary=False)
    trainer.train()
    # best at step 1, no improvement at steps 2, 3, 4 -> stop after step 4, and save there.
    assert trainer.state.global_step == 4 and stopper.stopped_step == 4
    assert (Path(trainer.args.output_dir) / "checkpoint-4" / "trainer_state.json").exists()


def test_early_stopping_counts_down_its_last_half(caplog):
    """patience 4: silent while wait <= 2, then one countdown line per check (3 of 4, 1 left), then the stop."""
    callback = MetricEarlyStoppingCallback("reward", mode="max", patience=4)
    args, state, control = TrainingArguments(output_dir="/tmp/unused", report_to=[]), TrainerState(), TrainerControl()
    with caplog.at_level("WARNING"):
        for step, reward in enumerate([0.5, 0.4, 0.4, 0.4, 0.4], start=1):
            state.global_step = step
            callback.on_log(args, state, control, logs={"reward": reward})
    lines = [r.getMessage() for r in caplog.records if "Early stopping" in r.getMessage()]
    assert lines == ["Early stopping countdown at step 4: reward has not improved for 3 of 4 checks (best 0.5); "
                     "1 left.", "Early stopping at step 5: reward did not improve by more than 0.0 for 4 checks "
                     "(best 0.5)."]


def test_unknown_monitor_lists_logged_keys(make_trainer):
    trainer = make_trainer("psr", max_steps=3, callbacks=[MetricEarlyStoppingCallback("rewrd")],
                           log_mode_summary=False)
    with pytest.raises(ValueError, match=r"'rewrd' was never logged \(logged: .*reward.*\); pick one of those"):
        trainer.train()


def test_stopping_state_survives_resume(make_trainer):
    first = make_trainer("nsr", max_steps=4, reward_funcs=constant_reward, save_strategy="steps", save_steps=4,
                         callbacks=[MetricEarlyStoppingCallback("reward", mode="max", patience=10)],
                         restore_callback_states_from_checkpoint=True, log_mode_summary=False)
    first.train()
    stopper = MetricEarlyStoppingCallback("reward", mode="max", patience=10)
    second = make_trainer("nsr", max_steps=6, reward_funcs=constant_reward, save_strategy="steps", save_steps=4,
                          callbacks=[stopper], restore_callback_states_from_checkpoint=True, log_mode_summary=False)
    second.train(resume_from_checkpoint=True)
    restored = next(cb for cb in second.callback_handler.callbacks if isinstance(cb, MetricEarlyStoppingCallback))
    assert restored.wait == 5 and restored.best == 0.0  # 3 non-improving checks before the save, 2 after


def test_bad_callback_arguments():
    with pytest.raises(ValueError, match="mode='median' must be 'min' or 'max'"):
        MetricEarlyStoppingCallback("loss", mode="median")
    with pytest.raises(ValueError, match="patience=0 must be >= 1"):
        MetricEarlyStoppingCallback("loss", patience=0)
    with pytest.raises(ValueError, match="window=3 must be"):
        TrainingDiagnosticsCallback(window=3)


def test_resume_with_a_stateful_callback_the_checkpoint_did_not_have(make_trainer):
    """transformers raises KeyError at the first save after such a resume; our stateful callbacks register."""
    first = make_trainer("psr", max_steps=2, save_strategy="steps", save_steps=2)
    first.train()
    checkpoint = f"{first.args.output_dir}/checkpoint-2"
    second = make_trainer("psr", max_steps=4, save_strategy="steps", save_steps=2,
                          callbacks=[TrainingDiagnosticsCallback(), MetricEarlyStoppingCallback("reward", "max",
                                                                                                patience=50)])
    second.train(resume_from_checkpoint=checkpoint)
    saved = json.loads(open(f"{first.args.output_dir}/checkpoint-4/trainer_state.json").read())
    assert {"TrainingDiagnosticsCallback", "MetricEarlyStoppingCallback"} <= set(saved["stateful_callbacks"])
