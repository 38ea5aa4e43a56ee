"""Helpers and fixtures of the checkpointing tests: real training runs of scripts/train_grpo.py."""

import shutil
import subprocess

import pytest

from tests.testing_utils import ROOT, TRAIN, log_history, run_script  # noqa: F401 (ROOT: for the tests here)


QUIET = ["--quiet", "--no-loss-curve", "--no-diagnostics"]


def train(output_dir, *extra, timeout=300):
    return run_script(TRAIN, "--mode", "psr", "--output-dir", output_dir, "--seed", 3, *QUIET, *extra, timeout=timeout)


def curves(output_dir):
    """(step, reward, grad_norm, entropy) of every training log: what must match bit for bit after a resume."""
    return [(h["step"], h["reward"], h["grad_norm"], h["entropy"]) for h in log_history(output_dir) if "reward" in h]


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
