"""`scripts/train_grpo.py --dashboard PORT` for real: the training prints a ready URL, the dashboard beside it serves
the run's growing series, and killing the dashboard (kill -9) leaves the training untouched: it goes on and finishes
with exit 0 and every step. A port out of range is a one-line usage error (exit 2)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hf_trainkit.constants import TRAINING_COMPLETE
from hf_trainkit.monitor.load import LIVE_LOG_FILE


ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "scripts" / "train_grpo.py"
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
STEPS = 60  # long enough to watch it and kill its dashboard mid-run, short enough for a ~40 s test
COMMON = ["--mode", "psr", "--quiet", "--no-loss-curve", "--no-diagnostics"]

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the dashboard process")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the living processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                if int(handle.read().rsplit(")", 1)[1].split()[1]) != pid:
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                found.append((int(entry), handle.read().replace(b"\0", b" ").decode(errors="replace")))
        except (OSError, ValueError, IndexError):
            continue
    return [(p, c) for p, c in found if _alive(p)]


def _wait_for(what, condition, timeout, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{log.read_text()[-3000:]}" if log else ""))


def _data(base: str, token: str, cursor: str = ""):
    url = f"{base}/api/data" + (f"?c={cursor}" if cursor else "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["runs"][0]


def _logged_steps(out: Path) -> list[int]:
    path = out / LIVE_LOG_FILE
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line being written
            continue
        if "loss" in entry and "train_runtime" not in entry:
            steps.append(entry["step"])
    return steps


def test_dashboard_flag_serves_the_training_and_killing_it_leaves_the_training_untouched(tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "training.log"
    # The bad port is checked on its own, beside the real training (it only pays the imports).
    bad = subprocess.Popen([sys.executable, str(TRAIN), *COMMON, "--output-dir", str(tmp_path / "bad"),
                            "--max-steps", "5", "--dashboard", "70000"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
                           start_new_session=True)
    with open(log, "w") as handle:  # a file, not a pipe: a full pipe would block the training
        training = subprocess.Popen([sys.executable, str(TRAIN), *COMMON, "--output-dir", str(out),
                                     "--max-steps", str(STEPS), "--per-device-train-batch-size", "8",
                                     "--num-generations", "4", "--dashboard", "0"],
                                    stdout=handle, stderr=subprocess.STDOUT, text=True, env=ENV,
                                    start_new_session=True)  # its own group: the cleanup reaches the dashboard too
    dashboard_pid = None
    try:
        _, error = bad.communicate(timeout=120)
        assert bad.returncode == 2, error
        assert error.strip().splitlines() == [
            "train_grpo.py: error: --dashboard 70000: use a port 0-65535 (0 picks a free one)."], error
        assert not (tmp_path / "bad" / "logs" / "dashboard.log").exists()

        line = _wait_for("the Dashboard: line", lambda: next(
            (text for text in log.read_text().splitlines() if text.startswith("Dashboard: ")), None), 90, log)
        url = line.split(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url
        base, token = url.split("/?token=")

        def served():
            try:
                run = _data(base, token)
            except OSError:  # still starting
                return None
            return run if len(run["series"].get("reward", {}).get("x", [])) >= 3 else None

        first = _wait_for("the dashboard to serve 3 logged steps", served, 90, log)
        assert first["reset"] and first["state"]["state"] == "running"
        assert first["series"]["reward"]["x"] == sorted(first["series"]["reward"]["x"])
        cursor = f"{first['generation']}:{first['cursor']}"
        update = _wait_for("new steps", lambda: (lambda r: r if r["series"].get("reward") else None)(
            _data(base, token, cursor)), 30, log)
        assert not update["reset"] and update["cursor"] > first["cursor"]
        assert min(update["series"]["reward"]["x"]) > max(first["series"]["reward"]["x"])
        # Without the token: refused.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/data", timeout=5)
        assert refused.value.code == 401

        dashboards = [p for p, command in _children(training.pid) if "hf_trainkit.dashboard" in command]
        assert len(dashboards) == 1, _children(training.pid)
        dashboard_pid = dashboards[0]
        os.kill(dashboard_pid, signal.SIGKILL)
        _wait_for("the dashboard to die", lambda: not _alive(dashboard_pid), 10)
        with pytest.raises(OSError):
            _data(base, token)
        at_kill = _logged_steps(out)
        assert training.poll() is None, log.read_text()[-3000:]
        assert at_kill and at_kill[-1] < STEPS  # killed mid-run
        _wait_for("steps logged after the kill", lambda: len(_logged_steps(out)) > len(at_kill), 30, log)
        assert training.poll() is None

        assert training.wait(timeout=300) == 0, log.read_text()[-3000:]  # 2+ min on a loaded machine
        assert _logged_steps(out) == list(range(1, STEPS + 1))
        complete = json.loads((out / TRAINING_COMPLETE).read_text())
        assert complete["global_step"] == complete["max_steps"] == STEPS
    finally:
        for process in (training, bad):
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the training, its dashboard (if still there), any child
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        if dashboard_pid is not None and _alive(dashboard_pid):
            os.kill(dashboard_pid, signal.SIGKILL)
