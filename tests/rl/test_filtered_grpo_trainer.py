"""FilteredGRPOTrainer against TRL's GRPOTrainer, on a tiny model built from a config (CPU, offline)."""

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from hf_trainkit.rl import FilteredGRPOConfig, compute_mode_advantages


LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]


def alternating_reward(completions, **kwargs):
    """1, 0, 1, 0, ...: half of every group is positive, whatever the model writes."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def generation_inputs(trainer, num_prompts=2):
    """Rows as TRL's sampler repeats them; also sets what `Trainer.train` would have set before a loss."""
    trainer.current_gradient_accumulation_steps = 1
    rows = [trainer.train_dataset[i] for i in range(num_prompts)]
    return [row for row in rows for _ in range(trainer.num_generations)]


class ForwardRecorder:
    """Records the batch size of every forward pass of the model."""

    def __init__(self, model):
        self.batch_sizes = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.batch_sizes.append(input_ids.shape[0])

    def remove(self):
        self.handle.remove()


def trl_inputs_on_kept_rows(batch, keep):
    """The batch TRL would build had the dropped completions never existed (written independently of the trainer)."""
    subset = {}
    for key, value in batch.items():
        if key == "keep":
            continue
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            subset[key] = value[keep]
        else:
            subset[key] = value
    subset["num_items_in_batch"] = batch["completion_mask"][keep].sum()
    return subset


def gradients(model):
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("mode,padding", [("psr", 0), ("nsr", 0), ("w-reinforce", 0), ("nsr", 3)])
def test_loss_equals_trl_loss_on_kept_samples(make_trainer, loss_type, mode, padding):
    trainer = make_trainer(mode, loss_type=loss_type, reward_funcs=alternating_reward)
    if padding:
        # As on a rank with fewer kept samples than another: zero-weight rows even out the row counts.
        trainer._rows_per_rank = lambda kept, device: kept + padding
    model = trainer.model
    model.train()
    batch = trainer._generate_and_score_completions(generation_inputs(trainer))
    expected_keep = torch.tensor([(i % 2 == 0) == (mode == "psr") for i in range(16)])
    if mode == "w-reinforce":
        expected_keep = torch.ones(16, dtype=torch.bool)
        assert "keep" not in batch  # nothing to drop: the batch goes to TRL's loss untouched
        torch.testing.assert_close(batch["advantages"], torch.tensor([0.1, -1.0] * 8))
    else:
        keep = batch["keep"]
        assert keep.tolist() == expected_keep.tolist()
        # The loss denominator of token-normalised losses counts kept tokens only.
        assert batch["num_items_in_batch"].item() == batch["completion_mask"][keep].sum().item()
    keep = expected_keep

    recorder = ForwardRecorder(model)
    model.zero_grad()
    loss = trainer._compute_loss(model, batch)
    loss.backward()
    ours = gradients(model)
    recorder.remove()
    assert recorder.batch_sizes == [int(keep.sum()) + padding], "dropped samples reached the forward pass"

    model.zero_grad()
    reference = GRPOTrainer._compute_loss(trainer, model, trl_inputs_on_kept_rows(batch, keep))
    reference.backward()
    theirs = gradients(model)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)
    assert len(ours) == len(theirs) > 0
    for mine, ref in zip(ours, theirs):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-7)


def test_nsr_gradient_is_the_plain_reinforce_gradient_of_negatives(make_trainer):
    """loss_type='grpo', on-policy: the gradient is -(1/K) sum_i A_i mean_t grad log p(token_t) over kept rows."""
    trainer = make_trainer("nsr", loss_type="grpo", negative_weight=2.0, reward_funcs=alternating_reward)
    model = trainer.model
    model.train()
    batch = trainer._generate_and_score_completions(generation_inputs(trainer))
    model.zero_grad()
    trainer._compute_loss(model, batch).backward()
    ours = gradients(model)

    keep = torch.tensor([i % 2 == 1 for i in range(16)])
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)[keep]
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)[keep]
    mask = batch["completion_mask"][keep].float()
    length = batch["completion_ids"].shape[1]
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=attention).logits[:, -length - 1 : -1] / trainer.temperature
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, -length:].unsqueeze(-1)).squeeze(-1)
    advantage = -2.0
    surrogate = -(advantage * (logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    surrogate.backward()
    for mine, plain in zip(ours, gradients(model)):
        torch.testing.assert_close(mine, plain, rtol=1e-4, atol=1e-6)


def test_rank_with_nothing_kept_still_runs_forward_and_backward(make_trainer):
    trainer = make_trainer("psr", loss_type="dapo", reward_funcs=alternating_reward)
    model = trainer.model
    model.train()
    batch = trainer._generate_and_score_completions(generation_inputs(trainer))
    batch["keep"] = torch.zeros_like(batch["keep"])
    recorder = ForwardRecorder(model)
    model.zero_grad()
    loss = trainer._compute_loss(model, batch)
    loss.backward()
    recorder.remove()
    assert recorder.batch_sizes == [1]  # one zero-weight row keeps this rank in every collective
    assert loss.item() == 0.0
    assert all(g.abs().max().item() == 0.0 for g in gradients(model))


def test_grpo_advantages_are_trls(make_trainer):
    """In 'grpo' mode the trainer keeps TRL's advantages; they equal the pure function's group formula."""
    trainer = make_trainer("grpo")
    trainer.model.train()
    batch = trainer._generate_and_score_completions(generation_inputs(trainer))
    rewards = trainer._total_rewards()
    expected = compute_mode_advantages(rewards, "grpo", num_generations=8).advantages
    torch.testing.assert_close(batch["advantages"], expected, rtol=1e-5, atol=1e-6)
    # Rows of advantage 0 (zero-variance groups) stay out of the forward pass; the normaliser still counts them.
    teaching = batch["advantages"] != 0
    assert batch.get("keep", torch.ones_like(teaching)).tolist() == teaching.tolist()
    assert bool(batch.get("counted", torch.ones_like(teaching)).all())


def test_grpo_mode_is_identical_to_grpo_trainer(make_trainer):
    """Bit for bit with every row in the forward pass; with zero-variance groups skipped (the default), equal to
    float tolerance: see test_zero_variance_groups.py."""
    steps = 6
    plain = make_trainer("grpo", trainer_cls=GRPOTrainer, config_cls=GRPOConfig, max_steps=steps)
    plain.train()
    ours = make_trainer("grpo", max_steps=steps, drop_zero_variance_groups=False)
    ours.train()
    plain_logs = [h for h in plain.state.log_history if "loss" in h]
    our_logs = [h for h in ours.state.log_history if "loss" in h]
    assert len(plain_logs) == len(our_logs) == steps
    for theirs, mine in zip(plain_logs, our_logs):
        for key in ("loss", "reward", "reward_std", "grad_norm", "entropy", "learning_rate"):
            assert mine[key] == theirs[key], (key, theirs["step"])
    for p_plain, p_ours in zip(plain.model.parameters(), ours.model.parameters()):
        assert torch.equal(p_plain, p_ours)


@pytest.mark.parametrize("mode", ["grpo", "psr", "nsr", "w-reinforce"])
def test_each_mode_trains_and_logs_its_metrics(make_trainer, capsys, mode):
    trainer = make_trainer(mode, max_steps=5)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    after = list(trainer.model.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after)), "no parameter was updated"

    prefix = mode.replace("-", "_")
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 5
    for entry in logs:
        positives, negatives = entry[f"{prefix}/positive_samples"], entry[f"{prefix}/negative_samples"]
        assert positives + negatives == 16
        # Rewards are 0/1 and the threshold 0.5, so the share of positives is the mean reward.
        assert entry[f"{prefix}/positive_ratio"] == pytest.approx(entry["reward"])
        assert entry[f"{prefix}/negative_ratio"] == pytest.approx(1 - entry["reward"])
        kept = {"psr": positives, "nsr": negatives}.get(mode, 16)
        if mode == "grpo":  # zero-variance groups (advantage 0) do not reach the model
            kept = 16 * (1 - entry["frac_reward_zero_std"])
        assert entry[f"{prefix}/kept_ratio"] == pytest.approx(kept / 16)
    if mode == "w-reinforce":
        assert "w_reinforce/pos_neg_ratio" in logs[0]
    printed = capsys.readouterr().out
    assert f"{mode.upper()} [Step 0]:" in printed
    assert f"{mode.upper()} [Step 4]:" in printed


@pytest.mark.parametrize("mode", ["psr", "w-reinforce", "nsr", "grpo"])
def test_reward_rises_on_the_toy_task(make_trainer, toy_tokenizer, mode):
    """From the toy task's base model (its warm-up knows the one-rule prompts, not the two-rule ones)."""
    from hf_trainkit.tasks.digit import build_toy_base_model

    trainer = make_trainer(mode, max_steps=120, log_mode_summary=False, model=build_toy_base_model(toy_tokenizer))
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    first, last = sum(rewards[:20]) / 20, sum(rewards[-20:]) / 20
    assert last > first + 0.2, (first, last)


def test_lora_trains_only_the_adapter(make_trainer):
    from peft import LoraConfig

    trainer = make_trainer("w-reinforce", max_steps=3, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    named = dict(trainer.model.named_parameters())
    before = {name: p.detach().clone() for name, p in named.items()}
    trainer.train()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(before[name], p)}
    assert changed and all("lora_" in name for name in changed)
    assert any("w_reinforce/kept_ratio" in h for h in trainer.state.log_history)


def test_args_must_be_a_filtered_config(make_trainer):
    with pytest.raises(TypeError, match="args must be a FilteredGRPOConfig"):
        make_trainer("grpo", config_cls=GRPOConfig)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "nsrr"}, r"mode='nsrr' is not supported; use one of 'grpo', 'psr', 'nsr', 'w-reinforce'"),
        ({"mode": "w-reinforce", "positive_weight": -0.5}, r"positive_weight=-0.5 must be >= 0"),
        ({"mode": "nsr", "negative_weight": -1.0}, r"negative_weight=-1.0 must be >= 0"),
        ({"mode": "w-reinforce", "positive_weight": 0.0}, r"positive_weight=0 is NSR"),
        ({"mode": "psr", "reward_threshold": float("nan")}, r"reward_threshold=nan"),
    ],
)
def test_bad_config(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FilteredGRPOConfig(output_dir=str(tmp_path), **kwargs)


def test_mode_aliases_are_canonical(tmp_path):
    assert FilteredGRPOConfig(output_dir=str(tmp_path), mode="W_Reinforce").mode == "w-reinforce"


def test_a_starved_filter_is_warned_about_once_by_the_trainer(make_trainer, caplog):
    """PSR with a reward that is never positive trains on nothing: one warning (the trainer's, which sees every
    batch), with the direction to move the threshold; the live diagnostics do not repeat it."""
    from hf_trainkit.callbacks import TrainingDiagnosticsCallback

    diagnostics = TrainingDiagnosticsCallback()
    trainer = make_trainer("psr", reward_funcs=lambda completions, **kw: [0.0] * len(completions), max_steps=6,
                           starvation_warning_steps=2, callbacks=[diagnostics])
    trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "positive samples" in r.getMessage()]
    assert len(warnings) == 1 and "for 2 generation batches in a row" in warnings[0]
    assert "Lower --reward-threshold" in warnings[0]
    assert not [f for f in diagnostics.findings if "reward filter" in f["message"]]
