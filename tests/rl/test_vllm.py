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

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"vLLM's CPU build is not installed: build {VLLM_PYTHON.parent.parent.name} with scripts/make_vllm_venv.sh",
)


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
        return torch.where(positive, 0.0, -negative_weight), ~positive
    if mode == "w-reinforce":
        return torch.where(positive, positive_weight, -negative_weight), torch.ones_like(positive)
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
            assert step["is_ratio_rows"] == (kept if step["keep"] is not None else len(keep))
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
