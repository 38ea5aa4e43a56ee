"""Checkpoint policies: best N by a metric, save on improvement + interval, pinned names, checkpoints off."""

import json
import math
from pathlib import Path

import pytest

from tests.testing_utils import log_history

from hf_trainkit.callbacks import CheckpointPolicyCallback
from hf_trainkit.checkpointing import (CheckpointInfo, best_checkpoints, checkpoints_to_delete, is_improvement,
                                       list_checkpoints, validate_checkpoint_name)
from hf_trainkit.checkpointing.policy import pinned_names
from hf_trainkit.metric_rules import default_mode


def info(step, value=None, valid=True, pinned=False):
    marker = {"monitor": {"key": "reward", "value": value}} if value is not None else {}
    if pinned:
        marker["pinned"] = True
    return CheckpointInfo(path=Path(f"checkpoint-{step}"), step=step, valid=valid, marker=marker)


def debiased_ema(values, weight):
    """TensorBoard's smoothing, written out plainly: s_t = w*s_{t-1} + (1-w)*x_t, divided by 1 - w^t."""
    out, s = [], 0.0
    for t, x in enumerate(values, start=1):
        s = weight * s + (1 - weight) * x
        out.append(s / (1 - weight**t))
    return out


def expected_improvements(values, weight, mode="max", min_delta=0.0, noise_aware=True):
    """Indices where the smoothed value beats the best so far by more than min_delta and, once 8 values are in, by
    more than its noise: 2.326 (one-sided 1 %) x sqrt(2) x the per-log sd from successive differences
    (sqrt(mean(d^2) / 2)) x sqrt((1 - w) / (1 + w)), the sd of an EMA of weight w. The first is the baseline."""
    smoothed = debiased_ema(values, weight) if weight else list(values)
    found, best = [], smoothed[0]
    for i, v in enumerate(smoothed[1:], start=1):
        gain = (v - best) if mode == "max" else (best - v)
        differences = [b - a for a, b in zip(values[: i + 1], values[1: i + 1])]
        margin = 0.0
        if noise_aware and len(differences) >= 7:
            sd = math.sqrt(sum(d * d for d in differences) / len(differences) / 2)
            margin = 2.3263 * math.sqrt(2) * sd * math.sqrt((1 - weight) / (1 + weight))
        if gain > min_delta and gain > margin:
            found.append(i)
            best = v
    return found, smoothed


# --- pure decisions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,best,mode,delta,relative,expected", [
    (0.5, None, "max", 0.0, False, True),
    (0.51, 0.5, "max", 0.0, False, True),
    (0.5, 0.5, "max", 0.0, False, False),          # equal is not better
    (0.52, 0.5, "max", 0.05, False, False),         # within the absolute margin
    (0.56, 0.5, "max", 0.05, False, True),
    (1.9, 2.0, "min", 0.04, True, True),            # 5% better than 2.0 > 4%
    (1.95, 2.0, "min", 0.04, True, False),          # 2.5% < 4%
    (float("nan"), 0.5, "max", 0.0, False, False),
])
def test_is_improvement(value, best, mode, delta, relative, expected):
    assert is_improvement(value, best, mode, delta, relative) is expected


def test_best_checkpoints_and_rotation_keep_best_newest_and_pinned():
    values = {2: 0.3, 4: 0.9, 6: 0.5, 8: 0.9, 10: 0.1, 12: 0.2}
    infos = [info(s, v) for s, v in values.items()] + [info(14, None), info(16, 0.95, valid=False)]
    infos.append(info(13, 0.0, pinned=True))
    infos.sort(key=lambda c: c.step)
    best = best_checkpoints(infos, "reward", "max", 2)
    assert [c.step for c in best] == [4, 8]  # tie at 0.9: the older first; the invalid 0.95 never counts
    protected = {c.name for c in best} | pinned_names(infos)
    deleted = {c.step for c in checkpoints_to_delete(infos, None, protected, keep_only_protected=True)}
    # kept: best two, the pinned one, the newest valid (14, no value yet) and the invalid 16 (newer than any valid)
    assert deleted == {2, 6, 10, 12}
    assert [c.step for c in best_checkpoints(infos, "reward", "min", 1)] == [13]


@pytest.mark.parametrize("name,ok", [
    ("best-so-far", True), ("v1.2_final", True), ("a" * 64, True), ("a" * 65, False), ("../up", False),
    ("a/b", False), ("a\\b", False), ("", False), (".hidden", False), ("x..y", False), ("sp ace", False),
])
def test_checkpoint_names(name, ok):
    if ok:
        assert validate_checkpoint_name(name) == name
    else:
        with pytest.raises(ValueError):
            validate_checkpoint_name(name)


def test_default_modes():
    assert [default_mode(k) for k in ("reward", "nsr/avg_reward", "eval_accuracy", "eval_loss", "loss")] == \
        ["max", "max", "max", "min", "min"]


def test_smoothing_ignores_a_lucky_batch():
    # A reward rising steadily from 0.2 to 0.6, with one lucky batch of 0.95 at index 5.
    rewards = [0.2 + 0.4 * i / 29 for i in range(30)]
    rewards[5] = 0.95
    raw = CheckpointPolicyCallback(monitor="reward", save_on_improvement=True, smoothing=0.0)
    smooth = CheckpointPolicyCallback(monitor="reward", save_on_improvement=True, smoothing=0.9)
    raw_hits = [i for i, r in enumerate(rewards) if raw.observe(r)]
    smooth_hits = [i for i, r in enumerate(rewards) if smooth.observe(r)]
    assert raw_hits == expected_improvements(rewards, 0.0)[0] == [1, 2, 3, 4, 5]  # nothing beats the lucky 0.95
    expected, smoothed = expected_improvements(rewards, 0.9)
    assert smooth_hits == expected and smooth.current == pytest.approx(smoothed[-1])
    # The steady rise is still seen late in the run; its small steps count once they add up beyond the noise
    # (which the lucky batch inflates), not at every log.
    assert smooth_hits[-1] >= 25 and len(smooth_hits) < 29
    plain = CheckpointPolicyCallback(monitor="reward", save_on_improvement=True, smoothing=0.9, noise_aware=False)
    assert [i for i, r in enumerate(rewards) if plain.observe(r)] == expected_improvements(rewards, 0.9,
                                                                                           noise_aware=False)[0]


def test_bad_policy_arguments():
    for kwargs in ({"save_top_k": 2}, {"monitor": "reward", "save_top_k": 0}, {"monitor": "x", "mode": "up"},
                   {"monitor": "reward", "smoothing": 1.0}, {"monitor": "reward", "min_delta": -1},
                   {"monitor": "reward", "save_top_k": 2, "save_total_limit": 3}):
        with pytest.raises(ValueError, match="CheckpointPolicyCallback"):
            CheckpointPolicyCallback(**kwargs)


# --- real training runs ---------------------------------------------------------------------------------------------


history = log_history


def test_best_n_by_training_reward_in_grpo(make_trainer):
    policy = CheckpointPolicyCallback(monitor="reward", save_top_k=2, smoothing=0.0)
    trainer = make_trainer("psr", max_steps=12, save_strategy="steps", save_steps=2, callbacks=[policy])
    trainer.train()
    out = Path(trainer.args.output_dir)
    reward_at = {h["step"]: h["reward"] for h in history_of(trainer) if "reward" in h}
    saved = list(range(2, 13, 2))
    # The two best rewards among the saved steps (ties: the older), plus the newest for resuming.
    best_two = sorted(saved, key=lambda s: (-reward_at[s], s))[:2]
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == sorted(set(best_two) | {12})
    for checkpoint in list_checkpoints(out):
        assert checkpoint.valid
        assert checkpoint.marker["monitor"]["value"] == reward_at[checkpoint.step]
        assert checkpoint.marker["metrics"]["reward"] == reward_at[checkpoint.step]


def history_of(trainer):
    return trainer.state.log_history


def test_save_on_improvement_plus_interval_records_reasons(make_trainer):
    policy = CheckpointPolicyCallback(monitor="reward", save_on_improvement=True, smoothing=0.5)
    trainer = make_trainer("grpo", max_steps=15, save_strategy="steps", save_steps=5, callbacks=[policy])
    trainer.train()
    logs = [h for h in history_of(trainer) if "reward" in h]
    improved_idx, smoothed = expected_improvements([h["reward"] for h in logs], 0.5)
    improved = {logs[i]["step"] for i in improved_idx}
    assert improved, "the toy reward rises: there must be improvements to test"
    found = {c.step: c for c in list_checkpoints(trainer.args.output_dir)}
    assert set(found) == improved | {5, 10, 15}
    for step, checkpoint in found.items():
        reasons = set(checkpoint.marker["reasons"])
        assert ("improved" in reasons) == (step in improved)
        assert ("interval" in reasons) == (step in (5, 10) and step not in improved)
        assert ("final" in reasons) == (step == 15)
        assert checkpoint.marker["monitor"]["value"] == pytest.approx(smoothed[step - 1])
        assert checkpoint.marker["metrics"]["reward"] == logs[step - 1]["reward"]


def test_best_n_by_eval_metric_with_a_plain_trainer(tmp_path):
    from tests.plain_trainer import build_plain_trainer

    policy = CheckpointPolicyCallback(monitor="eval_loss", save_top_k=1)
    trainer = build_plain_trainer(tmp_path / "plain", max_steps=9, save_steps=3, eval_steps=3, callbacks=[policy])
    trainer.train()
    evals = {h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h}
    best = min(evals, key=lambda s: (evals[s], s))
    kept = {c.step for c in list_checkpoints(tmp_path / "plain")}
    assert kept == {best, 9}
    assert policy.smoothing == 0.0  # eval metrics are compared raw


def test_policy_state_survives_a_resume(make_trainer, tmp_path):
    first = make_trainer("psr", max_steps=6, save_strategy="steps", save_steps=3,
                         callbacks=[CheckpointPolicyCallback(monitor="reward", save_on_improvement=True)])
    first.train()
    saved = json.loads((Path(first.args.output_dir) / "checkpoint-6" / "hf_trainkit_complete.json").read_text())
    resumed_policy = CheckpointPolicyCallback(monitor="reward", save_on_improvement=True)
    second = make_trainer("psr", max_steps=7, save_strategy="steps", save_steps=3, callbacks=[resumed_policy])
    second.train(resume_from_checkpoint=str(Path(first.args.output_dir) / "checkpoint-6"))
    logs = [h["reward"] for h in second.state.log_history if "reward" in h]
    _, smoothed = expected_improvements(logs, 0.9)
    # The EMA went on from the checkpoint's state (not from scratch): it equals the EMA over all 7 logs.
    assert saved["monitor"]["ema_count"] == 6
    assert resumed_policy.current == pytest.approx(smoothed[-1])
    assert not math.isnan(resumed_policy.best)


def test_checkpoints_off_still_writes_everything_else(tmp_path):
    """--no-save-checkpoints: no checkpoint folder, but plots, stats, W&B (offline) and trainer_state.json."""
    from tests.test_scripts import TRAIN, run_script

    out = tmp_path / "off"
    result = run_script(TRAIN, "--mode", "nsr", "--output-dir", out, "--max-steps", "6", "--save-steps", "2",
                        "--no-save-checkpoints", "--wandb-every", "2", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [p for p in out.rglob("*") if p.is_dir() and p.name.startswith("checkpoint")]
    assert (out / "img" / "loss_curve.png").stat().st_size > 0 and (out / "training_stats.json").exists()
    assert len([h for h in history(out) if "nsr/avg_reward" in h]) == 6
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (out / "training_complete.json").exists()
