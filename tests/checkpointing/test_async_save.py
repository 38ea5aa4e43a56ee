"""Background saves (`--async-save`): what the writer writes is what a synchronous save writes, a kill inside the
background write resumes bit-exact, a failed write is loud and the next save synchronous, and a host copy that
cannot fit refuses the run at start."""

import json
import shutil
import threading
from pathlib import Path

import pytest
import safetensors.torch
import torch

from hf_trainkit.checkpointing import COMPLETE_MARKER, find_resume_checkpoint, list_checkpoints
from hf_trainkit.checkpointing import async_save
from hf_trainkit.checkpointing.async_save import HostBufferPool, host_copy_problem, staging, write_staged
from tests.testing_utils import SUBPROCESS_ENV, run_script

from .conftest import QUIET, TRAIN, curves


KILL_AT = Path(__file__).with_name("kill_at.py")
COMMAND = ["--mode", "psr", "--seed", 3, *QUIET, "--max-steps", 6, "--save-steps", 2]


def _state():
    weights = torch.randn(64, 32)
    return {"weights": weights, "view": weights[3:9], "param": torch.nn.Parameter(torch.randn(7)),
            "half": weights.half(), "nested": [1, "x", {"steps": torch.arange(5), "none": None}]}


def test_staged_files_hold_the_bytes_a_direct_save_writes_at_the_time_of_the_save(tmp_path, monkeypatch):
    monkeypatch.setattr(async_save, "SMALL_FILE_BYTES", 0)  # stage even these few KB
    state = _state()
    (tmp_path / "direct").mkdir()
    (tmp_path / "staged").mkdir()
    torch.save(state, tmp_path / "direct" / "optimizer.pt")
    safetensors.torch.save_file({"w": state["weights"], "h": state["half"]}, tmp_path / "direct" / "m.safetensors",
                                metadata={"format": "pt"})
    pool = HostBufferPool()
    with staging(pool) as staged:
        torch.save(state, tmp_path / "staged" / "optimizer.pt")
        safetensors.torch.save_file({"w": state["weights"], "h": state["half"]},
                                    tmp_path / "staged" / "m.safetensors", metadata={"format": "pt"})
    assert not any((tmp_path / "staged").iterdir())  # nothing written yet: staged
    state["weights"].add_(1.0)  # training goes on: the staged copy must not see it
    state["half"].add_(1.0)
    state["param"].data.mul_(3.0)
    write_staged(staged)
    for name in ("optimizer.pt", "m.safetensors"):
        assert (tmp_path / "staged" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes(), name
    loaded = torch.load(tmp_path / "staged" / "optimizer.pt", weights_only=False)
    assert loaded["view"].untyped_storage().data_ptr() == loaded["weights"].untyped_storage().data_ptr()
    assert type(loaded["param"]) is torch.nn.Parameter
    # The next save reuses the host memory of the last one (same sizes: no new allocation).
    buffers = {b.data_ptr() for b in staged.buffers}
    pool.give_back(staged.buffers)
    with staging(pool) as again:
        torch.save(state, tmp_path / "staged" / "optimizer.pt")
    assert {b.data_ptr() for b in again.buffers} <= buffers


def test_only_the_staging_thread_is_redirected(tmp_path, monkeypatch):
    monkeypatch.setattr(async_save, "SMALL_FILE_BYTES", 0)
    other = tmp_path / "other.pt"
    with staging(HostBufferPool()) as staged:
        thread = threading.Thread(target=torch.save, args=({"x": torch.ones(3)}, other))
        thread.start()
        thread.join()
        assert other.is_file()  # written at once by the other thread
        torch.save({"x": torch.ones(3)}, tmp_path / "mine.pt")
    assert [f.path.name for f in staged.files] == ["mine.pt"] and not (tmp_path / "mine.pt").exists()
    assert torch.save.__module__ == "torch.serialization"  # put back after the block


def test_a_small_torch_save_is_written_at_once_byte_for_byte(tmp_path):
    """RNG states (a few KB) are written at once, as without staging: the same bytes as a direct torch.save (staged,
    the round trip through the staged pickle gave the same states in other bytes)."""
    state = {"python": __import__("random").getstate(), "cpu": torch.get_rng_state(), "device": "cpu"}
    for folder in ("direct", "at_once"):  # same file name: torch.save names the archive's folder after it
        (tmp_path / folder).mkdir()
    torch.save(state, tmp_path / "direct" / "rng_state.pth")
    with staging(HostBufferPool()) as staged:
        torch.save(state, tmp_path / "at_once" / "rng_state.pth")
        assert (tmp_path / "at_once" / "rng_state.pth").is_file()  # on disk before the block ends: not staged
        torch.save({"big": torch.zeros(async_save.SMALL_FILE_BYTES // 4 + 1)}, tmp_path / "big.pt")
    assert [f.path.name for f in staged.files] == ["big.pt"] and not (tmp_path / "big.pt").exists()
    at_once, direct = (tmp_path / folder / "rng_state.pth" for folder in ("at_once", "direct"))
    assert at_once.read_bytes() == direct.read_bytes()


@pytest.mark.parametrize("per_process,processes,available,fits", [
    (10, 1, 10, True), (10, 2, 19, False), (3 * 1024 ** 3, 2, 8 * 1024 ** 3, True), (5 * 1024 ** 3, 2, 8 * 1024 ** 3,
                                                                                      False)])
def test_host_copy_problem(per_process, processes, available, fits):
    problem = host_copy_problem(per_process, processes, available)
    assert (problem is None) == fits
    if not fits:
        assert problem.startswith("--async-save: the host copy") and "\n" not in problem


def test_async_save_refuses_at_start_when_the_host_copy_cannot_fit(tmp_path):
    out = tmp_path / "run"
    result = run_script(TRAIN, "--output-dir", out, *COMMAND, "--async-save",
                        env={**SUBPROCESS_ENV, "HF_TRAINKIT_HOST_MEMORY_AVAILABLE": "1000"})
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "--async-save" in line]
    assert len(errors) == 1 and "GiB is available" in errors[0] and "Traceback" not in result.stderr
    assert not list(out.glob("checkpoint-*"))


def test_kill_inside_the_background_write_then_rerun_is_bit_exact(tmp_path, finished_run):
    """`finished_run` is the same command saved synchronously. The kill lands in the background write of step 4,
    after training went on to step 5, with optimizer.pt half written: the run resumes from step 2."""
    out = tmp_path / "run"
    killed = run_script(KILL_AT, "mid-background-write:4", "--output-dir", out, *COMMAND, "--async-save")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (out / "checkpoint-4" / COMPLETE_MARKER).exists()
    assert "being written in the background" in list_checkpoints(out)[1].reason
    assert find_resume_checkpoint(out, warn=False) == str(out / "checkpoint-2")
    # What the writer wrote is what a synchronous save writes.
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
        assert (out / "checkpoint-2" / name).read_bytes() == (finished_run / "checkpoint-2" / name).read_bytes()
    again = run_script(TRAIN, "--output-dir", out, *COMMAND, "--async-save")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stdout and "checkpoint-2" in again.stdout
    assert "Waiting for the background write of checkpoint-6 to finish (the end of training)" in again.stdout
    assert curves(out) == curves(finished_run)
    assert [(c.name, c.valid) for c in list_checkpoints(out)] == [("checkpoint-2", True), ("checkpoint-4", True),
                                                                 ("checkpoint-6", True)]
    for name in ("model.safetensors", "optimizer.pt"):
        assert (out / "checkpoint-6" / name).read_bytes() == (finished_run / "checkpoint-6" / name).read_bytes()
    assert (out / "training_complete.json").exists()


def test_failed_background_write_is_loud_and_the_next_save_is_synchronous(tmp_path, finished_run):
    out = tmp_path / "run"
    result = run_script(KILL_AT, "fail-write:2", "--output-dir", out, *COMMAND, "--async-save", "--save-total-limit", 5)
    assert result.returncode == 0, result.stderr[-3000:]
    failed = [line for line in result.stderr.splitlines() if "background write of" in line]
    assert len(failed) == 1 and "checkpoint-2 failed" in failed[0] and "Is a directory" in failed[0]
    assert "Saving step 4 synchronously: the last background write failed" in result.stderr
    infos = {c.name: c for c in list_checkpoints(out)}
    assert "checkpoint-2" not in infos or not infos["checkpoint-2"].valid  # never marked complete
    assert infos["checkpoint-4"].valid and infos["checkpoint-6"].valid
    marker = json.loads((out / "checkpoint-6" / COMPLETE_MARKER).read_text())
    assert marker["reason"] == "final"
    assert curves(out) == curves(finished_run)  # the failure changed nothing about training


@pytest.mark.slow
def test_control_save_and_stop_with_async_saves(tmp_path):
    """A named save asked for live is answered 'done' (its marker is written before the answer: a background
    write would not have it yet at the next step), and after `control stop` the newest checkpoint is complete."""
    import subprocess
    import sys

    from .test_live_control import ENV, control, wait_for_status

    out = tmp_path / "live"
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(out), "--max-steps", "5000",
               "--save-steps", "3", "--save-total-limit", "2", "--quiet", "--no-loss-curve", "--no-diagnostics",
               "--async-save"]
    with open(tmp_path / "training.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=ENV)
        try:
            wait_for_status(out, process)
            saved = control("save", out, "--name", "look")
            assert saved.returncode == 0, saved.stderr
            named = [c for c in list_checkpoints(out) if c.marker.get("name") == "look"]
            assert len(named) == 1 and named[0].valid and named[0].marker["pinned"]
            assert control("stop", out).returncode == 0
            assert process.wait(timeout=120) == 0
        finally:
            if process.poll() is None:
                process.kill()
    newest = list_checkpoints(out)[-1]
    assert newest.valid and find_resume_checkpoint(out, warn=False) == str(newest.path)


def test_sigterm_during_a_background_write_waits_for_it_says_so_and_resumes_bit_exact(tmp_path, finished_run):
    """A real SIGTERM lands while the background write of step 4 is in flight (sent from inside it; the write held
    until training went on). The preemption save at step 5 waits for it, and the stop waits for the preemption
    save's own write; both are said on the console. `finished_run` is the same command uninterrupted and saved
    synchronously."""
    out = tmp_path / "run"
    stopped = run_script(KILL_AT, "sigterm-in-write:4", "--output-dir", out, *COMMAND, "--async-save")
    assert stopped.returncode == 143, stopped.stderr[-3000:]  # 128 + SIGTERM, after a clean save
    lines = stopped.stdout.splitlines()
    waited = [line for line in lines if line.startswith("Waited ") and "background write of checkpoint-4" in line]
    assert len(waited) == 1 and waited[0].endswith("(before saving step 5)."), stopped.stdout[-3000:]
    stop = lines.index("Waiting for the background write of checkpoint-5 to finish (the stop) ...")
    assert lines[stop + 1].startswith("Background write finished")
    assert any("Stopped by SIGTERM after saving step 5" in line for line in lines[stop + 1:]), stopped.stdout[-3000:]
    infos = list_checkpoints(out)
    assert [(c.name, c.valid) for c in infos] == [("checkpoint-2", True), ("checkpoint-4", True),
                                                 ("checkpoint-5", True)], infos
    assert infos[-1].marker["reason"] == "preempt" and not list(out.glob("checkpoint-*/hf_trainkit_writing.json"))
    assert not (out / "training_complete.json").exists()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):  # written while training went on
        assert (out / "checkpoint-4" / name).read_bytes() == (finished_run / "checkpoint-4" / name).read_bytes()
    again = run_script(TRAIN, "--output-dir", out, *COMMAND, "--async-save")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from {out / 'checkpoint-5'}" in again.stdout
    assert curves(out) == curves(finished_run)
    for name in ("model.safetensors", "optimizer.pt"):
        assert (out / "checkpoint-6" / name).read_bytes() == (finished_run / "checkpoint-6" / name).read_bytes()


def test_an_exception_out_of_training_waits_for_the_background_write_and_says_so(tmp_path, finished_run):
    """A callback raises at step 5 while the background write of step 4 is still in flight (held until then and
    1 s after): the process waits for it before it exits with the traceback, and checkpoint-4 is complete, with
    the files of the synchronous run's checkpoint-4."""
    out = tmp_path / "run"
    result = run_script(KILL_AT, "raise-in-write:4", "--output-dir", out, *COMMAND, "--async-save")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "RuntimeError: kill_at: raised at step 5" in result.stderr
    lines = result.stdout.splitlines()
    waiting = lines.index("Waiting for the background write of checkpoint-4 to finish (training stopped by "
                          "RuntimeError) ...")
    assert lines.index("kill_at: raising at step 5") < waiting and lines[waiting + 1].startswith(
        "Background write finished")
    infos = list_checkpoints(out)
    assert [(c.name, c.valid) for c in infos] == [("checkpoint-2", True), ("checkpoint-4", True)], infos
    assert not (out / "checkpoint-4" / "hf_trainkit_writing.json").exists()
    assert find_resume_checkpoint(out, warn=False) == str(out / "checkpoint-4")
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
        assert (out / "checkpoint-4" / name).read_bytes() == (finished_run / "checkpoint-4" / name).read_bytes()


@pytest.mark.slow
def test_lora_async_saves_equal_synchronous_ones_and_resume_as_from_synchronous_ones(tmp_path):
    """`--lora`: the background writer writes the adapter (PEFT's own safetensors save), its optimizer and scheduler
    byte for byte as a synchronous save; a resume from an asynchronously saved checkpoint trains on exactly as a
    resume from the synchronously saved one, and as the uninterrupted synchronous run."""
    from hf_trainkit.checkpointing.validate import inspect_checkpoint
    from tests.testing_utils import assert_same_rng_state

    command = ["--mode", "psr", "--seed", 3, *QUIET, "--lora", "--max-steps", 4, "--save-steps", 2]
    sync, out = tmp_path / "sync", tmp_path / "async"
    assert run_script(TRAIN, "--output-dir", sync, *command).returncode == 0
    result = run_script(TRAIN, "--output-dir", out, *command, "--async-save")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Waiting for the background write of checkpoint-4 to finish (the end of training)" in result.stdout
    uninterrupted = curves(sync)
    assert curves(out) == uninterrupted
    adapter_files = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt")

    def adapter_config(checkpoint):  # written at once, as always; it names the run's own base model folder, and
        config = json.loads((checkpoint / "adapter_config.json").read_text())  # its module set in hash order
        assert Path(config.pop("base_model_name_or_path")) == checkpoint.parent / "base_model"
        return {**config, "target_modules": sorted(config["target_modules"])}

    infos = list_checkpoints(out)
    assert [c.name for c in infos] == ["checkpoint-2", "checkpoint-4"]
    for info in infos:
        assert inspect_checkpoint(info.path, verify=True).valid and "checksums" in info.marker
        assert "adapter_model.safetensors" in info.marker["files"] and "model.safetensors" not in info.marker["files"]
        for name in adapter_files:
            assert (info.path / name).read_bytes() == (sync / info.name / name).read_bytes(), (info.name, name)
        assert_same_rng_state(info.path / "rng_state.pth", sync / info.name / "rng_state.pth")
        assert adapter_config(info.path) == adapter_config(sync / info.name)
    # Both runs preempted after step 2, and resumed (each as it was saved).
    resumed = {}
    for run, flags in ((out, ["--async-save"]), (sync, [])):
        shutil.rmtree(run / "checkpoint-4")
        (run / "training_complete.json").unlink()
        again = run_script(TRAIN, "--output-dir", run, *command, *flags)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"Resuming from {run / 'checkpoint-2'}" in again.stdout
        resumed[run] = curves(run)
    assert resumed[out] == resumed[sync] == uninterrupted and [s for s, *_ in uninterrupted] == [1, 2, 3, 4]
    for name in adapter_files:
        assert (out / "checkpoint-4" / name).read_bytes() == (sync / "checkpoint-4" / name).read_bytes(), name
