#!/usr/bin/env python
"""One trainer of the GPU check (benchmarks/gpu_check.sh runs it once per trainer under `accelerate launch`):
TRL's GRPOTrainer or FilteredGRPOTrainer in one mode, vLLM colocate, bf16, on a model built locally from a config
at a realistic width (Qwen2.5-0.5B's shape, random weights: no download). Appends one JSON line to --out: the median
seconds per step after --warmup steps, and the peak GPU memory of each process.

Not run on the CPU machines of this project (no GPU there); vLLM's CPU build is tested by tests/rl/test_vllm.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def half_reward(completions, **kwargs):
    """1, 0, 1, 0, ...: exactly half of every group positive, so PSR and NSR each keep half of the rows."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def build_model_dir(directory: str, hidden: int, layers: int) -> str:
    """A Qwen2 model of Qwen2.5-0.5B's shape (hidden 896: 14 heads of 64, 2 KV heads) with the toy tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from hf_trainkit.tasks.digit import build_toy_tokenizer

    if os.path.isfile(os.path.join(directory, "config.json")):
        return directory
    tokenizer = build_toy_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 5.43) // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trainer", required=True, choices=["trl", "grpo", "psr", "nsr", "w-reinforce"])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--completion-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    options = parser.parse_args()

    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer
    from hf_trainkit.tasks.digit import build_toy_dataset

    settings = dict(output_dir=os.path.join(os.path.dirname(options.out), f"run-{options.trainer}"),
                    max_steps=options.steps, per_device_train_batch_size=options.batch_size, num_generations=8,
                    max_completion_length=options.completion_length, learning_rate=1e-6, bf16=True, logging_steps=1,
                    report_to=[], save_strategy="no", seed=0, use_vllm=True, vllm_mode="colocate",
                    vllm_gpu_memory_utilization=options.gpu_memory_utilization, vllm_max_model_length=512,
                    gradient_checkpointing=True)
    if options.trainer == "trl":
        trainer_class, config = GRPOTrainer, GRPOConfig(**settings)
    else:
        trainer_class, config = FilteredGRPOTrainer, FilteredGRPOConfig(mode=options.trainer, log_mode_summary=False,
                                                                        **settings)

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.started = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.started)

    timer = StepTimes()
    trainer = trainer_class(model=options.model_dir, reward_funcs=half_reward, args=config,
                            train_dataset=build_toy_dataset(num_prompts=512, seed=0), callbacks=[timer])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=trainer.accelerator.device)
    peaks = trainer.accelerator.gather(peak).tolist()
    if trainer.accelerator.is_main_process:
        measured = timer.times[options.warmup:] or timer.times
        logp = [entry.get("sampling/sampling_logp_difference/mean") for entry in trainer.state.log_history
                if "loss" in entry]
        with open(options.out, "a") as handle:
            handle.write(json.dumps({"trainer": options.trainer, "step_s": statistics.median(measured),
                                     "peak_gib": max(peaks), "processes": trainer.accelerator.num_processes,
                                     "logp_difference_max": max(v for v in logp if v is not None)}) + "\n")


if __name__ == "__main__":
    main()
