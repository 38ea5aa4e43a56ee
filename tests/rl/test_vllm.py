"""FilteredGRPOTrainer with vLLM generation (TRL's `use_vllm=True`), for real on vLLM's CPU build.

vLLM's CPU build needs transformers < 5.20, so it lives in a venv of its own, `.venv-vllm` (build it with
`scripts/make_vllm_venv.sh`; CI does). These tests run in the main pytest: each module fixture starts
`tests/rl/vllm_worker.py` once under `.venv-vllm/bin/python` (one vLLM engine for all the trainers of the colocate
checks) and the tests assert on what it recorded, against computations written here from the logged rewards.

Only TRL's weight transport to vLLM is a stand-in (tests/rl/vllm_stand_ins.py: per-tensor loads and NCCL cannot run on
a CPU); generation, log-probs, importance sampling, the mode filter and the loss are the real code.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("HF_TRAINKIT_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
WORKER = Path(__file__).with_name("vllm_worker.py")
MODES = ("grpo", "psr", "nsr", "w-reinforce")

pytestmark = [
    pytest.mark.slow,  # a few minutes (three vLLM engine starts): CI runs them, the README's fast command does not
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"vLLM's CPU build is not installed ({VLLM_PYTHON} is "
                       "missing): build .venv-vllm with scripts/make_vllm_venv.sh"),
]


def worker_env():
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def colocate_runs(tmp_path_factory):
    """One worker process, one vLLM engine: 3 steps of every mode, then a control run with the sync disabled."""
    workdir = tmp_path_factory.mktemp("vllm-colocate")
    out = workdir / "results.json"
    done = subprocess.run([str(VLLM_PYTHON), str(WORKER), "colocate", str(out), str(workdir)], cwd=ROOT,
                          env=worker_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    results = json.loads(out.read_text())
    results["_stdout"] = done.stdout
    return results


def expected_advantages(rewards, mode, num_generations, threshold, positive_weight, negative_weight):
    """The modes' advantages and kept rows, written from their definitions (Zhu et al. 2025; TRL's GRPO)."""
    rewards = torch.tensor(rewards, dtype=torch.float64)
    positive = rewards > threshold
    if mode == "psr":
        return positive.double(), positive
    if mode == "nsr":
        return torch.where(positive, 0.0, -negative_weight).double(), ~positive
    if mode == "w-reinforce":
        return torch.where(positive, positive_weight, -negative_weight).double(), torch.ones_like(positive)
    groups = rewards.view(-1, num_generations)
    centred = groups - groups.mean(1, keepdim=True)
    advantages = (centred / (groups.std(1, keepdim=True) + 1e-4)).flatten()
    return advantages, advantages != 0  # zero-variance groups (advantage 0) never reach the forward pass


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_with_vllm_colocate(colocate_runs, mode):
    run = colocate_runs[mode]
    assert [entry["step"] for entry in run["logs"]] == [1, 2, 3]
    for entry in run["logs"]:
        assert math.isfinite(entry["loss"])
        # present only when the completions came from vLLM (TRL's importance-sampling correction)
        assert "sampling/sampling_logp_difference/mean" in entry
    assert all(step["has_is_ratio"] for step in run["steps"])
    prefix = mode.replace("-", "_")
    if mode != "grpo":
        assert all(f"{prefix}/kept_samples" in entry for entry in run["logs"])
    first = {"grpo": "GRPO [Step", "psr": "PSR [Step", "nsr": "NSR [Step", "w-reinforce": "W-REINFORCE [Step"}[mode]
    assert first in colocate_runs["_stdout"]


@pytest.mark.parametrize("mode", MODES)
def test_kept_rows_and_advantages_match_the_rewards(colocate_runs, mode):
    run = colocate_runs[mode]
    settings = {k: run[k] for k in ("num_generations", "threshold", "positive_weight", "negative_weight")}
    for step in run["steps"]:
        advantages, keep = expected_advantages(step["rewards"], mode, **settings)
        torch.testing.assert_close(torch.tensor(step["advantages"], dtype=torch.float64), advantages,
                                   atol=1e-5, rtol=1e-5)
        got_keep = torch.ones(len(keep), dtype=torch.bool) if step["keep"] is None else torch.tensor(step["keep"])
        assert got_keep.tolist() == keep.tolist()
        kept = int(keep.sum())
        if kept:
            # the model's forward pass saw the kept rows only; TRL's importance-sampling ratios left with their rows
            assert step["forward_rows"] == [kept]
            assert step["is_ratio_rows"] == [kept]
        if mode in ("psr", "nsr"):  # the token normaliser counts kept tokens only
            assert step["num_items"] == sum(t for t, k in zip(step["completion_tokens"], keep) if k)


@pytest.mark.parametrize("mode", MODES)
def test_loss_is_trl_loss_on_kept_rows_with_importance_sampling(colocate_runs, mode):
    for step in colocate_runs[mode]["steps"]:
        if step["reference_loss"] is None:  # nothing kept: no loss to compare
            continue
        assert step["loss"] == pytest.approx(step["reference_loss"], rel=1e-5, abs=1e-7)


def logp_differences(run):
    return [entry["sampling/sampling_logp_difference/mean"] for entry in run["logs"]]


def test_trained_weights_reach_vllm_after_each_step(colocate_runs):
    """TRL's sampling_logp_difference: vLLM's log-probs of its samples against the trainer's. With the sync, vLLM
    samples from the trained weights (tiny differences); with the sync disabled after step 0 (control), it samples
    from the base model while the trainer moved on at lr 0.05 (large differences)."""
    control = logp_differences(colocate_runs["control-no-sync"])
    for mode in MODES:
        run = colocate_runs[mode]
        assert run["stand_in_syncs"] >= 3  # step 0, then after steps 1 and 2 (TRL decides when)
        assert max(logp_differences(run)) < 0.02, (mode, logp_differences(run))
    assert control[-1] > 0.1, control
    assert control[-1] > 10 * max(max(logp_differences(colocate_runs[mode])) for mode in MODES)


RESUME_STEPS = 5


def script_command(model_dir, output_dir):
    """scripts/train_grpo.py's flags for the CPU recipe (the worker's `train` adds the colocate stand-in only)."""
    return [str(VLLM_PYTHON), str(WORKER), "train", "--", "--mode", "nsr", "--model", str(model_dir),
            "--reward-func", "digit_rule", "--use-vllm", "--vllm-max-model-length", "64", "--max-steps",
            str(RESUME_STEPS), "--save-steps", "2", "--learning-rate", "0.05", "--max-completion-length", "4",
            "--eval-every", "0", "--no-loss-curve", "--no-diagnostics", "--output-dir", str(output_dir)]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """The script with --use-vllm, killed with SIGKILL after its checkpoint of step 2, then the same command again."""
    workdir = tmp_path_factory.mktemp("vllm-resume")
    model_dir = workdir / "tiny-llama-128"
    subprocess.run([str(VLLM_PYTHON), str(WORKER), "model", str(model_dir)], cwd=ROOT, env=worker_env(), check=True,
                   capture_output=True, timeout=300)
    output_dir = workdir / "run"
    command = script_command(model_dir, output_dir)
    log = open(workdir / "first.log", "w")
    first = subprocess.Popen(command, cwd=ROOT, env=dict(worker_env(), HF_TRAINKIT_TEST_STEP_DELAY="3"), stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    state = output_dir / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not state.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the checkpoint's last files; step 3 is under way (each step sleeps 3 s)
    os.killpg(first.pid, signal.SIGKILL)  # the trainer and vLLM's engine with it
    first.wait()
    log.close()
    assert state.exists(), (workdir / "first.log").read_text()[-5000:]
    assert not (output_dir / "checkpoint-4").exists()  # killed mid-run
    second = subprocess.run(command, cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    newest = max(output_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]))
    final = json.loads((newest / "trainer_state.json").read_text())
    return {"first": first.returncode, "stdout": second.stdout, "log_history": final["log_history"]}


def test_resume_after_kill_continues_with_the_trained_weights_in_vllm(killed_and_resumed):
    """After SIGKILL and the same command again: training goes on from step 2 (the newest checkpoint), and the first
    generation after the resume samples from the trained weights of step 2 (TRL syncs at the first step it sees;
    with the base model's weights in vLLM the gap is ~3, as the control of the colocate checks shows)."""
    assert killed_and_resumed["first"] == -signal.SIGKILL
    assert "checkpoint-2" in killed_and_resumed["stdout"]  # "Resuming from .../checkpoint-2"
    steps = [entry for entry in killed_and_resumed["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in steps] == list(range(1, RESUME_STEPS + 1))
    resumed = [entry["sampling/sampling_logp_difference/mean"] for entry in steps if entry["step"] > 2]
    assert max(resumed) < 0.02, resumed
    assert "NSR [Step 2]" in killed_and_resumed["stdout"]  # the mode line of the first resumed batch
