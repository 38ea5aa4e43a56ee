"""The checkpoint callbacks as separate parts: a keep-rule plugged into the manager, one agreement per step for
signals and control requests together, and the policy as a group of those parts."""

from hf_trainkit.callbacks import (CheckpointManagerCallback, CheckpointPolicyCallback, LiveControlCallback,
                                   ResumeChecksCallback)
from hf_trainkit.checkpointing import list_checkpoints


def test_a_keep_rule_decides_what_the_manager_deletes(make_trainer, tmp_path):
    def drop_steps_1_and_3(checkpoints, protected):
        return [c for c in checkpoints if c.step in (1, 3) and c.name not in protected]

    out = tmp_path / "run"
    manager = CheckpointManagerCallback(keep_rule=drop_steps_1_and_3)
    trainer = make_trainer("psr", max_steps=5, save_strategy="steps", save_steps=1, output_dir=str(out),
                           callbacks=[manager])
    trainer.train()
    # The rule, not save_total_limit (none here: the Trainer's would keep all), chose what went.
    assert [c.step for c in list_checkpoints(out)] == [2, 4, 5]
    assert all(c.valid for c in list_checkpoints(out))


def test_signals_and_control_requests_share_one_agreement_per_step(make_trainer, tmp_path, monkeypatch):
    from hf_trainkit.callbacks import live_control

    calls = []
    real = live_control.agree_on_max_each
    monkeypatch.setattr(live_control, "agree_on_max_each", lambda values: calls.append(list(values)) or real(values))
    trainer = make_trainer("psr", max_steps=4, output_dir=str(tmp_path / "run"),
                           callbacks=[CheckpointPolicyCallback(handle_signals=False), LiveControlCallback()])
    trainer.train()
    assert calls == [[0, 0]] * 4  # one per step: [signal, request], nothing asked


def test_the_policy_is_a_group_of_the_parts():
    policy = CheckpointPolicyCallback(monitor="reward", save_top_k=2, save_total_limit=None)
    assert policy.find(CheckpointManagerCallback) is policy.manager
    assert policy.find(ResumeChecksCallback) is not None
    assert policy.find(LiveControlCallback).watch_requests is False  # signals only
    assert CheckpointPolicyCallback(handle_signals=False).find(LiveControlCallback) is None
    assert policy.manager.keep_rule == policy.checkpoints_to_delete
