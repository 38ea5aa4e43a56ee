"""Shared fixtures: a tiny model built from a config, the toy tokenizer and dataset, no downloads."""

import os

import pytest


os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


FULL = os.environ.get("HF_TRAINKIT_FULL_TESTS") == "1"


def pytest_collection_modifyitems(config, items):
    if FULL:
        return
    skip = pytest.mark.skip(reason="slow: set HF_TRAINKIT_FULL_TESTS=1 (CI does) to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """How long the multi-process DeepSpeed tests took (the first one includes building DeepSpeed's ops once)."""
    rows = [r for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
            if r.when == "call" and "deepspeed" in r.keywords]
    if rows:
        terminalreporter.write_sep("-", f"DeepSpeed multi-process tests: {sum(r.duration for r in rows):.0f} s")
        for report in rows:
            terminalreporter.write_line(f"{report.duration:7.1f} s  {report.nodeid}")


@pytest.fixture(scope="session")
def toy_tokenizer():
    from hf_trainkit.tasks.digit import build_toy_tokenizer

    return build_toy_tokenizer()


@pytest.fixture()
def make_trainer(tmp_path, toy_tokenizer):
    """Build a trainer on the toy task: ``make_trainer(mode="nsr", trainer_cls=..., reward_funcs=..., **config)``."""

    def factory(mode="grpo", *, trainer_cls=None, config_cls=None, reward_funcs=None, peft_config=None, seed=0,
                callbacks=None, num_prompts=256, model=None, **config_kwargs):
        from trl import GRPOConfig

        from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer
        from hf_trainkit.tasks.digit import build_tiny_model, build_toy_dataset, digit_rule_reward

        trainer_cls = trainer_cls or FilteredGRPOTrainer
        config_cls = config_cls or FilteredGRPOConfig
        settings = dict(
            output_dir=str(tmp_path / f"run-{mode}"),
            per_device_train_batch_size=16,
            num_generations=8,
            max_completion_length=4,
            learning_rate=3e-3,
            max_steps=4,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            seed=seed,
            bf16=False,
        )
        if config_cls is not GRPOConfig:
            settings["mode"] = mode
            settings["log_mode_summary"] = True
        settings.update(config_kwargs)
        args = config_cls(**settings)
        return trainer_cls(
            model=model if model is not None else build_tiny_model(toy_tokenizer, seed=seed),
            reward_funcs=reward_funcs or digit_rule_reward,
            args=args,
            train_dataset=build_toy_dataset(num_prompts, seed=seed),
            processing_class=toy_tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )

    return factory
