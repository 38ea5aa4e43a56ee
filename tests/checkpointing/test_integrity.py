"""Checkpoint integrity as an adversary tries it: same-size corruption, checkpoints that cannot be loaded, missing
files, malformed markers and states (fuzzed), re-saves, a fresh start in a finished run's dir, full disks."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_trainkit.checkpointing import COMPLETE_MARKER, find_resume_checkpoint, inspect_checkpoint, list_checkpoints
from hf_trainkit.commands.checkpoints import main as checkpoints_main
from hf_trainkit.checkpointing.marker import IncompleteCheckpointError, write_complete_marker

from .conftest import ROOT, TRAIN, curves, start_and_wait_for_step, train


def flip_byte(path: Path, offset_fraction: float = 0.6):
    """Change one byte in the middle of a file: the size stays the same."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0x5A
    path.write_bytes(bytes(data))


def drop_markers(run: Path):
    for marker in run.glob(f"checkpoint-*/{COMPLETE_MARKER}"):
        marker.unlink()


# --- what the marker records --------------------------------------------------------------------------------------


def test_marker_records_a_checksum_of_every_file_and_the_files_a_resume_needs(finished_run):
    checkpoint = finished_run / "checkpoint-6"
    marker = json.loads((checkpoint / COMPLETE_MARKER).read_text())
    on_disk = sorted(p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*")
                     if p.is_file() and p.name != COMPLETE_MARKER)
    assert sorted(marker["checksums"]) == on_disk == sorted(marker["files"])
    for name, digest in marker["checksums"].items():
        assert digest == xxhash.xxh3_128((checkpoint / name).read_bytes()).hexdigest()
    assert set(marker["required"]) == {"trainer_state.json", "model.safetensors", "config.json", "optimizer.pt",
                                       "scheduler.pt", "rng_state.pth"}


def test_a_save_without_its_weights_gets_no_marker_and_old_markers_need_weights(run_copy):
    checkpoint = run_copy / "checkpoint-6"
    (checkpoint / COMPLETE_MARKER).unlink()
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(IncompleteCheckpointError, match="model weights"):
        write_complete_marker(checkpoint, {"step": 6})
    assert not (checkpoint / COMPLETE_MARKER).exists()
    # A marker of the first format (no "required"), listing whatever was there, without weights: not valid.
    older = run_copy / "checkpoint-4"
    marker = json.loads((older / COMPLETE_MARKER).read_text())
    (older / "model.safetensors").unlink()
    del marker["files"]["model.safetensors"], marker["required"], marker["checksums"]
    (older / COMPLETE_MARKER).write_text(json.dumps(marker))
    info = inspect_checkpoint(older)
    assert not info.valid and "model weights is missing" in info.reason
    assert find_resume_checkpoint(run_copy) == str(run_copy / "checkpoint-2")


# --- corruption a size check cannot see -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_same_size_corruption_is_found_by_the_checksum(run_copy, name, capsys):
    checkpoint = run_copy / "checkpoint-6"
    flip_byte(checkpoint / name)
    assert inspect_checkpoint(checkpoint).valid  # every size still matches
    info = inspect_checkpoint(checkpoint, verify=True)
    assert not info.valid and f"{name} does not match its checksum" in info.reason
    assert find_resume_checkpoint(run_copy) == str(run_copy / "checkpoint-4")
    assert checkpoints_main(["latest", str(run_copy)]) == 0
    assert capsys.readouterr().out.strip() == str(checkpoint)  # without --verify: sizes only
    assert checkpoints_main(["latest", "--verify", str(run_copy)]) == 0
    assert capsys.readouterr().out.strip() == str(run_copy / "checkpoint-4")
    assert checkpoints_main(["list", "--verify", str(run_copy)]) == 0
    assert "does not match its checksum" in capsys.readouterr().out


def test_resume_skips_a_corrupted_checkpoint_and_matches_an_uninterrupted_run(run_copy, finished_run):
    flip_byte(run_copy / "checkpoint-6" / "model.safetensors")
    corrupted = (run_copy / "checkpoint-6" / "model.safetensors").read_bytes()
    (run_copy / "training_complete.json").unlink()
    result = train(run_copy, "--max-steps", 6, "--save-steps", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {run_copy / 'checkpoint-4'}" in result.stdout
    assert result.stderr.count("does not match its checksum") == 1
    # Steps 5 and 6 trained again from checkpoint-4 equal the run that never had a corrupted file.
    assert curves(run_copy) == curves(finished_run)
    # The corrupted checkpoint was not deleted: moved aside, byte for byte.
    (aside,) = run_copy.glob("superseded/*/checkpoint-6")
    assert (aside / "model.safetensors").read_bytes() == corrupted
    assert inspect_checkpoint(run_copy / "checkpoint-6", verify=True).valid


def replace_pickle(path: Path):
    """Rewrite a torch zip file with its pickle replaced by garbage (a file that was bad when written)."""
    source = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    with zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, b"\x80\x05garbage, not a pickle" if item.filename.endswith("data.pkl") else data)


def test_unloadable_pickle_of_a_plain_transformers_checkpoint_is_skipped(run_copy):
    drop_markers(run_copy)
    replace_pickle(run_copy / "checkpoint-6" / "optimizer.pt")
    assert inspect_checkpoint(run_copy / "checkpoint-6").valid  # complete zip, every file there
    info = inspect_checkpoint(run_copy / "checkpoint-6", verify=True)
    assert not info.valid and "optimizer.pt cannot be loaded" in info.reason
    assert find_resume_checkpoint(run_copy) == str(run_copy / "checkpoint-4")


def test_a_load_that_fails_falls_back_to_the_next_older_checkpoint(run_copy, finished_run):
    """Weights whose header is fine but whose shapes do not fit the model: only the real load finds out."""
    from safetensors.torch import load_file, save_file

    drop_markers(run_copy)
    weights = run_copy / "checkpoint-6" / "model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name][:1].clone()
    save_file(tensors, weights, metadata={"format": "pt"})
    assert inspect_checkpoint(run_copy / "checkpoint-6", verify=True).valid
    (run_copy / "training_complete.json").unlink()
    result = train(run_copy, "--max-steps", 6, "--save-steps", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "could not load" in line]
    assert len(warnings) == 1 and "resuming from" in warnings[0] and "checkpoint-4" in warnings[0]
    assert curves(run_copy) == curves(finished_run)
    (aside,) = run_copy.glob("superseded/*/checkpoint-6")  # kept, marked: a later resume skips it at once
    assert "a resume could not load it (RuntimeError" in inspect_checkpoint(aside).reason


# --- malformed markers and states: reported, never a traceback --------------------------------------------------


MALFORMED = [
    (COMPLETE_MARKER, "[1, 2, 3]", "holds a list"),
    (COMPLETE_MARKER, '{"files": ["model.safetensors"]}', "'files' is not a map"),
    (COMPLETE_MARKER, '{"files": {"../../etc/passwd": 1}}', "points outside"),
    (COMPLETE_MARKER, "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("trainer_state.json", '{"global_step": 6, "log_history": null}', "log_history is not a list"),
    ("trainer_state.json", '{"global_step": "6", "log_history": []}', "global_step is '6'"),
    ("trainer_state.json", '{"global_step": 6, "log_history": [1, 2]}', "log_history is not a list"),
    ("trainer_state.json", '{"global_step": NaN, "log_history": []}', "not a step number"),
    ("trainer_state.json", '{"global_step": 6, "log_history": [], "epoch": "x"}', "epoch is"),
    ("trainer_state.json", b"\xff\xfe not utf-8", "unreadable"),
]


@pytest.mark.parametrize("name,content,reason", MALFORMED)
def test_malformed_markers_and_states_are_invalid_with_a_reason(run_copy, name, content, reason, capsys):
    target = run_copy / "checkpoint-6" / name
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    info = inspect_checkpoint(target.parent)
    assert not info.valid and reason in info.reason
    assert find_resume_checkpoint(run_copy) == str(run_copy / "checkpoint-4")
    for argv in (["list", str(run_copy)], ["list", "--json", str(run_copy)], ["latest", str(run_copy)],
                 ["inspect", str(target.parent)]):
        assert checkpoints_main(argv) in (0, 1)
    assert "Traceback" not in capsys.readouterr().err


def test_unreadable_files_and_folders_are_invalid_with_a_reason(run_copy):
    checkpoint = run_copy / "checkpoint-6"
    (checkpoint / COMPLETE_MARKER).unlink()
    (checkpoint / COMPLETE_MARKER).mkdir()  # a directory where the marker should be
    assert "not a regular file" in inspect_checkpoint(checkpoint).reason
    os.rmdir(checkpoint / COMPLETE_MARKER)
    os.mkfifo(checkpoint / COMPLETE_MARKER)  # a FIFO: reading it would block for ever
    assert "not a regular file" in inspect_checkpoint(checkpoint).reason
    (checkpoint / COMPLETE_MARKER).unlink()
    (checkpoint / "trainer_state.json").unlink()
    (checkpoint / "trainer_state.json").symlink_to(checkpoint / "trainer_state.json")  # a symlink loop
    assert not inspect_checkpoint(checkpoint).valid
    assert find_resume_checkpoint(run_copy) == str(run_copy / "checkpoint-4")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(["marker", "files", "checksums", "required", "metrics", "name", "state", "global_step",
                              "log_history", "epoch", "whole_marker", "whole_state"]),
       value=json_values)
def test_fuzzed_markers_and_states_never_raise(finished_run, field, value):
    """Any JSON value in any field of the marker or the state: inspect, list, latest and inspect never raise."""
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        (run / "checkpoint-6").mkdir(parents=True)
        for name in ("trainer_state.json", COMPLETE_MARKER, "model.safetensors", "config.json"):
            shutil.copy(finished_run / "checkpoint-6" / name, run / "checkpoint-6" / name)
        marker = json.loads((run / "checkpoint-6" / COMPLETE_MARKER).read_text())
        state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())
        if field == "whole_marker":
            marker = value
        elif field == "whole_state":
            state = value
        elif field in ("state", "global_step", "log_history", "epoch"):
            state[field] = value
        else:
            marker[field] = value
        (run / "checkpoint-6" / COMPLETE_MARKER).write_text(json.dumps(marker))
        (run / "checkpoint-6" / "trainer_state.json").write_text(json.dumps(state))
        info = inspect_checkpoint(run / "checkpoint-6", compute_size=True, verify=True)
        assert isinstance(info.valid, bool) and (info.valid or info.reason)
        list_checkpoints(run, include_strays=True)
        find_resume_checkpoint(run, warn=False)
        with open(os.devnull, "w") as sink:
            stdout, sys.stdout = sys.stdout, sink
            try:
                for argv in (["list", str(run)], ["list", "--json", str(run)], ["latest", "--verify", str(run)],
                             ["inspect", str(run / "checkpoint-6")]):
                    assert checkpoints_main(argv) in (0, 1)
            finally:
                sys.stdout = stdout


# --- saving again, starting afresh ----------------------------------------------------------------------------------


def test_a_resave_takes_the_marker_first_and_puts_it_back_when_no_save_came(run_copy):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hf_trainkit.callbacks import CheckpointManagerCallback

    args = TrainingArguments(output_dir=str(run_copy), report_to=[], use_cpu=True)
    state, control = TrainerState(global_step=6), TrainerControl()
    callback = CheckpointManagerCallback()
    callback.on_step_end(args, state, control)  # a save at step 6 may follow: the old marker goes first
    info = inspect_checkpoint(run_copy / "checkpoint-6")
    assert not info.valid and "being saved again" in info.reason
    assert find_resume_checkpoint(run_copy) == str(run_copy / "checkpoint-4")
    callback.on_step_begin(args, state, control)  # no save came: the marker is back
    assert inspect_checkpoint(run_copy / "checkpoint-6", verify=True).valid


def test_no_resume_in_a_finished_run_sets_it_aside_and_loses_nothing(run_copy):
    before = {p.relative_to(run_copy).as_posix(): p.read_bytes() for p in run_copy.glob("checkpoint-*/**/*")
              if p.is_file()}
    record = (run_copy / "training_complete.json").read_bytes()
    result = train(run_copy, "--no-resume", "--max-steps", 4, "--save-steps", 2, "--save-total-limit", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    (aside,) = run_copy.glob("superseded/*")
    after = {p.relative_to(aside).as_posix(): p.read_bytes() for p in aside.glob("checkpoint-*/**/*") if p.is_file()}
    assert after == before and (aside / "training_complete.json").read_bytes() == record
    assert "Moved 3 checkpoint(s)" in result.stderr
    # The new run's checkpoints are there and are the new run's (rotation did not delete them as "older").
    assert [i.name for i in list_checkpoints(run_copy)] == ["checkpoint-4"]
    assert inspect_checkpoint(run_copy / "checkpoint-4", verify=True).valid
    assert json.loads((run_copy / "training_complete.json").read_text())["max_steps"] == 4


def as_unprivileged_user(tmp_root: Path) -> tuple[list[str], dict]:
    """(command prefix, environment) that run a command as an ordinary user, for whom file modes count: `nobody`
    through setpriv when the tests run as root (root ignores modes), else the user running them. `tmp_root` is
    given to that user and holds its home and caches."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HOME": str(tmp_root / "home"), "XDG_CACHE_HOME": str(tmp_root / "cache"),
           "HF_HOME": str(tmp_root / "cache" / "hf"), "TMPDIR": str(tmp_root / "tmp")}
    for name in ("home", "cache", "tmp"):
        (tmp_root / name).mkdir(exist_ok=True)
    if os.geteuid() != 0:
        return [], env
    import pwd

    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot act as an ordinary user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no user 'nobody'")
    prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode:
        pytest.skip("setpriv cannot switch to nobody here")
    for path in [tmp_root, *tmp_root.rglob("*")]:
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)
    return prefix, env


def test_an_unreadable_newer_checkpoint_stops_the_run_at_start_in_one_line(finished_run):
    # As a real user: the newest checkpoint (step 6) cannot be read, so a resume starts from step 4 and step 6
    # will be saved again. The run must stop before training, naming the folder and the fix; the fix must work.
    tmp_root = Path(tempfile.mkdtemp(prefix="hf-trainkit-unreadable-", dir="/tmp"))
    try:
        run = tmp_root / "run"
        shutil.copytree(finished_run, run)
        prefix, env = as_unprivileged_user(tmp_root)
        blocked = run / "checkpoint-6"
        blocked.chmod(0)
        command = [*prefix, sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(run), "--seed", "3",
                   "--quiet", "--no-loss-curve", "--no-diagnostics", "--max-steps", "8", "--save-steps", "2"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("train_grpo.py: error:")]
        fix = f"chmod -R u+rwX {blocked}"
        assert len(errors) == 1 and fix in errors[0], result.stderr[-2000:]
        assert "Traceback" not in result.stderr and "PermissionError" not in result.stderr
        assert "PSR [Step" not in result.stdout  # stopped before training: no step trained and lost
        assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 6
        assert blocked.is_dir() and not (run / "checkpoint-8").exists()
        # The same check where the move itself is tried (the first step of any Trainer): the same line, no traceback.
        probe = subprocess.run([*prefix, sys.executable, "-c", "import sys; from hf_trainkit.checkpointing.set_aside "
                                "import set_aside_checkpoints as s\ntry: s(sys.argv[1], 4)\nexcept Exception as e: "
                                "print(type(e).__name__, e)", str(run)], capture_output=True, text=True, env=env,
                               cwd=ROOT, timeout=120)
        assert probe.stdout.startswith("SetAsideError") and fix in probe.stdout, probe.stdout + probe.stderr
        # The fix the line gives, as that user, then the same command: it resumes from step 6 and ends at 8.
        subprocess.run([*prefix, "sh", "-c", fix], check=True)
        again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"Resuming from {blocked}" in again.stdout
        assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 8
        assert inspect_checkpoint(run / "checkpoint-8", verify=True).valid
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


# --- signals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum,extra,saved", [
    (signal.SIGINT, [], True),
    (signal.SIGHUP, [], True),
    (signal.SIGTERM, ["--no-save-checkpoints"], False),
])
def test_ctrl_c_and_hangup_save_like_sigterm(tmp_path, signum, extra, saved):
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(out), "--seed", "3",
               "--no-loss-curve", "--no-diagnostics", "--max-steps", "200", *extra]
    process, lines = start_and_wait_for_step(command, 3, env)
    process.send_signal(signum)
    stdout = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=60) == 128 + signum
    name = signal.Signals(signum).name
    checkpoints = list_checkpoints(out)
    # What the last lines say was written, and not, is what is on disk: no final weights at the top after a signal.
    assert "final weights in the same folder" not in stdout
    assert not (out / "model.safetensors").exists() and not (out / "training_complete.json").exists()
    assert (out / "trainer_state.json").is_file()
    entries = len(json.loads((out / "trainer_state.json").read_text())["log_history"])
    assert f"{out} holds trainer_state.json ({entries} log entries)" in stdout
    assert "not written: the final weights and config at the top" in stdout
    if saved:
        assert f"Stopped by {name} after saving step" in stdout
        assert len(checkpoints) == 1 and checkpoints[0].valid and checkpoints[0].marker["reason"] == "preempt"
        assert f"the weights of step {checkpoints[0].step} are in {checkpoints[0].path}" in stdout
        assert (checkpoints[0].path / "model.safetensors").is_file()
    else:
        assert f"Stopped by {name} at step" in stdout and "no checkpoint was saved" in stdout
        assert "after saving" not in stdout and checkpoints == []
        assert "no checkpoint holds them either (--no-save-checkpoints)" in stdout


# --- full disks -----------------------------------------------------------------------------------------------------


@pytest.fixture()
def small_disk(tmp_path):
    """A real filesystem that fills up: a tmpfs of the size asked (needs root and mount rights; skipped without)."""
    mounts = []

    def make(size: str) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_disk_full_says_so_in_one_line_and_the_rerun_resumes(small_disk):
    disk = small_disk("1600k")  # room for one checkpoint of the toy model (about 1 MB), not two
    out = disk / "run"
    result = train(out, "--max-steps", 6, "--save-steps", 2)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("train_grpo.py: error:")]
    assert len(errors) == 1 and "no space left on device" in errors[0] and "run the same command again" in errors[0]
    assert "Traceback" not in result.stderr
    latest = find_resume_checkpoint(out)
    assert latest == str(out / "checkpoint-2") and latest in errors[0]
    assert not inspect_checkpoint(out / "checkpoint-4").valid  # the save that did not fit: recognisably cut short
    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
    again = train(out, "--max-steps", 6, "--save-steps", 2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from {latest}" in again.stdout
    assert [c[0] for c in curves(out)] == list(range(1, 7))


def test_a_full_mirror_makes_room_instead_of_staying_at_an_old_step(small_disk, tmp_path):
    from hf_trainkit.checkpointing.mirror import CheckpointMirror

    mirror = small_disk("1600k")  # one checkpoint fits, two do not
    result = train(tmp_path / "run", "--max-steps", 6, "--save-steps", 2, "--save-total-limit", 1,
                   "--checkpoint-mirror", mirror / "copy")
    assert result.returncode == 0, result.stderr[-3000:]
    assert CheckpointMirror(str(mirror / "copy")).complete_steps() == [6]
    assert inspect_checkpoint(mirror / "copy" / "checkpoint-6", verify=True).valid


SIGNAL_SEQUENCE = """
import os, signal, sys, time
from transformers import TrainerControl, TrainerState, TrainingArguments
from hf_trainkit.callbacks import LiveControlCallback

callback = LiveControlCallback(watch_requests=False)
callback.on_train_begin(TrainingArguments(output_dir=sys.argv[1], report_to=[], use_cpu=True), TrainerState(),
                        TrainerControl())
for name in sys.argv[2:]:
    os.kill(os.getpid(), getattr(signal, name))
    time.sleep(0.2)  # the handler runs: two signals sent at once would reach Python as one
    print("after", name, "requested", callback.requested, "signal", callback.stop_signal, flush=True)
"""


def test_a_second_ctrl_c_exits_at_once_and_a_launchers_sigterm_does_not(tmp_path):
    """Real signals to a process holding the callback's handlers: Ctrl-C asks for a save and a stop; the SIGTERM a
    launcher sends after a Ctrl-C does not cut that save short; a second Ctrl-C exits at once."""
    done = subprocess.run([sys.executable, "-c", SIGNAL_SEQUENCE, str(tmp_path), "SIGINT", "SIGTERM", "SIGINT"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "after SIGINT requested 2 signal SIGINT" in done.stdout
    assert "after SIGTERM requested 2 signal SIGINT" in done.stdout  # still saving, not gone
    assert done.stdout.rstrip().endswith("Second SIGINT: exiting now, without saving.")
