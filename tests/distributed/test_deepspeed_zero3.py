"""Real multi-process DeepSpeed ZeRO-3 (`accelerate launch --config_file deepspeed_configs/zero3_cpu.yaml`, CPU,
gloo), running scripts/train_grpo.py as a user does.

DeepSpeed builds its shared-memory comm op once per machine (~50 s, cached in TORCH_EXTENSIONS_DIR, by default
~/.cache/torch_extensions); the runs after that take 10-20 s each. The default test command runs one
configuration; HF_TRAINKIT_FULL_TESTS=1 (CI) runs them all.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_trainkit.checkpointing import find_resume_checkpoint, list_checkpoints
from tests.testing_utils import ROOT, SUBPROCESS_ENV, TRAIN, log_history


pytest.importorskip("deepspeed", reason="pip install -e '.[deepspeed]'")
pytestmark = pytest.mark.deepspeed

HARNESS = ROOT / "tests" / "distributed" / "rank_views.py"
ZERO3_CPU = ROOT / "deepspeed_configs" / "zero3_cpu.yaml"
ENV = {**SUBPROCESS_ENV, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
_ports = iter(range(29650, 29700))


def zero3(num_processes, *argv, script=HARNESS):
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3_CPU),
            "--num_processes", str(num_processes), "--main_process_port", str(next(_ports)), str(script),
            "--no-loss-curve", *map(str, argv)]


def ddp(num_processes, *argv):
    if num_processes == 1:
        return [sys.executable, str(TRAIN), "--no-loss-curve", *map(str, argv)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(next(_ports)), str(TRAIN), "--no-loss-curve", *map(str, argv)]


def run(command, timeout=600):
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    result.seconds = time.time() - started
    return result


def curves(output_dir):
    return [(h["step"], h["loss"], h["reward"], h["grad_norm"]) for h in log_history(output_dir) if "reward" in h]


def assert_same_curves(got, expected, first_step=1, grad_norm_rel=1e-4):
    """Same steps, rewards, losses; grad norms within `grad_norm_rel` (ZeRO-3 reduces in another order than DDP:
    equal to about 1e-6). Without `unshare_step_counts` a universal-checkpoint resume drifts by ~9% in six steps."""
    got = [c for c in got if c[0] >= first_step]
    expected = [c for c in expected if c[0] >= first_step]
    assert [c[0] for c in got] == [c[0] for c in expected]
    for (_, loss, reward, norm), (_, loss_e, reward_e, norm_e) in zip(got, expected):
        assert reward == reward_e  # the same samples were drawn and scored
        assert loss == pytest.approx(loss_e, rel=1e-5, abs=1e-7)
        assert norm == pytest.approx(norm_e, rel=grad_norm_rel)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torch's launcher starts the workers in sessions of their own)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_9_everything(process):
    """The machine goes away: the launcher and all its workers get SIGKILL at once."""
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def keep_only(source: Path, target: Path, step: int) -> Path:
    """A copy of a run dir holding only checkpoint-<step>: what a preempted run leaves."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoint-*", "training_complete.json",
                                                                  "rank_views", "wandb"))
    shutil.copytree(source / f"checkpoint-{step}", target / f"checkpoint-{step}")
    return target


MODES_AND_LORA = [pytest.param("psr", False, id="psr")] + [
    pytest.param(mode, lora, id=f"{mode}{'-lora' if lora else ''}", marks=pytest.mark.slow)
    for mode in ("grpo", "psr", "nsr", "w-reinforce") for lora in (False, True) if (mode, lora) != ("psr", False)]


@pytest.mark.parametrize("mode,lora", MODES_AND_LORA)
def test_zero3_two_processes(tmp_path, mode, lora):
    out = tmp_path / "run"
    # W&B offline in the LoRA-off runs (its start-up costs seconds; what it checks does not depend on LoRA).
    wandb = [] if lora else ["--wandb-every", 2]
    result = run(zero3(2, "--mode", mode, *(["--lora"] if lora else []), "--output-dir", out, "--max-steps", 4,
                       "--save-steps", 2, *wandb, "--checkpoint-metric", "reward", "--save-top-k", 1,
                       "--checkpoint-smoothing", 0, "--eval-every", 2, "--eval-n", 4, "--eval-k", 1, 4))
    assert "world size 2, distributed type DistributedType.DEEPSPEED, ZeRO stage 3" in result.stdout
    # Several wrong set-ups exit 0 while running two single-process trainings: both ranks must see one group.
    views = [json.loads((out / "rank_views" / f"rank_{i}.json").read_text()) for i in (0, 1)]
    assert [(v["process_index"], v["world_size"]) for v in views] == [(0, 2), (1, 2)]
    prefix = mode.replace("-", "_")
    steps = [[{k: x for k, x in h.items() if k.startswith(f"{prefix}/") or k in ("reward", "loss", "step")}
              for h in v["log_history"] if f"{prefix}/kept_samples" in h] for v in views]
    assert len(steps[0]) == 4 and steps[0] == steps[1]  # rank 1 logged the very same global metrics
    for h in steps[0]:
        assert h[f"{prefix}/positive_samples"] + h[f"{prefix}/negative_samples"] == 32  # 2 ranks x 16
        assert h[f"{prefix}/positive_ratio"] == pytest.approx(h["reward"])
    # Saves: complete, with both ranks' ZeRO shards listed in the marker (written after both finished).
    assert find_resume_checkpoint(out) == str(out / "checkpoint-4")
    for checkpoint in list_checkpoints(out):
        assert checkpoint.valid and checkpoint.marker["world_size"] == 2
        shards = [f for f in checkpoint.marker["files"] if "optim_states" in f]
        assert len(shards) == 2 and all(checkpoint.marker["files"][f] > 0 for f in shards)
    # The policy kept the best rewarded checkpoint of {2, 4} and the newest.
    rewards = {h["step"]: h["reward"] for h in steps[0]}
    assert {c.step for c in list_checkpoints(out)} == {max((2, 4), key=lambda s: (rewards[s], -s)), 4}
    if not lora:  # W&B offline: one run, written by the main process only
        assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    # pass@k under ZeRO-3: each rank generated its share with the gathered parameters; both logged the same.
    evals = [[h for h in v["log_history"] if "eval/pass@1" in h] for v in views]
    assert [h["step"] for h in evals[0]] == [0, 2, 4] and evals[0] == evals[1]
    assert all(h["eval/num_prompts"] == 6 for h in evals[0])
    # The final weights (full model, or adapter) at the top of the output dir.
    assert (out / ("adapter_model.safetensors" if lora else "model.safetensors")).exists()
    if lora:
        assert (out / "checkpoint-4" / "adapter_model.safetensors").exists()
    print(f"2-process ZeRO-3 run ({mode}, lora={lora}): {result.seconds:.1f} s")


@pytest.mark.slow
def test_control_request_then_sigterm_under_zero3(tmp_path):
    out = tmp_path / "live"
    command = zero3(2, "--mode", "nsr", "--output-dir", out, "--max-steps", 5000, "--save-steps", 100000, "--quiet")
    with open(tmp_path / "log.txt", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT,
                                   start_new_session=True)
        try:
            deadline = time.time() + 300
            while not (out / "control" / "status.json").exists():
                assert process.poll() is None and time.time() < deadline, (tmp_path / "log.txt").read_text()[-3000:]
                time.sleep(0.2)
            saved = subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "control", "save", str(out), "--name",
                                    "zero3-named"], capture_output=True, text=True, env=ENV, timeout=120)
            assert saved.returncode == 0, saved.stderr
            sent = time.time()
            process.send_signal(signal.SIGTERM)  # to the launcher, which forwards it to both workers
            process.wait(timeout=60)
            assert time.time() - sent < 30, "not done before accelerate's kill timeout"
        finally:
            if process.poll() is None:
                kill_9_everything(process)
    log_text = (tmp_path / "log.txt").read_text()
    assert "Stopped by SIGTERM after saving step" in log_text
    infos = list_checkpoints(out)
    assert [i.marker.get("reason") for i in infos] == ["manual", "preempt"] and all(i.valid for i in infos)
    assert infos[0].marker["name"] == "zero3-named"
    for info in infos:
        tag = (info.path / "latest").read_text().strip()
        assert len(list((info.path / tag).glob("*optim_states.pt"))) == 2  # both ranks saved at this step


@pytest.fixture(scope="module")
def zero3_reference(tmp_path_factory):
    """An uninterrupted 2-process ZeRO-3 run, a checkpoint at every step."""
    out = tmp_path_factory.mktemp("zero3") / "reference"
    run(zero3(2, "--mode", "w-reinforce", "--output-dir", out, "--max-steps", 10, "--save-steps", 1))
    return out


@pytest.mark.slow
def test_kill_9_of_the_launcher_then_rerun_is_exact(tmp_path, zero3_reference):
    out = tmp_path / "killed"
    command = zero3(2, "--mode", "w-reinforce", "--output-dir", out, "--max-steps", 10, "--save-steps", 1)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT,
                               start_new_session=True)
    deadline = time.time() + 300
    while find_resume_checkpoint(out, warn=False) is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.4)  # lands in a later step or save
    kill_9_everything(process)
    time.sleep(1)
    assert not (out / "training_complete.json").exists(), "the kill did not land mid-training"
    again = run(zero3(2, "--mode", "w-reinforce", "--output-dir", out, "--max-steps", 10, "--save-steps", 1))
    assert "Resuming from" in again.stdout
    assert curves(out) == curves(zero3_reference)  # 2 -> 2 processes: bit for bit


@pytest.mark.slow
def test_two_to_one_process_through_a_universal_checkpoint(tmp_path, zero3_reference):
    resumed = keep_only(zero3_reference, tmp_path / "zero3-2to1", 2)
    result = run(zero3(1, "--mode", "w-reinforce", "--output-dir", resumed, "--max-steps", 10, "--save-steps", 100))
    assert "written by 2 processes, resuming with 1: converting it" in result.stdout
    assert (resumed / "checkpoint-2" / "latest_universal").exists()
    # The same resume under DDP: 2 processes to step 2, then 1 process.
    ddp_run = tmp_path / "ddp"
    run(ddp(2, "--mode", "w-reinforce", "--output-dir", ddp_run, "--max-steps", 10, "--save-steps", 2))
    ddp_resumed = keep_only(ddp_run, tmp_path / "ddp-2to1", 2)
    run(ddp(1, "--mode", "w-reinforce", "--output-dir", ddp_resumed, "--max-steps", 10, "--save-steps", 100))
    assert_same_curves(curves(resumed), curves(ddp_resumed))
    assert curves(resumed)[:2] == curves(zero3_reference)[:2]


@pytest.mark.slow
def test_one_to_two_processes_through_a_universal_checkpoint(tmp_path):
    single = tmp_path / "zero3-1"
    run(zero3(1, "--mode", "w-reinforce", "--output-dir", single, "--max-steps", 10, "--save-steps", 2))
    resumed = keep_only(single, tmp_path / "zero3-1to2", 2)
    result = run(zero3(2, "--mode", "w-reinforce", "--output-dir", resumed, "--max-steps", 10, "--save-steps", 100))
    assert "written by 1 processes, resuming with 2: converting it" in result.stdout
    plain = tmp_path / "plain-1"
    run(ddp(1, "--mode", "w-reinforce", "--output-dir", plain, "--max-steps", 10, "--save-steps", 2))
    plain_resumed = keep_only(plain, tmp_path / "ddp-1to2", 2)
    run(ddp(2, "--mode", "w-reinforce", "--output-dir", plain_resumed, "--max-steps", 10, "--save-steps", 100))
    assert_same_curves(curves(resumed), curves(plain_resumed))
