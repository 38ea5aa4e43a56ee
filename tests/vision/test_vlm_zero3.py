"""The tiny VLM under real 2-process DeepSpeed ZeRO-3 (CPU, gloo): trains with the filter, both ranks agree, the
checkpoints hold both ranks' shards, and a 2-process checkpoint resumes with 1 process as DDP does."""

import json

import pytest

from hf_trainkit.checkpointing import list_checkpoints
from tests.distributed.test_deepspeed_zero3 import assert_same_curves, curves, ddp, keep_only, run, zero3
from tests.testing_utils import ROOT


pytest.importorskip("deepspeed", reason="pip install -e '.[deepspeed]'")
pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

CHART = ["--task", "chart", "--mode", "nsr", "--seed", 5, "--no-diagnostics"]


def test_vlm_zero3_two_processes_then_resume_with_one(tmp_path):
    out = tmp_path / "zero3"
    result = run(zero3(2, *CHART, "--output-dir", out, "--max-steps", 4, "--save-steps", 2, "--eval-every", 2,
                       "--eval-n", 4, "--eval-k", 1, 4))
    assert "world size 2, distributed type DistributedType.DEEPSPEED, ZeRO stage 3" in result.stdout
    views = [json.loads((out / "rank_views" / f"rank_{i}.json").read_text()) for i in (0, 1)]
    assert [(v["process_index"], v["world_size"]) for v in views] == [(0, 2), (1, 2)]
    steps = [[{k: x for k, x in h.items() if k.startswith("nsr/") or k in ("reward", "loss", "step")}
              for h in v["log_history"] if "nsr/kept_samples" in h] for v in views]
    assert len(steps[0]) == 4 and steps[0] == steps[1]
    for h in steps[0]:
        assert h["nsr/positive_samples"] + h["nsr/negative_samples"] == 32  # 2 ranks x 16
        assert h["nsr/kept_samples"] == h["nsr/negative_samples"]
    evals = [[h for h in v["log_history"] if "eval/pass@1" in h] for v in views]
    assert [h["step"] for h in evals[0]] == [0, 2, 4] and evals[0] == evals[1]
    assert all(h["eval/num_prompts"] == 12 for h in evals[0])  # the chart task's held-out charts, split over ranks
    for checkpoint in list_checkpoints(out):
        assert checkpoint.valid and checkpoint.marker["world_size"] == 2
        assert len([f for f in checkpoint.marker["files"] if "optim_states" in f]) == 2

    resumed = keep_only(out, tmp_path / "zero3-2to1", 2)
    again = run(zero3(1, *CHART, "--output-dir", resumed, "--max-steps", 4, "--save-steps", 100, "--eval-every", 0))
    assert "written by 2 processes, resuming with 1: converting it" in again.stdout
    # The same resume under DDP: 2 processes to step 2, then 1 process.
    ddp_run = tmp_path / "ddp"
    run(ddp(2, *CHART, "--output-dir", ddp_run, "--max-steps", 4, "--save-steps", 2, "--eval-every", 0))
    ddp_resumed = keep_only(ddp_run, tmp_path / "ddp-2to1", 2)
    run(ddp(1, *CHART, "--output-dir", ddp_resumed, "--max-steps", 4, "--save-steps", 100, "--eval-every", 0))
    assert_same_curves(curves(resumed), curves(ddp_resumed))
    assert curves(resumed)[:2] == curves(out)[:2]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_vlm_loss_under_zero3_equals_trl_loss_on_the_kept_samples(tmp_path, loss_type):
    """On each of 2 ZeRO-3 ranks, at each update, the loss equals TRL's loss on the rank's kept samples alone
    (images included), the two ranks keeping different samples."""
    out = tmp_path / loss_type
    run(zero3(2, "--task", "chart", "--mode", "nsr", "--seed", 5, "--no-diagnostics", "--output-dir", out,
              "--max-steps", 3, "--no-save-checkpoints", "--eval-every", 0, "--loss-type", loss_type,
              "--reward-func", "tests.vision.zero3_loss_harness:rank_reward",
              script=ROOT / "tests" / "vision" / "zero3_loss_harness.py"))
    records = [json.loads((out / "loss_records" / f"rank_{i}.json").read_text()) for i in (0, 1)]
    assert [len(r) for r in records] == [3, 3]
    # NSR keeps the wrong answers, 8 of 16 on each rank (TRL shuffles the rows before the update)
    assert all(len(r["kept"]) == 8 for rank in records for r in rank)
    assert all(r["forwarded"] == 8 for rank in records for r in rank)  # the dropped 8 never reached the model
    for rank in records:
        for record in rank:
            assert record["ours"] == pytest.approx(record["reference"], rel=1e-5, abs=1e-7), record
