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
    """Two `rng_state*.pth` files hold the same generator states. (A background save writes the same values but not
    always the same bytes: its pickle can differ in a memo detail.)"""
    import numpy
    import torch

    a, b = (torch.load(path, weights_only=False) for path in (path_a, path_b))
    assert a.keys() == b.keys(), (path_a, path_b)

    def same(x, y):
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and torch.equal(x, y)
        if isinstance(x, numpy.ndarray):
            return isinstance(y, numpy.ndarray) and numpy.array_equal(x, y)
        if isinstance(x, (tuple, list)):
            return type(x) is type(y) and len(x) == len(y) and all(map(same, x, y))
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        return x == y

    for key in a:
        assert same(a[key], b[key]), (path_a, path_b, key)
