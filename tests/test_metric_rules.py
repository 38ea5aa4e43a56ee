"""One rule for a monitored metric, the same in every callback and in the monitor."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hf_trainkit.metric_rules import SmoothedMetric, default_mode, default_smoothing, is_improvement


@pytest.mark.parametrize("key,mode", [("reward", "max"), ("eval_f1", "max"), ("eval/pass@1", "max"),
                                      ("eval/coverage", "max"), ("nsr/avg_reward", "max"), ("loss", "min"),
                                      ("eval_loss", "min"), ("eval/entropy", "min"), ("kl", "min")])
def test_one_default_mode_everywhere(key, mode, tmp_path):
    from hf_trainkit.callbacks import CheckpointPolicyCallback, TrainingDiagnosticsCallback
    from hf_trainkit.monitor.load import parse_state
    from hf_trainkit.monitor.summary import monitored_metric
    from hf_trainkit.training.callbacks import build_callbacks
    from hf_trainkit.commands.train_grpo import parse_options

    assert default_mode(key) == mode
    assert CheckpointPolicyCallback(monitor=key).mode == mode
    options = parse_options(["--early-stopping-metric", key, "--output-dir", str(tmp_path)])
    stopper = next(cb for cb in build_callbacks(options) if type(cb).__name__ == "MetricEarlyStoppingCallback")
    assert stopper.mode == mode
    # The live diagnostics and the monitor's verdict judge a curve the same way round.
    assert TrainingDiagnosticsCallback(monitor=key).mode in (None, mode)
    if key in ("loss", "eval_loss"):
        run = parse_state({"log_history": [{key: 1.0, "step": 1}]}, tmp_path, "run")
        assert monitored_metric(run) == (key, mode)


def test_evaluation_keys_are_compared_raw():
    assert default_smoothing("eval_loss") == default_smoothing("eval/pass@1") == 0.0
    assert default_smoothing("reward") == 0.9


@pytest.mark.parametrize("value,best,mode,delta,relative,expected", [
    (1.0, None, "min", 0.0, False, True), (math.nan, None, "max", 0.0, False, False),
    (0.9, 1.0, "min", 0.05, False, True), (0.96, 1.0, "min", 0.05, False, False),
    (1.2, 1.0, "max", 0.1, True, True), (1.05, 1.0, "max", 0.1, True, False), (2.0, math.inf, "min", 0, False, True),
])
def test_is_improvement(value, best, mode, delta, relative, expected):
    assert is_improvement(value, best, mode, delta, relative) is expected


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 0.99))
def test_smoothed_metric_is_the_debiased_ema(values, weight):
    smoother = SmoothedMetric(weight)
    accumulator = 0.0
    for n, value in enumerate(values, start=1):
        accumulator = weight * accumulator + (1 - weight) * value  # TensorBoard's formula, written out
        expected = accumulator / (1 - weight ** n) if weight else value
        assert smoother.update(value) == pytest.approx(expected, rel=1e-9, abs=1e-6)
    restored = SmoothedMetric(weight)
    restored.load_state_dict(smoother.state_dict())
    assert restored.update(1.0) == pytest.approx(smoother.update(1.0))


def test_the_eval_counterpart_is_found_by_its_real_name():
    from hf_trainkit.metric_rules import eval_counterpart

    # PassAtKCallback logs eval/mean_reward and eval/pass@k; TRL logs eval_reward; the Trainer eval_loss.
    assert eval_counterpart({"eval/pass@1", "eval/mean_reward", "eval/pass@8"}, "reward") == "eval/mean_reward"
    assert eval_counterpart({"eval/pass@1", "eval/pass@8"}, "reward") == "eval/pass@1"
    assert eval_counterpart({"eval_loss", "eval_reward", "eval_reward_std"}, "reward") == "eval_reward"
    assert eval_counterpart({"eval_accuracy", "eval_loss"}, "rewards/digit_rule/mean") == "eval_accuracy"
    assert eval_counterpart({"eval_loss", "eval_runtime"}, "loss") == "eval_loss"
    assert eval_counterpart({"eval_runtime"}, "loss") is None
    assert eval_counterpart({"eval_loss"}, "reward") is None  # a loss is no counterpart of a reward
