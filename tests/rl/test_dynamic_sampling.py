"""Dynamic sampling: groups that teach the mode nothing are replaced by groups for fresh prompts, drawn in a
reproducible order that survives a resume."""

import json
import zlib

import pytest
import torch

from hf_trainkit.rl.dynamic_sampling import (REFILL_STATE_NAME, RefillSampler, assign_refills, concat_rows,
                                             group_keys, take_rows)


def is_flat_rule(rule):
    return zlib.crc32(rule.encode()) % 2 == 0


class FlatForMode:
    """A prompt whose rule hashes even gets `flat` for every completion (grpo: zero variance; psr with flat=0: no
    positive; nsr with flat=1: no negative); the others alternate 1, 0 within the group. Records the rules scored
    per call."""

    __name__ = "flat_for_mode"

    def __init__(self, flat):
        self.flat, self.calls = flat, []

    def __call__(self, completions, rule, **kwargs):
        self.calls.append(list(rule))
        return [self.flat if is_flat_rule(r) else float(i % 2 == 0) for i, r in enumerate(rule)]


FLAT = {"grpo": 1.0, "psr": 0.0, "nsr": 1.0}


def prompts_per_group(rules, num_generations=8):
    return rules[::num_generations]


@pytest.mark.parametrize("mode", ["grpo", "psr", "nsr"])
def test_uninformative_groups_are_replaced_by_fresh_informative_ones(make_trainer, mode):
    reward = FlatForMode(FLAT[mode])
    trainer = make_trainer(mode, reward_funcs=[reward], per_device_train_batch_size=32, log_mode_summary=False,
                           dynamic_sampling=True, dynamic_sampling_max_rounds=3)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    dataset = trainer.train_dataset
    first = [dataset[i] for i in range(4) for _ in range(8)]
    batch = trainer._generate_and_score_completions(first)

    # The refill prompts are the independent sampler's order, a whole generation batch (4 prompts) per round.
    order = RefillSampler(len(dataset), seed=0).draw(4 * 3)
    rounds = len(reward.calls) - 1
    assert rounds >= 1
    for r in range(rounds):
        assert prompts_per_group(reward.calls[1 + r]) == [dataset[i]["rule"] for i in order[4 * r:4 * r + 4]]
    # Which group ends where: slots in order, each taking the first unused informative refill group.
    slots = [rule for rule in prompts_per_group(reward.calls[0])]
    for r in range(rounds):
        fresh = [rule for rule in prompts_per_group(reward.calls[1 + r]) if not is_flat_rule(rule)]
        slots = [fresh.pop(0) if is_flat_rule(rule) and fresh else rule for rule in slots]
    metrics = trainer._metrics["train"]
    assert metrics["dynamic_sampling/rounds"] == [float(rounds)]
    assert metrics["dynamic_sampling/prompts_drawn"] == [4.0 * rounds]
    before = sum(not is_flat_rule(r) for r in prompts_per_group(reward.calls[0])) / 4
    assert metrics["dynamic_sampling/informative_ratio_before"] == [before]
    assert metrics["dynamic_sampling/informative_ratio_after"] == [sum(not is_flat_rule(r) for r in slots) / 4]
    if all(not is_flat_rule(r) for r in slots):
        assert rounds == 1 or any(is_flat_rule(r) for r in prompts_per_group(reward.calls[-2]))

    # The batch the policy sees: each slot's completions and rewards are those of the group now in it.
    prompt_text = trainer.processing_class.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
    assert [p.split(" =")[0].strip() for p in prompt_text[::8]] == slots
    rewards = trainer._total_rewards  # of the last round only; the merged ones went into the mode metrics
    expected_rewards = [FLAT[mode] if is_flat_rule(rule) else float(i % 2 == 0) for rule in slots for i in range(8)]
    prefix = "grpo" if mode == "grpo" else mode
    assert metrics[f"{prefix}/positive_samples"] == [float(sum(r > 0.5 for r in expected_rewards))]
    assert batch["completion_ids"].shape[0] == 32
    counted = batch.get("counted", batch.get("keep", torch.ones(32, dtype=torch.bool)))
    assert batch["num_items_in_batch"] == batch["completion_mask"][counted].sum()  # recounted on the final batch
    del rewards


def test_off_by_default(make_trainer):
    reward = FlatForMode(0.0)
    trainer = make_trainer("psr", reward_funcs=[reward], max_steps=2, log_mode_summary=False)
    trainer.train()
    assert len(reward.calls) == 2
    assert not any(k.startswith("dynamic_sampling/") for h in trainer.state.log_history for k in h)


def test_refill_sampler_order_state_and_passes():
    sampler = RefillSampler(5, seed=3)
    first_pass = sampler.draw(5)
    assert sorted(first_pass) == list(range(5))  # each prompt once per pass
    second = sampler.draw(7)
    assert sorted(second[:5]) == list(range(5)) and second[:5] != first_pass  # a new order for the next pass
    again = RefillSampler(5, seed=3)
    again.load_state_dict({"drawn": 5, "size": 5, "seed": 3})
    assert again.draw(7) == second
    with pytest.raises(ValueError, match="same data set and --seed"):
        again.load_state_dict({"drawn": 5, "size": 6, "seed": 3})


def test_assign_refills_only_within_a_process():
    keys = group_keys(4, 8, 16)  # two groups per process
    assert keys == [0, 0, 1, 1]
    needed = torch.tensor([True, False, True, True])
    available = torch.tensor([False, True, True, False])
    assert assign_refills(needed, available, keys) == {0: 1, 2: 2}
    assert group_keys(2, 8, 4) == [("slot", 0), ("slot", 1)]  # groups straddle processes: same slot only


def test_concat_and_take_rows_repad_like_a_plain_batch():
    a = {"prompt_ids": torch.tensor([[0, 5], [6, 7]]), "prompt_mask": torch.tensor([[0, 1], [1, 1]]),
         "completion_ids": torch.tensor([[1, 2, 0]] * 2), "completion_mask": torch.tensor([[1, 1, 0]] * 2),
         "advantages": torch.tensor([1.0, 2.0]), "num_items_in_batch": torch.tensor(4)}
    b = {"prompt_ids": torch.tensor([[8, 9, 10]]), "prompt_mask": torch.tensor([[1, 1, 1]]),
         "completion_ids": torch.tensor([[3]]), "completion_mask": torch.tensor([[1]]),
         "advantages": torch.tensor([3.0]), "num_items_in_batch": torch.tensor(1)}
    joined = take_rows(concat_rows(a, b, pad_token_id=0), torch.tensor([2, 1]))
    assert joined["prompt_ids"].tolist() == [[8, 9, 10], [0, 6, 7]]
    assert joined["prompt_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert joined["completion_ids"].tolist() == [[3, 0, 0], [1, 2, 0]]
    assert joined["completion_mask"].tolist() == [[1, 0, 0], [1, 1, 0]]
    assert joined["advantages"].tolist() == [3.0, 2.0]


def curves(trainer_or_history):
    history = trainer_or_history if isinstance(trainer_or_history, list) else trainer_or_history.state.log_history
    return [(h["step"], h["reward"], h["grad_norm"], h["loss"], h["dynamic_sampling/prompts_drawn"])
            for h in history if "reward" in h]


def test_resume_draws_the_same_refill_prompts(make_trainer, tmp_path):
    """A run resumed from checkpoint-2 draws the refill prompts the uninterrupted run drew after step 2: the
    sampler's state is in the checkpoint (without it, the resumed run would draw the first prompts again)."""
    config = dict(reward_funcs=[FlatForMode(0.0)], max_steps=4, log_mode_summary=False, dynamic_sampling=True,
                  dynamic_sampling_max_rounds=2, save_strategy="steps", save_steps=2)
    whole = make_trainer("psr", output_dir=str(tmp_path / "whole"), **config)
    whole.train()
    state = json.loads((tmp_path / "whole" / "checkpoint-2" / REFILL_STATE_NAME).read_text())
    assert state["drawn"] > 0
    resumed = make_trainer("psr", output_dir=str(tmp_path / "whole"), **config)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    assert resumed._refill_sampler.drawn == whole._refill_sampler.drawn
    assert curves(resumed) == curves(whole)  # steps 1-2 from the checkpoint's state, 3-4 trained again
    assert sum(h[4] for h in curves(whole)[2:]) > 0, "no refill after the checkpoint: nothing was compared"


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_is_bit_exact_with_dynamic_sampling(tmp_path):
    """scripts/train_grpo.py --dynamic-sampling, killed with SIGKILL at random moments and re-run (auto-resume):
    the same refill prompts are drawn, so every logged step equals an uninterrupted run's bit for bit."""
    import os
    import random
    import subprocess
    import sys

    from tests.checkpointing.conftest import QUIET, TRAIN
    from tests.checkpointing.test_checkpointing import kill_at_random_moments
    from tests.testing_utils import log_history

    def command(out):
        return [sys.executable, str(TRAIN), "--mode", "psr", "--dynamic-sampling", "2", "--output-dir", str(out),
                "--seed", "3", *QUIET, "--max-steps", "16", "--save-steps", "1"]

    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    assert subprocess.run(command(reference), capture_output=True, env=env, timeout=300).returncode == 0
    out = tmp_path / "killed"
    kills = kill_at_random_moments(command(out), out, random.Random(11), env, max_delay=0.6)
    final = subprocess.run(command(out), capture_output=True, text=True, env=env, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert kills >= 2
    expected = curves(log_history(reference))
    assert sum(step[4] for step in expected) > 0, "no refill was drawn: nothing was compared"
    assert curves(log_history(out)) == expected


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_two_processes_refill_alike_on_every_rank(tmp_path):
    """Real `accelerate launch` of 2 ZeRO-3 processes (CPU, gloo), psr with dynamic sampling: both ranks run the
    same number of refill rounds, each generating its share of the same fresh prompts (the refill sampler's
    order), and log the same metrics."""
    pytest.importorskip("deepspeed", reason="pip install -e '.[deepspeed]'")
    from hf_trainkit.tasks.digit import build_toy_dataset
    from tests.distributed.test_deepspeed_zero3 import HARNESS, run, zero3

    command = zero3(2, script=HARNESS.parents[1] / "rl" / "zero3_flat_groups.py")
    command.remove("--no-loss-curve")
    out = tmp_path / "dynamic"
    run([*command, "dynamic", str(out)])
    views = [json.loads((out / f"rows_rank_{i}.json").read_text()) for i in (0, 1)]
    assert len(views[0]["rules"]) == len(views[1]["rules"]) > 4, "no refill round ran"
    logs = [[{k: v for k, v in h.items() if k.startswith(("dynamic_sampling/", "psr/"))} for h in v["log_history"]
             if "dynamic_sampling/rounds" in h] for v in views]
    assert len(logs[0]) == 4 and logs[0] == logs[1]
    # The calls of the reward, in order: each step's batch, then its refill rounds (rank 0's rows, then rank 1's).
    calls = [prompts_per_group(a + b) for a, b in zip(views[0]["rules"], views[1]["rules"])]
    refills, position = [], 0
    for step in logs[0]:
        rounds = int(step["dynamic_sampling/rounds"])
        refills.extend(calls[position + 1:position + 1 + rounds])
        position += 1 + rounds
    assert position == len(calls) and refills, "no refill round ran"
    dataset = build_toy_dataset(256, seed=0)
    order = RefillSampler(len(dataset), seed=0).draw(4 * len(refills))
    assert [rule for call in refills for rule in call] == [dataset[i]["rule"] for i in order]
    assert sum(h["dynamic_sampling/rounds"] for h in logs[0]) == len(views[0]["rules"]) - 4
