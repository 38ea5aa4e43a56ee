"""Two real processes (`accelerate launch --multi_gpu --num_processes 2`, DDP over gloo on the CPU)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from hf_trainkit.checkpointing import list_checkpoints
from tests.testing_utils import ROOT, SUBPROCESS_ENV, TRAIN, log_history, trainer_state




def launch(port: int, *argv):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), str(TRAIN), "--mode", "psr", "--no-loss-curve",
               *map(str, argv)]
    env = {**SUBPROCESS_ENV, "OMP_NUM_THREADS": "1"}
    return command, env


def test_two_processes_share_one_global_batch(tmp_path):
    out = tmp_path / "ddp"
    command, env = launch(29601, "--output-dir", out, "--max-steps", 4, "--save-steps", 2)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    # Several wrong set-ups exit 0 while running two single-process trainings: check what the script saw.
    assert "world size 2, distributed type DistributedType.MULTI_CPU" in result.stdout
    history = log_history(out)
    steps = [h for h in history if "psr/positive_samples" in h]
    assert len(steps) == 4
    # 2 processes x 16 completions: the mode metrics count the global batch, not one rank's half.
    assert all(h["psr/positive_samples"] + h["psr/negative_samples"] == 32 for h in steps)
    assert all(h["psr/positive_ratio"] == pytest.approx(h["reward"]) for h in steps)
    infos = list_checkpoints(out)
    assert [i.step for i in infos] == [2, 4] and all(i.valid for i in infos)
    assert all(i.marker["world_size"] == 2 and i.marker["total_train_batch_size"] == 32 for i in infos)


def test_sigterm_to_the_launcher_saves_once_on_every_rank_and_resumes(tmp_path):
    out = tmp_path / "ddp-preempt"
    command, env = launch(29602, "--output-dir", out, "--max-steps", 200, "--save-steps", 1000)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                               start_new_session=True)
    for line in process.stdout:
        if "PSR [Step 5]:" in line:
            break
    sent = time.time()
    process.send_signal(signal.SIGTERM)  # the launcher forwards it to both workers
    stdout = process.stdout.read()
    process.wait(timeout=60)
    assert time.time() - sent < 30, "not done before accelerate's kill timeout"
    assert "Stopped by SIGTERM after saving step" in stdout
    saved = list_checkpoints(out)
    assert len(saved) == 1 and saved[0].valid and saved[0].marker["reason"] == "preempt"
    assert saved[0].marker["world_size"] == 2
    command, env = launch(29603, "--output-dir", out, "--max-steps", saved[0].step + 3, "--save-steps", 1000)
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"Resuming from {saved[0].path}" in again.stdout
    assert trainer_state(out)["global_step"] == saved[0].step + 3


def test_control_request_and_policy_reach_every_rank_at_the_same_step(tmp_path):
    out = tmp_path / "ddp-control"
    command, env = launch(29604, "--output-dir", out, "--max-steps", 3000, "--save-steps", 1000, "--quiet",
                          "--checkpoint-metric", "reward", "--save-top-k", 1)
    with open(tmp_path / "log.txt", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 180
            while not (out / "control" / "status.json").exists() and time.time() < deadline:
                assert process.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
                time.sleep(0.2)
            cli = [sys.executable, "-m", "hf_trainkit.cli", "control"]
            saved = subprocess.run([*cli, "save", str(out), "--name", "both-ranks"], capture_output=True, text=True,
                                   env=env, timeout=120)
            assert saved.returncode == 0, saved.stderr
            stopped = subprocess.run([*cli, "stop", str(out)], capture_output=True, text=True, env=env, timeout=120)
            assert stopped.returncode == 0, stopped.stderr
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
    infos = list_checkpoints(out)
    named = [i for i in infos if i.marker.get("name") == "both-ranks"]
    assert len(named) == 1 and named[0].valid and named[0].marker["world_size"] == 2
    final = infos[-1]
    assert final.marker["stopped_by"] == "control request"
    for checkpoint in (named[0], final):
        # Each rank writes its RNG state into the folder of the step *it* saved at: both files in one folder
        # means both ranks saved at that step.
        assert {p.name for p in checkpoint.path.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    state = trainer_state(out)
    assert state["global_step"] == final.step
    assert "world size 2" in (tmp_path / "log.txt").read_text()


def test_pass_at_k_in_two_processes_gathers_every_prompt_and_agrees(tmp_path):
    """Each rank samples half of the held-out prompts; both log the same gathered metrics at the same steps, and a
    checkpoint policy on eval/pass@1 takes one decision."""
    out = tmp_path / "ddp-eval"
    harness = ROOT / "tests" / "distributed" / "rank_views.py"
    command, env = launch(29605, "--output-dir", out, "--max-steps", 4, "--save-steps", 2, "--eval-every", 2,
                          "--eval-n", 8, "--eval-k", 1, 8, "--checkpoint-metric", "eval/pass@1", "--save-top-k", 1)
    command[command.index(str(TRAIN))] = str(harness)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    views = [json.loads((out / "rank_views" / f"rank_{i}.json").read_text()) for i in (0, 1)]
    evals = [[h for h in v["log_history"] if "eval/pass@1" in h] for v in views]
    assert [h["step"] for h in evals[0]] == [0, 2, 4]
    assert evals[0] == evals[1]
    assert all(h["eval/num_prompts"] == 6 for h in evals[0])  # 3 per rank, gathered
    scores = {h["step"]: h["eval/pass@1"] for h in evals[0]}
    assert {c.step for c in list_checkpoints(out)} == {max((2, 4), key=lambda s: (scores[s], -s)), 4}
    assert (out / "model.safetensors").exists()  # the final weights, written once
