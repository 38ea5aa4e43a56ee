"""Helpers and fixtures of the checkpointing tests: real training runs of scripts/train_grpo.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "scripts" / "train_grpo.py"
QUIET = ["--quiet", "--no-loss-curve", "--no-diagnostics"]


def train(output_dir, *extra, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(output_dir), "--seed", "3",
                           *QUIET, *map(str, extra)], capture_output=True, text=True, env=env, timeout=timeout)


def curves(output_dir):
    """(step, reward, grad_norm, entropy) of every training log: what must match bit for bit after a resume."""
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h["reward"], h["grad_norm"], h["entropy"]) for h in history if "reward" in h]


def start_and_wait_for_step(command, step: int, env):
    """Start training and return once it printed the console line of `step` (so it is mid-training)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if f"PSR [Step {step}]:" in line:
            return process, lines
    raise AssertionError("training ended before step %d: %s" % (step, "".join(lines[-5:])))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A 6-step run with a checkpoint every 2 steps (each with its completion marker)."""
    out = tmp_path_factory.mktemp("runs") / "base"
    result = train(out, "--max-steps", 6, "--save-steps", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture()
def run_copy(finished_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target
