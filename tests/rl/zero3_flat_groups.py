"""Two-process ZeRO-3 harness: `python zero3_flat_groups.py trl|ours|dynamic OUTPUT_DIR` trains plain
`GRPOTrainer`, `FilteredGRPOTrainer` (mode grpo, zero-variance groups skipped) or `FilteredGRPOTrainer` (mode psr
with dynamic sampling; the rules scored per call and the log history go into rows_rank_<i>.json) on the toy task
with a reward that makes about half of the groups flat, so that the ranks keep different numbers of rows; each
rank writes
OUTPUT_DIR/rows_rank_<i>.json (rows per training forward pass, informative rows per generation batch) and the run
saves its final weights (gathered from the ZeRO-3 shards)."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from hf_trainkit.distributed import adjust_for_cpu_launch  # noqa: E402
from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer  # noqa: E402
from hf_trainkit.tasks.digit import build_tiny_model, build_toy_dataset, build_toy_tokenizer  # noqa: E402
from tests.rl.test_zero_variance_groups import HalfFlatReward, is_flat_rule  # noqa: E402


class PlainConfig(GRPOConfig):
    def __post_init__(self):
        adjust_for_cpu_launch(self)  # as FilteredGRPOConfig does: one process group on a CPU host
        super().__post_init__()


class PerCallReward(HalfFlatReward):
    def __init__(self):
        super().__init__()
        self.per_call = []

        self.rules = []

    def __call__(self, completions, rule, **kwargs):
        self.per_call.append(sum(not is_flat_rule(r) for r in rule))
        self.rules.append(list(rule))
        return super().__call__(completions, rule, **kwargs)


class NoPositiveReward(PerCallReward):
    """psr: a flat rule's group has no positive (all 0); the others alternate 1, 0."""

    def __call__(self, completions, rule, **kwargs):
        rewards = super().__call__(completions, rule, **kwargs)
        return [0.0 if is_flat_rule(r) else value for r, value in zip(rule, rewards)]


def main(kind, output_dir):
    settings = dict(output_dir=output_dir, per_device_train_batch_size=16, num_generations=8, max_completion_length=4,
                    optim="sgd", learning_rate=0.5, max_steps=4, logging_steps=1, report_to=[], save_strategy="no",
                    seed=0, bf16=False)
    if kind == "trl":
        config_cls, trainer_cls = PlainConfig, GRPOTrainer
    else:
        config_cls, trainer_cls = FilteredGRPOConfig, FilteredGRPOTrainer
        settings["log_mode_summary"] = False
    if kind == "dynamic":
        settings.update(mode="psr", dynamic_sampling=True, dynamic_sampling_max_rounds=2)
    args = config_cls(**settings)
    tokenizer = build_toy_tokenizer()
    reward = NoPositiveReward() if kind == "dynamic" else PerCallReward()
    trainer = trainer_cls(model=build_tiny_model(tokenizer, seed=0), reward_funcs=[reward], args=args,
                          train_dataset=build_toy_dataset(256, seed=0), processing_class=tokenizer)
    forwarded = []
    trainer.model.register_forward_pre_hook(
        lambda module, a, kw: forwarded.append(kw["input_ids"].shape[0]) if torch.is_grad_enabled() else None,
        with_kwargs=True)
    trainer.train()
    trainer.save_model(output_dir)
    rank = trainer.accelerator.process_index
    Path(output_dir, f"rows_rank_{rank}.json").write_text(json.dumps(
        {"forwarded": forwarded, "informative": reward.per_call, "world_size": trainer.accelerator.num_processes,
         "rules": reward.rules, "log_history": trainer.state.log_history}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
