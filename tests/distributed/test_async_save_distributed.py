"""`--async-save` with 2 processes (CPU, gloo): DDP and DeepSpeed ZeRO-3, each rank staging and writing its own part,
the marker only once both ranks' files are on disk; a `kill -9` inside rank 0's background write; a resume of an
asynchronously saved ZeRO-3 checkpoint with another process count. Slow (real `accelerate launch` runs)."""

import subprocess
import sys

import pytest

from hf_trainkit.checkpointing import COMPLETE_MARKER, find_resume_checkpoint, list_checkpoints
from tests.testing_utils import ROOT

from .test_deepspeed_zero3 import ENV, ZERO3_CPU, _ports, curves, ddp, keep_only, run, zero3


pytest.importorskip("deepspeed", reason="pip install -e '.[deepspeed]'")
pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

KILL_AT = ROOT / "tests" / "checkpointing" / "kill_at.py"
COMMAND = ["--mode", "w-reinforce", "--max-steps", 6, "--save-steps", 2, "--no-diagnostics"]


def zero3_killed_at(point, *argv):
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3_CPU), "--num_processes",
            "2", "--main_process_port", str(next(_ports)), str(KILL_AT), point, "--no-loss-curve", *map(str, argv)]


def test_zero3_async_kill_inside_the_background_write_and_another_process_count(tmp_path):
    reference = tmp_path / "reference"  # the same run, saved synchronously
    run(zero3(2, *COMMAND, "--output-dir", reference))
    out = tmp_path / "async"
    killed = subprocess.run(zero3_killed_at("mid-background-write:4", *COMMAND, "--output-dir", out, "--async-save"),
                            capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert killed.returncode != 0
    assert not (out / "checkpoint-4" / COMPLETE_MARKER).exists()  # rank 0's optimizer shard was cut short
    assert find_resume_checkpoint(out, warn=False) == str(out / "checkpoint-2")
    saved = list_checkpoints(out)[0]
    assert [f for f in saved.marker["files"] if "optim_states" in f].__len__() == 2  # both ranks' shards, listed
    for name, size in saved.marker["files"].items():  # each rank's shard as a synchronous save writes it
        if name.endswith((".pt", ".safetensors")):  # (trainer_state.json holds step times)
            assert (reference / "checkpoint-2" / name).stat().st_size == size, name
    two_to_one_from_async = keep_only(out, tmp_path / "async-2to1", 2)
    again = run(zero3(2, *COMMAND, "--output-dir", out, "--async-save"))
    assert "Resuming from" in again.stdout and "checkpoint-2" in again.stdout
    assert curves(out) == curves(reference)  # 2 -> 2 processes: bit for bit
    assert all(c.valid for c in list_checkpoints(out))
    # The asynchronously saved checkpoint resumes with 1 process (universal checkpoint) exactly as the synchronous.
    two_to_one_from_sync = keep_only(reference, tmp_path / "sync-2to1", 2)
    for resumed in (two_to_one_from_async, two_to_one_from_sync):
        result = run(zero3(1, *COMMAND, "--output-dir", resumed, "--async-save"))
        assert "written by 2 processes, resuming with 1: converting it" in result.stdout
    assert curves(two_to_one_from_async) == curves(two_to_one_from_sync)


def test_ddp_async_saves_equal_synchronous_ones(tmp_path):
    reference, out = tmp_path / "sync", tmp_path / "async"
    run(ddp(2, *COMMAND, "--output-dir", reference))
    result = run(ddp(2, *COMMAND, "--output-dir", out, "--async-save"))
    assert "Waiting for the background write of checkpoint-6" in result.stdout
    assert curves(out) == curves(reference)
    for checkpoint in list_checkpoints(out):
        assert checkpoint.valid and checkpoint.marker["world_size"] == 2
        for name in ("model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"):
            assert name in checkpoint.marker["files"]
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
            assert (checkpoint.path / name).read_bytes() == (reference / checkpoint.name / name).read_bytes()
