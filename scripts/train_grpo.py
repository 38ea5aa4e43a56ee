#!/usr/bin/env python
"""Reward-filtered GRPO training: GRPO, PSR, NSR or W-REINFORCE.

    python scripts/train_grpo.py --mode nsr                      # tiny built-in model + toy task, CPU, ~1 min
    accelerate launch --config_file deepspeed_configs/zero3.yaml scripts/train_grpo.py \
        --mode nsr --model Qwen/Qwen2.5-0.5B-Instruct --dataset data.jsonl --output-dir runs/nsr-2025 --seed 2025

`python scripts/train_grpo.py --help` lists every flag.
"""

from hf_trainkit.commands.train_grpo import main


if __name__ == "__main__":
    raise SystemExit(main())
