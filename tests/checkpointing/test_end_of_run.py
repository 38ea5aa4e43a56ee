"""The end of a run: `training_complete.json` is written last, after the final trainer_state.json, config and weights
at the top of the output dir, and vouches for them; a re-run that finds it checks them and, when they are missing or
damaged, finishes the job. Kills are landed in every window of the end of training (a real SIGKILL, from inside the
training process at a named point: `kill_at.py`), each followed by a re-run of the same command that must end with
the same final weights and logged history as the uninterrupted run (the `finished_run` fixture, same command)."""

import json
from pathlib import Path

import pytest

from hf_trainkit.checkpointing import find_resume_checkpoint, inspect_checkpoint, read_training_complete
from hf_trainkit.checkpointing.finished import final_outputs_problem

from .conftest import QUIET, train
from tests.testing_utils import log_history, run_script


KILL_AT = Path(__file__).with_name("kill_at.py")
COMMAND = ["--mode", "psr", "--seed", 3, *QUIET, "--max-steps", 6, "--save-steps", 2]  # conftest.train + finished_run


def final_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


def same_weights(run: Path, reference: Path) -> bool:
    import torch

    mine, theirs = final_weights(run), final_weights(reference)
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def step_logs(run: Path) -> list[dict]:
    """Every logged entry but the end-of-training summary, without the wall-clock step time: what a resumed run
    must log exactly as the uninterrupted one did."""
    return [{k: v for k, v in entry.items() if k != "step_time"} for entry in log_history(run)
            if "train_runtime" not in entry]


def assert_finished_like(run: Path, reference: Path):
    record = read_training_complete(run)
    assert record and record["global_step"] == 6 and final_outputs_problem(run, record) == ""
    assert same_weights(run, reference)
    assert step_logs(run) == step_logs(reference)
    assert [entry["step"] for entry in step_logs(run) if "reward" in entry] == [1, 2, 3, 4, 5, 6]
    # What the record vouches for loads, as `hf-trainkit eval RUN` and from_pretrained(RUN) do.
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run) is not None


def test_the_record_vouches_for_the_final_files_and_sees_damage(run_copy):
    record = read_training_complete(run_copy)
    assert set(record["files"]) == {"trainer_state.json", "model.safetensors", "config.json"}
    assert set(record["checksums"]) == set(record["files"])
    assert final_outputs_problem(run_copy, record) == ""
    # Written last: no final file is newer than the record.
    assert all((run_copy / name).stat().st_mtime_ns <= (run_copy / "training_complete.json").stat().st_mtime_ns
               for name in record["files"])
    weights = run_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) * 3 // 5] ^= 0x5A  # same size, other bytes
    weights.write_bytes(bytes(data))
    assert "model.safetensors does not match its checksum" in final_outputs_problem(run_copy, record)
    (run_copy / "config.json").unlink()
    assert final_outputs_problem(run_copy, record) == "config.json is missing"


@pytest.mark.parametrize("damage", ["final files gone, record of the earlier version", "final weights corrupted"])
def test_a_record_whose_final_files_are_damaged_is_finished_from_the_final_checkpoint(run_copy, finished_run,
                                                                                       damage):
    record_file = run_copy / "training_complete.json"
    marker = (run_copy / "checkpoint-6" / "hf_trainkit_complete.json").read_bytes()
    if damage.startswith("final files gone"):
        # What the earlier version left after a kill between its record and the final save (issue 23).
        old = json.loads(record_file.read_text())
        record_file.write_text(json.dumps({k: old[k] for k in ("global_step", "max_steps", "num_train_epochs",
                                                               "finished_at")}))
        for name in ("trainer_state.json", "config.json", "model.safetensors"):
            (run_copy / name).unlink()
    else:
        weights = run_copy / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    result = train(run_copy, "--max-steps", 6, "--save-steps", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote the final weights and state from {run_copy / 'checkpoint-6'}" in result.stdout, result.stdout
    # No trainer was even built: nothing resumed, the checkpoint untouched, the record says where the files came from.
    assert "Resuming from" not in result.stdout and read_training_complete(run_copy)["finished_from"] == "checkpoint-6"
    assert (run_copy / "checkpoint-6" / "hf_trainkit_complete.json").read_bytes() == marker
    assert_finished_like(run_copy, finished_run)
    again = train(run_copy, "--max-steps", 6, "--save-steps", 2)
    assert again.returncode == 0 and "nothing to train" in again.stdout


def test_a_record_without_final_files_and_a_damaged_last_checkpoint_trains_the_missing_steps(run_copy, finished_run):
    # The case: the record claims the end, the final files are gone, and the newest checkpoint broke off
    # (its trainer_state.json gone): the steps after the newest valid checkpoint (5 and 6) must be trained.
    for name in ("trainer_state.json", "config.json", "model.safetensors"):
        (run_copy / name).unlink()
    (run_copy / "checkpoint-6" / "trainer_state.json").unlink()
    broken = sorted(p.name for p in (run_copy / "checkpoint-6").iterdir())
    result = train(run_copy, "--max-steps", 6, "--save-steps", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"resuming from {run_copy / 'checkpoint-4'}, the newest valid checkpoint, to train steps 5-6"
            in result.stdout), result.stdout
    assert f"Resuming from {run_copy / 'checkpoint-4'}" in result.stdout
    assert_finished_like(run_copy, finished_run)
    # The broken checkpoint was moved aside, not lost; the new checkpoint-6 is complete.
    (aside,) = run_copy.glob("superseded/*/checkpoint-6")
    assert sorted(p.name for p in aside.iterdir()) == broken
    assert inspect_checkpoint(run_copy / "checkpoint-6", verify=True).valid
    assert json.loads((run_copy / "checkpoint-6" / "hf_trainkit_complete.json").read_text())["segments"] == 2


LAST_STEP_WRITTEN = ("{run}/checkpoint-6 is the last step of this run (6 of 6), but the run ended before its final "
                     "weights and state were written: wrote the final weights and state from {run}/checkpoint-6")
WINDOWS = {
    # window: (the newest valid checkpoint the kill leaves, what the re-run says)
    "last-step": ("checkpoint-4", "Resuming from {run}/checkpoint-4"),
    "last-checkpoint": ("checkpoint-6", LAST_STEP_WRITTEN),
    "train-end": ("checkpoint-6", LAST_STEP_WRITTEN),
    "final-save": ("checkpoint-6", LAST_STEP_WRITTEN),
    "after-record": ("checkpoint-6", "already holds a finished run"),
}


@pytest.mark.parametrize("window", [pytest.param(w, marks=() if w == "train-end" else pytest.mark.slow)
                                    for w in WINDOWS])
def test_a_kill_in_each_window_of_the_end_is_finished_by_the_rerun(tmp_path, finished_run, window):
    run = tmp_path / "run"
    killed = run_script(KILL_AT, window, "--output-dir", run, *COMMAND)
    assert killed.returncode == -9, killed.stderr[-3000:]
    newest, says = WINDOWS[window]
    assert find_resume_checkpoint(run) == str(run / newest)
    # Whatever the moment, a completion record never vouches for what is not there.
    record = read_training_complete(run)
    assert (record is not None) == (window == "after-record")
    if record is not None:
        assert final_outputs_problem(run, record) == ""
    rerun = train(run, "--max-steps", 6, "--save-steps", 2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert says.format(run=run) in rerun.stdout, rerun.stdout[-3000:]
    assert_finished_like(run, finished_run)


def _rule_file(path: Path, rows: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"{rule} =", "rule": rule}) + "\n"
                            for rule in ["even", "odd"] * (rows // 2)))
    return path


def _mtimes(run: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}


@pytest.mark.parametrize("epochs", ["1", "0.5"])
def test_a_finished_epoch_mode_run_is_finished_on_a_rerun(tmp_path, epochs):
    """A user's data set without --max-steps (max_steps=-1: whole epochs): the re-run of the same command finds the
    run finished and writes nothing; before, it took it for a run killed after its last checkpoint, on every
    re-run, and rewrote the final weights."""
    data = _rule_file(tmp_path / "rules.jsonl", 16)  # 2 prompts a step (16 completions, 8 per prompt): 8 steps an epoch
    command = ["--dataset", data, "--reward-func", "digit_rule", "--max-completion-length", 4, "--save-steps", 2,
               "--num-train-epochs", epochs]
    run = tmp_path / "run"
    first = train(run, *command)
    assert first.returncode == 0, first.stderr[-3000:]
    steps = {"1": 8, "0.5": 4}[epochs]
    record = read_training_complete(run)
    assert (record["global_step"], record["max_steps"]) == (steps, steps)
    before = _mtimes(run)
    for _ in range(2):  # every re-run, not just the first
        again = train(run, *command)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"already holds a finished run at step {steps} of {steps}: nothing to train" in again.stdout
        assert "wrote the final weights" not in again.stdout and "Resuming" not in again.stdout, again.stdout
        assert _mtimes(run) == before  # nothing rewritten, the record neither
    # A run cut short by --max-steps is not an epoch-mode run that finished: the same data set without --max-steps
    # trains the rest of the epoch, from its last checkpoint.
    short = tmp_path / "short"
    assert train(short, *command[:-2], "--max-steps", 2).returncode == 0
    rest = train(short, *command[:-2])
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert f"Resuming from {short / 'checkpoint-2'}" in rest.stdout, rest.stdout
    assert read_training_complete(short)["global_step"] == 8


def test_a_run_stopped_by_a_stop_request_says_where_it_stopped_and_how_to_continue(tmp_path):
    import subprocess
    import sys
    import time

    from tests.testing_utils import SUBPROCESS_ENV, TRAIN

    from hf_trainkit.control import submit_request

    run = tmp_path / "run"
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(run), "--seed", "3", *QUIET,
               "--max-steps", "300", "--save-steps", "100", "--eval-every", "0"]
    with open(tmp_path / "training.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=SUBPROCESS_ENV)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and process.poll() is None:
                try:
                    if json.loads((run / "control" / "status.json").read_text())["step"] >= 2:
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.1)
            submit_request(run, "stop")
            assert process.wait(timeout=240) == 0, (tmp_path / "training.log").read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
    stopped = read_training_complete(run)["global_step"]
    assert 2 <= stopped < 300
    again = train(run, "--max-steps", 300, "--save-steps", 100, "--eval-every", 0)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"holds a run stopped at step {stopped} of 300 by a stop request (hf-trainkit control stop): nothing to "
            f"train. To continue from checkpoint-{stopped} to step 300: the same command with "
            "--resume-from-checkpoint latest; to train again from scratch: --no-resume.") in again.stdout, again.stdout
    # ... and what it says works: the run goes on from where it stopped (killed once it said so).
    resumed = subprocess.Popen([*command, "--resume-from-checkpoint", "latest"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=SUBPROCESS_ENV)
    try:
        said = next((line for line in resumed.stdout if line.startswith("Resuming from")), "")
    finally:
        resumed.kill()
        resumed.wait()
    assert said.strip() == f"Resuming from {run / f'checkpoint-{stopped}'}"
