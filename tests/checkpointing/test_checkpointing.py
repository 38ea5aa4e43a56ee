"""Checkpoint validity, discovery, rotation and auto-resume, on real checkpoints written by real training runs."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers.trainer_utils import get_last_checkpoint

from hf_trainkit.checkpointing import (COMPLETE_MARKER, CheckpointInfo, checkpoints_to_delete,
                                       find_resume_checkpoint, inspect_checkpoint, list_checkpoints)
from hf_trainkit.commands.checkpoints import main as checkpoints_main


from .conftest import QUIET, ROOT, TRAIN, curves, start_and_wait_for_step, train


# --- validity -----------------------------------------------------------------------------------------------------


def test_fresh_checkpoints_are_valid_with_metadata(finished_run):
    infos = list_checkpoints(finished_run)
    assert [(i.name, i.valid) for i in infos] == [("checkpoint-2", True), ("checkpoint-4", True),
                                                  ("checkpoint-6", True)]
    marker = infos[-1].marker
    assert marker["step"] == 6 and marker["reason"] == "final" and marker["world_size"] == 1
    assert marker["total_train_batch_size"] == 16 and "reward" in marker["metrics"]
    assert "model.safetensors" in marker["files"] and "optimizer.pt" in marker["files"]
    assert find_resume_checkpoint(finished_run) == str(finished_run / "checkpoint-6")


def truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage,reason", [
    (lambda c: truncate(c / "model.safetensors"), "model.safetensors is"),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    (lambda c: (c / "trainer_state.json").write_text("{\"global_st"), "trainer_state.json is unreadable"),
    (lambda c: (c / COMPLETE_MARKER).write_text("{"), f"{COMPLETE_MARKER} is unreadable"),
])
def test_damaged_newest_checkpoint_is_skipped(run_copy, damage, reason):
    damage(run_copy / "checkpoint-6")
    info = inspect_checkpoint(run_copy / "checkpoint-6")
    assert not info.valid and reason in info.reason
    assert find_resume_checkpoint(run_copy) == str(run_copy / "checkpoint-4")
    assert (run_copy / "checkpoint-6").exists()  # a scan never deletes
    # transformers would resume from the damaged one:
    assert get_last_checkpoint(str(run_copy)).endswith("checkpoint-6")


@pytest.mark.parametrize("damage,reason", [
    (lambda c: truncate(c / "model.safetensors"), "model.safetensors is truncated"),
    (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt is truncated"),
    (lambda c: truncate(c / "rng_state.pth"), "rng_state.pth is truncated"),
    (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    (lambda c: (c / "model.safetensors").unlink(), "no model weights"),
])
def test_plain_transformers_checkpoints_are_checked_file_by_file(run_copy, damage, reason):
    for checkpoint in run_copy.glob("checkpoint-*"):
        (checkpoint / COMPLETE_MARKER).unlink()  # as written by plain transformers
    assert inspect_checkpoint(run_copy / "checkpoint-6").valid
    damage(run_copy / "checkpoint-6")
    info = inspect_checkpoint(run_copy / "checkpoint-6")
    assert not info.valid and reason in info.reason
    assert find_resume_checkpoint(run_copy) == str(run_copy / "checkpoint-4")


def test_strays_and_order_by_step_not_mtime(run_copy, tmp_path):
    shutil.copytree(run_copy / "checkpoint-2", run_copy / "checkpoint-final")
    shutil.copytree(run_copy / "checkpoint-2", run_copy / "tmp-checkpoint-8")
    (run_copy / "checkpoint-10").mkdir()  # a save that died before writing anything
    for index, checkpoint in enumerate(sorted(run_copy.glob("checkpoint-*"))):
        stamp = time.time() - 10_000 * (index % 2 + 1)
        os.utime(checkpoint, (stamp, stamp))
    os.utime(run_copy / "checkpoint-2", (time.time() + 1000, time.time() + 1000))  # "newest" by mtime
    moved = tmp_path / "elsewhere" / "moved-run"
    shutil.move(str(run_copy), moved)
    assert find_resume_checkpoint(moved) == str(moved / "checkpoint-6")
    assert [i.name for i in list_checkpoints(moved)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6",
                                                          "checkpoint-10"]


# --- rotation -------------------------------------------------------------------------------------------------------


def info(step, valid=True):
    return CheckpointInfo(path=Path(f"/r/checkpoint-{step}"), step=step, valid=valid)


@pytest.mark.parametrize("steps,limit,protected,deleted", [
    ([(1, True), (2, True), (3, True), (4, True)], 2, set(), [1, 2]),
    ([(1, True), (2, True), (3, True), (4, True)], 2, {"checkpoint-1"}, [2, 3]),  # best kept, newest kept
    ([(1, True), (2, True), (3, True), (4, True)], 1, {"checkpoint-2"}, [1, 3]),  # limit 1 never drops newest
    ([(1, True), (2, False), (3, True), (4, False)], 5, set(), [2]),  # invalid newest may be a save in progress
    ([(1, False), (2, False)], 1, set(), []),  # no valid checkpoint: delete nothing
    ([(1, True), (2, True), (3, True)], None, set(), []),
])
def test_rotation(steps, limit, protected, deleted):
    chosen = checkpoints_to_delete([info(s, v) for s, v in steps], limit, protected)
    assert [c.step for c in chosen] == deleted


def test_save_total_limit_keeps_valid_checkpoints_by_step(tmp_path):
    out = tmp_path / "limited"
    result = train(out, "--max-steps", 6, "--save-steps", 1, "--save-total-limit", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]


# --- auto-resume ----------------------------------------------------------------------------------------------------


def test_finished_run_is_not_trained_again(run_copy):
    before = (run_copy / "trainer_state.json").read_bytes()
    result = train(run_copy, "--max-steps", 6, "--save-steps", 2)
    assert result.returncode == 0 and "already holds a finished run" in result.stdout
    assert (run_copy / "trainer_state.json").read_bytes() == before
    first_runtime = json.loads(before)["log_history"][-1]["train_runtime"]
    longer = train(run_copy, "--max-steps", 8, "--save-steps", 2)
    assert longer.returncode == 0 and f"Resuming from {run_copy / 'checkpoint-6'}" in longer.stdout
    assert [c[0] for c in curves(run_copy)] == list(range(1, 9))
    # The summary counts both segments' time (transformers' train_runtime is the last segment's only).
    summary = json.loads((run_copy / "trainer_state.json").read_text())["log_history"][-1]
    assert summary["train_segments"] == 2
    assert abs(summary["total_train_runtime"] - (first_runtime + summary["train_runtime"])) < 1.0
    assert summary["total_train_runtime"] > summary["train_runtime"] + 0.5 * first_runtime


def test_copied_run_with_scrambled_mtimes_resumes_identically(tmp_path):
    reference = tmp_path / "reference"
    assert train(reference, "--max-steps", 8, "--save-steps", 2).returncode == 0
    copy = tmp_path / "copied" / "run"
    shutil.copytree(reference, copy)  # then pretend the copy was taken when step 4 had just been saved
    (copy / "training_complete.json").unlink()
    for late in ("checkpoint-6", "checkpoint-8"):
        shutil.rmtree(copy / late)
    for path in copy.rglob("*"):
        stamp = random.Random(str(path)).uniform(0, 2e9)
        os.utime(path, (stamp, stamp))
    state = json.loads((copy / "checkpoint-4" / "trainer_state.json").read_text())
    state["best_model_checkpoint"] = "/home/someone-else/runs/base/checkpoint-4"
    (copy / "checkpoint-4" / "trainer_state.json").write_text(json.dumps(state))
    for checkpoint in copy.glob("checkpoint-*"):
        (checkpoint / COMPLETE_MARKER).unlink()  # the edit changed a size: check it as a plain HF checkpoint
    result = train(copy, "--max-steps", 8, "--save-steps", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stdout and "checkpoint-4" in result.stdout
    assert curves(copy) == curves(reference)


def kill_at_random_moments(command, out: Path, rng: random.Random, env, max_delay: float, rounds: int = 3) -> int:
    """Start `command` `rounds` times; each time wait until training is under way (a valid checkpoint newer than
    any before), then SIGKILL it at a random moment. Returns how many runs were killed before they finished."""
    kills = 0
    for _ in range(rounds):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        newest = find_resume_checkpoint(out, warn=False)
        deadline = time.time() + 120
        while process.poll() is None and time.time() < deadline and find_resume_checkpoint(out, warn=False) == newest:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, max_delay))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    return kills


def test_kill_9_at_random_moments_then_rerun_is_bit_exact(tmp_path):
    steps = 30
    reference = tmp_path / "reference"
    assert train(reference, "--max-steps", steps, "--save-steps", 1).returncode == 0
    out = tmp_path / "killed"
    rng = random.Random(2025)
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(out), "--seed", "3", *QUIET,
               "--max-steps", str(steps), "--save-steps", "1"]
    kills = kill_at_random_moments(command, out, rng, env, max_delay=0.6)
    final = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert kills >= 2
    assert curves(out) == curves(reference)


def test_kill_9_of_a_plain_trainer_then_rerun_is_bit_exact(tmp_path):
    """The same for a plain transformers `Trainer` (causal LM) with `CheckpointPolicyCallback`."""
    script = ROOT / "tests" / "plain_trainer.py"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}

    def command(out):
        return [sys.executable, str(script), str(out), "--max-steps", "40", "--save-steps", "1"]

    def losses(out):
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        return [(h["step"], h["loss"], h["grad_norm"]) for h in history if "loss" in h]

    reference = tmp_path / "reference"
    subprocess.run(command(reference), check=True, capture_output=True, env=env, timeout=300)
    out = tmp_path / "killed"
    kills = kill_at_random_moments(command(out), out, random.Random(7), env, max_delay=0.3)
    subprocess.run(command(out), check=True, capture_output=True, env=env, timeout=300)
    assert kills >= 2
    assert losses(out) == losses(reference)


def test_sigterm_saves_stops_cleanly_and_resumes(tmp_path):
    steps = 80
    reference = tmp_path / "reference"
    assert train(reference, "--max-steps", steps, "--save-steps", 1000).returncode == 0
    out = tmp_path / "preempted"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(out), "--seed", "3",
               "--no-loss-curve", "--no-diagnostics", "--max-steps", str(steps), "--save-steps", "1000"]
    process, lines = start_and_wait_for_step(command, 5, env)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    stdout = "".join(lines) + process.stdout.read()
    process.wait(timeout=60)
    assert time.time() - sent < 25, "the save-and-stop took longer than accelerate's kill timeout would allow"
    assert process.returncode == 143
    assert "Stopped by SIGTERM after saving step" in stdout and "Run the same command again" in stdout
    saved = list_checkpoints(out)
    assert len(saved) == 1 and saved[0].valid and saved[0].marker["reason"] == "preempt"
    assert 5 <= saved[0].step < steps and not (out / "training_complete.json").exists()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert curves(out) == curves(reference)


def test_sigusr1_saves_and_continues(tmp_path):
    out = tmp_path / "usr1"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(out), "--seed", "3",
               "--no-loss-curve", "--no-diagnostics", "--max-steps", "60", "--save-steps", "1000"]
    process, _ = start_and_wait_for_step(command, 5, env)
    process.send_signal(signal.SIGUSR1)
    process.stdout.read()
    assert process.wait(timeout=120) == 0
    reasons = {i.step: i.marker.get("reason") for i in list_checkpoints(out)}
    assert reasons.get(60) == "final" and "manual" in reasons.values(), reasons


# --- command line ---------------------------------------------------------------------------------------------------


def test_checkpoints_commands(run_copy, capsys):
    truncate(run_copy / "checkpoint-6" / "model.safetensors")
    assert checkpoints_main(["latest", str(run_copy)]) == 0
    assert capsys.readouterr().out.strip() == str(run_copy / "checkpoint-4")
    assert checkpoints_main(["list", str(run_copy)]) == 0
    table = capsys.readouterr().out
    assert "checkpoint-4" in table and "no: model.safetensors is" in table and "final" in table
    assert checkpoints_main(["inspect", str(run_copy / "checkpoint-4")]) == 0
    assert json.loads(capsys.readouterr().out)["marker"]["reason"] == "interval"
    empty = run_copy / "empty"
    empty.mkdir()
    assert checkpoints_main(["latest", str(empty)]) == 1
    assert checkpoints_main(["latest", str(run_copy / "missing")]) == 2


def test_changed_total_batch_is_warned_about(run_copy):
    (run_copy / "training_complete.json").unlink()
    same_total = train(run_copy, "--max-steps", 7, "--save-steps", 2, "--per-device-train-batch-size", 8,
                       "--gradient-accumulation-steps", 2)
    assert same_total.returncode == 0, same_total.stderr[-3000:]
    assert "with a total batch of" not in same_total.stderr
    (run_copy / "training_complete.json").unlink()
    smaller = train(run_copy, "--max-steps", 8, "--save-steps", 2, "--per-device-train-batch-size", 8)
    assert smaller.returncode == 0, smaller.stderr[-3000:]
    assert ("Resuming step 7 with a total batch of 8 (world size 1) instead of 16 (world size 1): the data "
            "position is counted in steps, so this run continues at sample 56 instead of 112") in smaller.stderr


def test_mirror_survives_the_loss_of_the_machine(tmp_path):
    """Machine A is preempted and lost; machine B, with only the mirror, resumes and ends bit-exact."""
    steps = 60
    reference = tmp_path / "reference"
    assert train(reference, "--max-steps", steps, "--save-steps", 4).returncode == 0
    mirror = tmp_path / "mounted-drive" / "runs" / "psr"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    machine_a = tmp_path / "machine-a" / "run"
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--seed", "3", "--no-loss-curve", "--no-diagnostics",
               "--max-steps", str(steps), "--save-steps", "4", "--save-total-limit", "2",
               "--checkpoint-mirror", str(mirror)]
    process, _ = start_and_wait_for_step([*command, "--output-dir", str(machine_a)], 10, env)
    process.send_signal(signal.SIGTERM)
    process.stdout.read()
    assert process.wait(timeout=60) == 143
    mirrored = sorted(p.name for p in mirror.glob("checkpoint-*"))
    assert 1 <= len(mirrored) <= 2 and all((mirror / name / COMPLETE_MARKER).exists() for name in mirrored)
    newest = max(int(name.split("-")[1]) for name in mirrored)
    shutil.rmtree(machine_a.parent)  # the machine is gone
    (mirror / "checkpoint-999").mkdir()  # a copy cut short (no marker): never pulled
    (mirror / "checkpoint-9").mkdir()  # an older one cut short: cleaned once newer complete copies exist
    machine_b = tmp_path / "machine-b" / "somewhere" / "run"
    result = subprocess.run([*command, "--output-dir", str(machine_b), "--quiet"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Pulled checkpoint-{newest} from {mirror}" in result.stdout
    assert curves(machine_b) == curves(reference)
    assert not (machine_b / "checkpoint-999").exists()
    final = sorted(p.name for p in mirror.glob("checkpoint-*"))
    # The limit applies there too; the folder newer than the step resumed from was moved aside, not deleted.
    assert final == ["checkpoint-56", "checkpoint-60"]
    assert len(list(mirror.glob("superseded/*/checkpoint-999"))) == 1


def test_shared_optimizer_step_counts_are_unshared():
    """DeepSpeed's ZeRO-3 universal loader gives every parameter state one shared `step` tensor, which torch's
    AdamW then advances once per state. Checked on a real torch AdamW against one that never shared its counter."""
    import torch

    from hf_trainkit.checkpointing.universal import unshare_step_counts

    def adam_after_resume(share: bool, fix: bool):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4)) for _ in range(3)]
        optimizer = torch.optim.AdamW(params, lr=0.1)
        for _ in range(2):
            sum((p**2).sum() for p in params).backward()
            optimizer.step()
            optimizer.zero_grad()
        if share:  # what the universal loader leaves behind
            common = torch.tensor(2.0)
            for state in optimizer.state.values():
                state["step"] = common
        if fix:
            assert unshare_step_counts(optimizer) == (2 if share else 0)
        for _ in range(3):
            sum((p**2).sum() for p in params).backward()
            optimizer.step()
            optimizer.zero_grad()
        return [p.detach().clone() for p in params], [float(s["step"]) for s in optimizer.state.values()]

    expected, steps = adam_after_resume(share=False, fix=False)
    broken, broken_steps = adam_after_resume(share=True, fix=False)
    fixed, fixed_steps = adam_after_resume(share=True, fix=True)
    assert steps == fixed_steps == [5.0, 5.0, 5.0] and broken_steps[0] == 11.0  # 2 + 3 steps x 3 states
    assert not all(torch.equal(a, b) for a, b in zip(expected, broken))
    assert all(torch.equal(a, b) for a, b in zip(expected, fixed))
