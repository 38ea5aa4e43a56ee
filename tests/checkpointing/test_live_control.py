"""Live control against a real training subprocess: `hf-trainkit control` (request files) and the HTTP endpoint."""

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hf_trainkit.checkpointing import list_checkpoints


ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "scripts" / "train_grpo.py"
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}


def control(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "control", *map(str, argv)],
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def wait_for_status(out: Path, process, timeout=120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "training ended before it could be controlled"
        try:
            status = json.loads((out / "control" / "status.json").read_text())
            if status["state"] == "running" and status["step"] >= 2:
                return status
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError("no live status")


def http(url, method="GET", token=None, body=None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture()
def training(tmp_path):
    """A long training (stopped by the test) with the HTTP endpoint and rotation to a single checkpoint."""
    out = tmp_path / "live"
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(out), "--max-steps", "5000",
               "--save-steps", "7", "--save-total-limit", "1", "--control-port", "0", "--quiet", "--no-loss-curve",
               "--no-diagnostics"]
    with open(tmp_path / "training.log", "w") as log:  # a file, not a pipe: a full pipe would block the training
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=ENV)
        yield out, process
        if process.poll() is None:
            process.kill()
        process.wait()


def test_file_and_http_control_of_a_running_training(training):
    out, process = training
    status = wait_for_status(out, process)

    # --- request files: `hf-trainkit control save --name` --------------------------------------------------------
    before = json.loads((out / "control" / "status.json").read_text())["step"]
    saved = control("save", out, "--name", "first-look")
    assert saved.returncode == 0, saved.stderr
    named = [c for c in list_checkpoints(out) if c.marker.get("name") == "first-look"]
    assert len(named) == 1 and named[0].valid and named[0].marker["pinned"] and named[0].marker["reason"] == "manual"
    assert named[0].step > before and f"checkpoint-{named[0].step}" in saved.stdout
    assert control("save", out, "--name", "first-look").returncode == 2  # names are unique
    bad = control("save", out, "--name", "../../etc")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1

    # --- HTTP -----------------------------------------------------------------------------------------------------
    url = status["endpoint"]["url"]
    assert url.startswith("http://127.0.0.1:")
    token_file = Path(status["endpoint"]["token_file"])
    assert "token" in token_file.name and token_file.parent == out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text()
    assert http(f"{url}/status")[0] == 401
    assert http(f"{url}/status", token="wrong")[0] == 401
    assert http(f"{url}/save_checkpoint", "POST", token="wrong", body={"name": "x"})[0] == 401
    for body in ({"name": "a/b"}, {"name": ".."}, {"name": "x" * 200}, {"name": 5}, b"{not json", b"[1, 2]"):
        code, answer = http(f"{url}/save_checkpoint", "POST", token, body)
        assert code == 400 and "error" in answer, (body, code, answer)
    assert http(f"{url}/save_checkpoint", "POST", token, {"name": "first-look"})[0] == 409
    assert http(f"{url}/nowhere", token=token)[0] == 404
    assert http(f"{url}/save_checkpoint", token=token)[0] == 405
    code, live = http(f"{url}/status", token=token)
    assert code == 200 and live["state"] == "running" and live["step"] >= named[0].step

    code, queued = http(f"{url}/save_checkpoint", "POST", token, {"name": "over-http"})
    assert code == 202 and queued["status"] == "queued"
    deadline = time.time() + 60
    while time.time() < deadline:
        code, answer = http(f"{url}/requests/{queued['id']}", token=token)
        assert code == 200, answer  # queued, accepted, saving or done: never lost in between
        if answer["status"] == "done":
            break
        time.sleep(0.1)
    assert answer["status"] == "done" and answer["name"] == "over-http"
    code, listing = http(f"{url}/checkpoints", token=token)
    names = {c["name"]: c for c in listing["checkpoints"] if c["name"]}
    assert set(names) == {"first-look", "over-http"} and all(c["pinned"] and c["valid"] for c in names.values())

    # Rotation keeps one unnamed checkpoint (--save-total-limit 1) but never a named one.
    time.sleep(1.5)  # several interval saves (every 7 steps) go by
    assert {"first-look", "over-http"} <= {c.marker.get("name") for c in list_checkpoints(out)}

    # --- stop: save, end training cleanly, the run counts as finished ------------------------------------------------
    code, _ = http(f"{url}/stop", "POST", token, {})
    assert code == 202
    assert process.wait(timeout=60) == 0, (out.parent / "training.log").read_text()[-3000:]
    last = list_checkpoints(out)[-1]
    assert last.valid and last.marker["reason"] == "manual" and last.marker["stopped_by"] == "control request"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == last.step < 5000
    assert json.loads((out / "control" / "status.json").read_text())["state"] == "stopped"
    assert (out / "training_complete.json").exists()
    after = control("save", out)
    assert after.returncode == 1 and "stopped" in after.stderr

    # `checkpoints list` shows names, reasons and metrics.
    listing = subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "checkpoints", "list", str(out)],
                             capture_output=True, text=True, env=ENV)
    assert "first-look" in listing.stdout and "over-http" in listing.stdout and "manual" in listing.stdout

    # A named checkpoint is a resume point by name.
    resumed = subprocess.run([sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(out), "--quiet",
                              "--no-loss-curve", "--resume-from-checkpoint", "first-look",
                              "--max-steps", str(named[0].step + 2), "--save-steps", "1000"],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {out / f'checkpoint-{named[0].step}'}" in resumed.stdout


def test_control_commands_without_a_training(tmp_path):
    assert control("save", tmp_path / "missing").returncode == 2
    empty = control("save", tmp_path)
    assert empty.returncode == 1 and "no training with live control" in empty.stderr
    assert control("status", tmp_path).returncode == 1


def test_control_of_a_killed_training_says_it_is_gone(tmp_path):
    """A run killed with -9 leaves its status at 'running': the command sees the process is gone."""
    out = tmp_path / "killed"
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(out), "--max-steps", "5000",
               "--save-steps", "100000", "--quiet", "--no-loss-curve"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for_status(out, process)
    finally:
        process.kill()
        process.wait()
    result = control("save", out, "--name", "late")
    assert result.returncode == 1 and "no longer running" in result.stderr
    assert not list((out / "control" / "requests").glob("*.json"))  # nothing left queued for a later run
    status = control("status", out)  # the status file still says "running": the command checks the process
    assert status.returncode == 1 and "gone (its process no longer exists" in status.stdout
    assert "running at step" not in status.stdout
    assert "last metrics: reward=" in status.stdout and "psr/avg_reward=" in status.stdout
    assert json.loads(control("status", out, "--json").stdout)["running"] is False
