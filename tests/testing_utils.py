"""Helpers every test folder uses: where the scripts are, how a user's subprocess runs, and reading a run back."""

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train_grpo.py"
# What every subprocess of a test gets: W&B offline, no hub, one tokenizer thread (no fork warnings).
SUBPROCESS_ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_script(*argv, cwd=None, timeout=300, env=None):
    """`python ARGV...` as a user runs it, output captured as text."""
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=cwd,
                          env=env or SUBPROCESS_ENV, timeout=timeout)


def trainer_state(output_dir) -> dict:
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())


def log_history(output_dir) -> list[dict]:
    return trainer_state(output_dir)["log_history"]


def assert_same_rng_state(path_a, path_b):
    """Two `rng_state*.pth` files are the same bytes. (A background save writes files this small at once, as a save
    without it does: staged through its pickle they held the same states in other bytes, a pickle memo detail.)"""
    from pathlib import Path

    assert Path(path_a).read_bytes() == Path(path_b).read_bytes(), (path_a, path_b)
