"""Runs under .venv-vllm (vLLM's CPU build; tests/rl/test_vllm.py starts it): trains FilteredGRPOTrainer with vLLM
generation in every mode and writes what each step did to a JSON file, for the assertions in test_vllm.py.

    .venv-vllm/bin/python tests/rl/vllm_worker.py colocate OUT.json WORKDIR
    .venv-vllm/bin/python tests/rl/vllm_worker.py server OUT.json WORKDIR URL      (a `trl vllm-serve` at URL)
    .venv-vllm/bin/python tests/rl/vllm_worker.py train -- <scripts/train_grpo.py flags>   (the script, stand-ins in)

Only the weight transport is a stand-in (tests/rl/vllm_stand_ins.py); vLLM, TRL and the trainer are the real ones.
"""

from __future__ import annotations

import json
import os
import sys


os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: a 1 GiB KV cache is plenty for the tiny model
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("grpo", "psr", "nsr", "w-reinforce")
STEPS = 3
LEARNING_RATE = 0.05  # high on purpose: the weights move far from the base in 3 steps, so a missed sync shows


def build_model_dir(directory: str, untied: bool = False) -> str:
    """The toy base model (warmed up, so rewards vary) at hidden 128: 4 heads of 32, a head size vLLM's CPU attention
    kernels support (the built-in hidden-64 model has heads of 16, which they reject). `untied`: the output layer a
    weight of its own (for the server: its reload cannot re-pack a tied output layer, see `repack_tied_lm_head`)."""
    from hf_trainkit.tasks.digit import build_toy_base_model, build_toy_tokenizer

    if not os.path.isfile(os.path.join(directory, "config.json")):
        tokenizer = build_toy_tokenizer()
        model = build_toy_base_model(tokenizer, seed=0, hidden_size=128)
        if untied:
            import torch

            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def config(output_dir: str, mode: str, server_url: str | None = None, **extra):
    from hf_trainkit.rl import FilteredGRPOConfig

    if server_url is None:
        extra.update(vllm_mode="colocate", vllm_max_model_length=64)
    else:
        extra.update(vllm_mode="server", vllm_server_base_url=server_url, vllm_server_timeout=30)
    return FilteredGRPOConfig(
        output_dir=output_dir, mode=mode, use_vllm=True,
        per_device_train_batch_size=16, num_generations=8, max_completion_length=4, learning_rate=LEARNING_RATE,
        max_steps=STEPS, logging_steps=1, report_to=[], save_strategy="no", seed=0, **extra)


def record(trainer) -> list[dict]:
    """Per optimizer step: the rewards, advantages and kept rows of the batch, the rows each forward pass saw, the
    loss, and TRL's loss on the kept rows alone (the batch sliced here, independently of the trainer)."""
    import torch
    from trl import GRPOTrainer

    steps: list[dict] = []
    generate, compute_loss = trainer._generate_and_score_completions, trainer._compute_loss
    forward_rows: list[int] = []
    trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: forward_rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)

    def recorded_generate(inputs):
        output = generate(inputs)
        keep = output.get("keep")
        steps.append({"rewards": trainer._total_rewards().tolist(), "advantages": output["advantages"].tolist(),
                      "keep": None if keep is None else keep.tolist(), "num_items": float(output["num_items_in_batch"]),
                      "completion_tokens": output["completion_mask"].sum(1).tolist(),
                      "has_is_ratio": output.get("importance_sampling_ratio") is not None})
        return output

    def recorded_loss(model, inputs):
        keep = inputs.get("keep")
        counted = inputs.get("counted")
        reference = {k: v for k, v in inputs.items() if k not in ("keep", "counted")}
        if keep is not None and counted is None:  # psr / nsr: the batch as if the dropped rows never existed
            reference = {k: v[keep] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in reference.items()}
            reference["num_items_in_batch"] = inputs["completion_mask"][keep].sum()
        saved = {mode: {k: list(v) for k, v in metrics.items()} for mode, metrics in trainer._metrics.items()}
        expected = None
        if keep is None or bool(keep.any()):
            with torch.no_grad():
                expected = GRPOTrainer._compute_loss(trainer, model, reference).item()
        for mode, metrics in saved.items():  # the reference must not add to the logged metrics
            trainer._metrics[mode].clear()
            trainer._metrics[mode].update(metrics)
        forward_rows.clear()
        trl_rows.clear()
        loss = compute_loss(model, inputs)
        steps[-1].update(loss=loss.item(), reference_loss=expected, forward_rows=list(forward_rows),
                         is_ratio_rows=list(trl_rows))
        return loss

    trl_rows: list[int | None] = []  # rows of TRL's importance-sampling ratios in the batch that reaches TRL's loss
    if not getattr(GRPOTrainer._compute_loss, "_recorded", False):
        trl_compute_loss = GRPOTrainer._compute_loss

        def recording_trl_loss(self, model, inputs):
            ratio = inputs.get("importance_sampling_ratio")
            getattr(self, "_trl_rows", []).append(None if ratio is None else int(ratio.shape[0]))
            return trl_compute_loss(self, model, inputs)

        recording_trl_loss._recorded = True
        GRPOTrainer._compute_loss = recording_trl_loss
    trainer._trl_rows = trl_rows
    trainer._generate_and_score_completions = recorded_generate
    trainer._compute_loss = recorded_loss
    return steps


def colocate(out_path: str, workdir: str, server_url: str | None = None) -> None:
    """Every mode for 3 steps, then a control whose sync is disabled after step 0; `server_url`: against a running
    `trl vllm-serve` (the server stand-in) instead of a colocated engine."""
    import time

    from vllm_stand_ins import install_colocate_weight_reload, install_server_weight_transport, share_one_engine

    from hf_trainkit.rl import FilteredGRPOTrainer
    from hf_trainkit.tasks.digit import build_toy_dataset, digit_rule_reward

    if server_url is None:
        install_colocate_weight_reload()
        share_one_engine()
        model_dir = build_model_dir(os.path.join(workdir, "tiny-llama-128"))
    else:
        install_server_weight_transport()
        model_dir = build_model_dir(os.path.join(workdir, "tiny-llama-128-untied"), untied=True)
    dataset = build_toy_dataset(num_prompts=64, seed=0)
    results = {}
    runs = [(mode, True) for mode in MODES] + [("grpo", False)]  # the last: control, sync after step 0 disabled
    for mode, sync in runs:
        name = mode if sync else "control-no-sync"
        started = time.monotonic()
        trainer = FilteredGRPOTrainer(model=model_dir, reward_funcs=digit_rule_reward, train_dataset=dataset,
                                      args=config(os.path.join(workdir, name), mode, server_url))
        init_s = time.monotonic() - started
        steps = record(trainer)
        generation = trainer.vllm_generation
        if not sync:
            real_sync = generation.sync_weights
            calls = []

            def first_sync_only(real_sync=real_sync, calls=calls):
                # step 0 loads the base weights into the shared engine; later steps are left out, as if TRL's sync
                # did not exist
                if not calls:
                    real_sync()
                calls.append(1)

            generation.sync_weights = first_sync_only
        started = time.monotonic()
        trainer.train()
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        results[name] = {"steps": steps, "logs": logs, "init_s": init_s, "train_s": time.monotonic() - started,
                         "stand_in_syncs": getattr(generation if server_url is None else generation.vllm_client,
                                                   "stand_in_syncs", 0),
                         "num_generations": trainer.num_generations, "threshold": trainer.args.reward_threshold,
                         "positive_weight": trainer.args.positive_weight,
                         "negative_weight": trainer.args.negative_weight}
        del trainer
    with open(out_path, "w") as handle:
        json.dump(results, handle)


def train(argv: list[str]) -> int:
    """scripts/train_grpo.py with the colocate stand-in installed: the same command a user runs, otherwise."""
    from vllm_stand_ins import install_colocate_weight_reload

    install_colocate_weight_reload()
    from hf_trainkit.commands.train_grpo import main

    callbacks = []
    delay = float(os.environ.get("HF_TRAINKIT_TEST_STEP_DELAY", "0"))
    if delay:  # keeps each step long enough for the test to kill the run between two checkpoints
        import time

        from transformers import TrainerCallback

        class Slow(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                time.sleep(delay)

        callbacks.append(Slow())
    return main(argv, callbacks=callbacks)


if __name__ == "__main__":
    if sys.argv[1] == "colocate":
        colocate(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "server":  # server OUT.json WORKDIR URL
        colocate(sys.argv[2], sys.argv[3], server_url=sys.argv[4])
    elif sys.argv[1] == "model":  # model DIR [--untied]
        build_model_dir(sys.argv[2], untied="--untied" in sys.argv[3:])
    elif sys.argv[1] == "train":
        raise SystemExit(train(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:]))
    else:
        raise SystemExit(f"vllm_worker.py: unknown command {sys.argv[1]!r}")
