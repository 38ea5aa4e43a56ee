"""Mode grpo leaves the completions of zero-variance groups out of the forward pass, and stays `GRPOTrainer`:
the same seed gives the same weights, for every `loss_type`, while a forward hook sees only informative rows."""

import json
import zlib

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from hf_trainkit.rl.advantages import informative_groups, teaching_rows

from .test_filtered_grpo_trainer import LOSS_TYPES


def is_flat_rule(rule):
    return zlib.crc32(rule.encode()) % 2 == 0


class HalfFlatReward:
    """Every completion of a prompt whose rule hashes even gets 1.0 (a zero-variance group); the others alternate
    1, 0, 1, 0 within the group. Records how many completions of informative groups it has scored."""

    __name__ = "half_flat_reward"

    def __init__(self):
        self.informative_rows = 0
        self.rows = 0

    def __call__(self, completions, rule, **kwargs):
        rewards = [1.0 if is_flat_rule(r) else float(i % 2 == 0) for i, r in enumerate(rule)]
        self.rows += len(rewards)
        self.informative_rows += sum(not is_flat_rule(r) for r in rule)
        return rewards


class TrainingForwardCounter:
    """Counts the rows of every forward pass that builds a graph (the loss passes; generation runs without)."""

    def __init__(self, model):
        self.rows = 0
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        if torch.is_grad_enabled():
            self.rows += kwargs.get("input_ids", args[0] if args else None).shape[0]


# Plain SGD: Adam divides each gradient by its own running size, which turns the last-bit differences of a
# gradient that is ~0 (float sums taken over a different number of rows) into differences of a whole step.
SGD = dict(optim="sgd", learning_rate=0.5)


def run(make_trainer, trl, steps=3, **config):
    reward = HalfFlatReward()
    kwargs = dict(max_steps=steps, per_device_train_batch_size=32, reward_funcs=[reward], **SGD, **config)
    if trl:
        trainer = make_trainer("grpo", trainer_cls=GRPOTrainer, config_cls=GRPOConfig, **kwargs)
    else:
        trainer = make_trainer("grpo", log_mode_summary=False, **kwargs)
    counter = TrainingForwardCounter(trainer.model)
    trainer.train()
    counter.handle.remove()
    return trainer, reward, counter


def assert_same_weights(plain, ours, seed=0):
    from hf_trainkit.tasks.digit import build_tiny_model

    initial = build_tiny_model(ours.processing_class, seed=seed)
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(ours.model.parameters(), initial.parameters()))
    assert moved > 1e-3, "training did not move the weights: nothing was compared"
    for (name, theirs), mine in zip(plain.model.named_parameters(), ours.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_flat_groups_never_reach_the_model_and_the_weights_are_trls(make_trainer, loss_type):
    plain, _, plain_rows = run(make_trainer, trl=True, loss_type=loss_type)
    ours, reward, our_rows = run(make_trainer, trl=False, loss_type=loss_type)
    assert 0 < reward.informative_rows < reward.rows  # both kinds of group were there
    assert plain_rows.rows == reward.rows  # TRL runs every row
    assert our_rows.rows == reward.informative_rows, "completions of zero-variance groups reached the model"
    assert_same_weights(plain, ours)
    for theirs, mine in zip([h for h in plain.state.log_history if "loss" in h],
                            [h for h in ours.state.log_history if "loss" in h]):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4, abs=1e-6)
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4, abs=1e-6)
        assert mine["grpo/kept_ratio"] == pytest.approx(1 - theirs["frac_reward_zero_std"])


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo"])  # a row mean, a micro-batch and a global token mean
def test_with_gradient_accumulation_and_several_steps_per_generation(make_trainer, loss_type):
    """Each generation batch is shuffled and split into steps_per_generation micro-batches (TRL): the flat rows
    are spread over them, and every micro-batch keeps TRL's normaliser."""
    config = dict(loss_type=loss_type, gradient_accumulation_steps=2, steps_per_generation=4,
                  per_device_train_batch_size=16)
    reward = HalfFlatReward()
    plain = make_trainer("grpo", trainer_cls=GRPOTrainer, config_cls=GRPOConfig, max_steps=4,
                         reward_funcs=[HalfFlatReward()], **SGD, **config)
    plain.train()
    ours = make_trainer("grpo", max_steps=4, reward_funcs=[reward], log_mode_summary=False, **SGD, **config)
    counter = TrainingForwardCounter(ours.model)
    ours.train()
    assert counter.rows == reward.informative_rows < reward.rows
    assert_same_weights(plain, ours)


def test_kl_term_keeps_the_rows_and_says_so_once(make_trainer, toy_tokenizer, tmp_path, caplog):
    from hf_trainkit.tasks.digit import build_tiny_model

    base = str(tmp_path / "base")  # TRL loads the reference model of beta > 0 from the policy's path
    build_tiny_model(toy_tokenizer, seed=0).save_pretrained(base)
    with caplog.at_level("WARNING"):
        ours, reward, rows = run(make_trainer, trl=False, steps=2, beta=0.1, model=base)
    warnings = [r for r in caplog.records if "zero-variance groups" in r.getMessage()]
    assert len(warnings) == 1 and "beta=0.1" in warnings[0].getMessage()
    assert rows.rows == reward.rows  # the KL term reads every row: all of them run
    plain, _, _ = run(make_trainer, trl=True, steps=2, beta=0.1, model=base)
    assert_same_weights(plain, ours)


def test_keep_zero_variance_groups_runs_every_row(make_trainer):
    ours, reward, rows = run(make_trainer, trl=False, steps=2, drop_zero_variance_groups=False)
    assert rows.rows == reward.rows
    assert all(h["grpo/kept_ratio"] == 1.0 for h in ours.state.log_history if "grpo/kept_ratio" in h)


def test_teaching_rows_and_informative_groups():
    advantages = torch.tensor([0.0, 0.0, 0.7, -0.7, 0.0, 1.0])
    keep = torch.tensor([True, True, True, True, True, False])
    assert teaching_rows(advantages, keep).tolist() == [False, False, True, True, False, False]
    assert informative_groups(advantages, keep, 2).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="whole number of groups"):
        informative_groups(advantages, keep, 4)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_two_processes_with_uneven_kept_rows_gives_trls_weights(tmp_path):
    """Real `accelerate launch` of 2 ZeRO-3 processes (CPU, gloo): each rank runs only its informative rows, padded
    to the larger count of the two with zero-weight rows (every rank runs the same passes and collectives), and the
    final weights equal plain GRPOTrainer's under the same launch."""
    pytest.importorskip("deepspeed", reason="pip install -e '.[deepspeed]'")
    from safetensors.torch import load_file

    from tests.distributed.test_deepspeed_zero3 import HARNESS, run, zero3

    harness = HARNESS.parents[1] / "rl" / "zero3_flat_groups.py"
    runs = {}
    for kind in ("trl", "ours"):
        out = tmp_path / kind
        command = zero3(2, script=harness)
        command.remove("--no-loss-curve")
        run([*command, kind, str(out)])
        runs[kind] = out
    views = [json.loads((runs["ours"] / f"rows_rank_{i}.json").read_text()) for i in (0, 1)]
    assert [v["world_size"] for v in views] == [2, 2]
    informative = list(zip(views[0]["informative"], views[1]["informative"]))
    assert len(informative) == 4 and any(a != b for a, b in informative), "the ranks never kept unequal rows"
    expected = [max(max(pair), 1) for pair in informative]
    assert views[0]["forwarded"] == views[1]["forwarded"] == expected
    plain_rows = json.loads((runs["trl"] / "rows_rank_0.json").read_text())["forwarded"]
    assert plain_rows == [16] * 4
    theirs, mine = (load_file(str(runs[k] / "model.safetensors")) for k in ("trl", "ours"))
    assert theirs.keys() == mine.keys()
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("argv,drop,dynamic,rounds", [
    ([], True, False, 3),
    (["--keep-zero-variance-groups"], False, False, 3),
    (["--dynamic-sampling"], True, True, 3),
    (["--dynamic-sampling", "5"], True, True, 5),
])
def test_script_flags(tmp_path, argv, drop, dynamic, rounds):
    from hf_trainkit.commands.train_grpo import parse_options
    from hf_trainkit.training.options import build_config, resolve_defaults

    config = build_config(resolve_defaults(parse_options([*argv, "--output-dir", str(tmp_path)])))
    assert (config.drop_zero_variance_groups, config.dynamic_sampling, config.dynamic_sampling_max_rounds) == (
        drop, dynamic, rounds)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_zero_weight_padding_rows_keep_trls_loss(make_trainer, loss_type):
    """As on a ZeRO-3 rank that keeps fewer rows than another: zero-weight padding rows even out the row counts, and
    the loss and gradient are still TRL's on the whole batch, flat groups included."""
    from .test_filtered_grpo_trainer import generation_inputs, gradients

    trainer = make_trainer("grpo", loss_type=loss_type, reward_funcs=[HalfFlatReward()],
                           per_device_train_batch_size=32, log_mode_summary=False)
    trainer._rows_per_rank = lambda kept, device: kept + 3
    model = trainer.model
    model.train()
    batch = trainer._generate_and_score_completions(generation_inputs(trainer, num_prompts=4))
    assert 0 < int(batch["keep"].sum()) < 32
    counter = TrainingForwardCounter(model)
    model.zero_grad()
    loss = trainer._compute_loss(model, batch)
    loss.backward()
    ours = gradients(model)
    counter.handle.remove()
    assert counter.rows == int(batch["keep"].sum()) + 3
    model.zero_grad()
    reference = GRPOTrainer._compute_loss(trainer, model, {k: v for k, v in batch.items() if k not in ("keep", "counted")})
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)
    for mine, ref in zip(ours, gradients(model)):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-7)
