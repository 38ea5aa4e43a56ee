"""PassAtKCallback in a real FilteredGRPOTrainer (one process; the two-process run is in tests/distributed)."""

import pytest
import torch

from hf_trainkit.callbacks import CheckpointPolicyCallback, PassAtKCallback
from hf_trainkit.tasks.digit import build_toy_dataset


def train_with(make_trainer, callback_kwargs=None, **config):
    trainer = make_trainer("psr", max_steps=4, **config)
    if callback_kwargs is not None:
        trainer.add_callback(PassAtKCallback(trainer, build_toy_dataset(split="heldout"), **callback_kwargs))
    trainer.train()
    return trainer


def test_logs_pass_at_k_before_training_every_n_steps_and_at_the_end(make_trainer):
    trainer = train_with(make_trainer, dict(n=8, ks=(1, 4, 8, 64), every_n_steps=3))
    evals = [h for h in trainer.state.log_history if "eval/pass@1" in h]
    assert [h["step"] for h in evals] == [0, 3, 4]  # the base, every 3 steps, the last step
    for entry in evals:
        assert {"eval/pass@1", "eval/pass@4", "eval/pass@8", "eval/entropy", "eval/coverage",
                "eval/mean_reward"} <= set(entry) and "eval/pass@64" not in entry  # k > n cannot be estimated
        assert entry["eval/num_prompts"] == 6
        assert 0 <= entry["eval/pass@1"] <= entry["eval/pass@4"] <= entry["eval/pass@8"] <= 1
        assert entry["eval/pass@1"] == pytest.approx(entry["eval/mean_reward"])  # 0/1 rewards
    # The regular training logs still carry the mode metrics (the GRPO metrics were not taken by the eval log).
    assert sum("psr/kept_samples" in h for h in trainer.state.log_history) == 4


def test_training_is_unchanged_by_the_evaluations(make_trainer):
    plain = train_with(make_trainer)
    evaluated = train_with(make_trainer, dict(n=16, every_n_steps=1))
    rewards = lambda t: [h["reward"] for h in t.state.log_history if "reward" in h and "eval/pass@1" not in h]
    assert rewards(plain) == rewards(evaluated)
    for a, b in zip(plain.model.parameters(), evaluated.model.parameters()):
        assert torch.equal(a, b)


def test_a_failing_evaluation_warns_and_training_goes_on(make_trainer, caplog):
    def broken_reward(completions, **kwargs):
        raise RuntimeError("reward server down")

    trainer = train_with(make_trainer, dict(n=4, ks=(1,), every_n_steps=2, reward_funcs=[broken_reward]))
    assert trainer.state.global_step == 4
    assert not any("eval/pass@1" in h for h in trainer.state.log_history)
    assert "skipped the evaluation at step" in caplog.text and "reward server down" in caplog.text


def test_checkpoint_policy_can_keep_the_best_pass_at_1(make_trainer, tmp_path):
    trainer = make_trainer("psr", max_steps=4, save_strategy="steps", save_steps=2, output_dir=str(tmp_path / "run"))
    trainer.add_callback(PassAtKCallback(trainer, build_toy_dataset(split="heldout"), n=8, ks=(1,), every_n_steps=1))
    trainer.add_callback(CheckpointPolicyCallback(monitor="eval/pass@1", save_top_k=1))
    trainer.train()
    from hf_trainkit.checkpointing import list_checkpoints

    saved = list_checkpoints(tmp_path / "run")
    scores = {h["step"]: h["eval/pass@1"] for h in trainer.state.log_history if "eval/pass@1" in h}
    best = max((2, 4), key=lambda step: (scores[step], -step))
    assert {c.step for c in saved} == {best, 4}
    assert all(c.marker["monitor"]["key"] == "eval/pass@1" for c in saved)


def test_bad_arguments_are_one_line_errors(make_trainer):
    trainer = make_trainer("psr", max_steps=1)
    with pytest.raises(ValueError, match="between 1 and n=4"):
        PassAtKCallback(trainer, build_toy_dataset(split="heldout"), n=4, ks=(8,))
    with pytest.raises(ValueError, match="'prompt' column"):
        PassAtKCallback(trainer, [{"question": "x"}], n=4, ks=(1,))


def test_a_resumed_run_does_not_log_its_model_as_the_base(make_trainer, tmp_path):
    out = str(tmp_path / "run")
    first = make_trainer("psr", max_steps=2, save_strategy="steps", save_steps=2, output_dir=out)
    first.add_callback(PassAtKCallback(first, build_toy_dataset(split="heldout"), n=4, ks=(1,), every_n_steps=100))
    first.train()
    from transformers import TrainerCallback

    class EvalLogs(TrainerCallback):  # what W&B and every other on_log consumer receive
        seen = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "eval/pass@1" in logs:
                self.seen.append(state.global_step)

    resumed = make_trainer("psr", max_steps=4, save_strategy="steps", save_steps=2, output_dir=out,
                           callbacks=[EvalLogs()])
    resumed.add_callback(PassAtKCallback(resumed, build_toy_dataset(split="heldout"), n=4, ks=(1,),
                                         every_n_steps=100))
    resumed.train(resume_from_checkpoint=f"{out}/checkpoint-2")
    assert EvalLogs.seen == [4]  # the resumed model was never evaluated (and sent to W&B) as the base
    steps = [h["step"] for h in resumed.state.log_history if "eval/pass@1" in h]
    assert steps == [0, 2, 4]  # the base and step 2 from the first run, step 4 from this one: no second "step 0"
    first_base = next(h for h in first.state.log_history if h.get("step") == 0 and "eval/pass@1" in h)
    assert next(h for h in resumed.state.log_history if h.get("step") == 0) == first_base


def test_works_with_trl_grpo_trainer(make_trainer):
    from trl import GRPOConfig, GRPOTrainer

    trainer = make_trainer(trainer_cls=GRPOTrainer, config_cls=GRPOConfig, max_steps=2)
    trainer.add_callback(PassAtKCallback(trainer, build_toy_dataset(split="heldout"), n=8, ks=(1, 8),
                                         every_n_steps=2))
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval/pass@8" in h]
    assert [h["step"] for h in evals] == [0, 2] and all(h["eval/num_prompts"] == 6 for h in evals)
    assert sum("reward" in h for h in trainer.state.log_history if "eval/pass@1" not in h) >= 2  # training logs kept
