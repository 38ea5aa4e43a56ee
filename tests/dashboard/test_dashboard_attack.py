"""The attack of issue 30 on a real training with `--dashboard 0`, time-boxed (about a minute): the printed URL
connects at once, the log holds no token, 200 idle and 200 dribbling connections and a 500-request burst from a
local user without the token leave the token holder's poll answered within 2 s (and the training stepping), 20
concurrent saves are each queued or refused with why, and after a Stop nothing is queued: a save or a second stop
is refused at once, and every accepted request ends done. It prints the figures (poll times and step rate per
phase)."""

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hf_trainkit.checkpointing import list_checkpoints

from .attack import Poller


ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "scripts" / "train_grpo.py"
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}

pytestmark = pytest.mark.slow


def _request(url, token=None, method="GET", body=None, timeout=10):
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _step(out: Path) -> int:
    try:
        return json.loads((out / "control" / "status.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _wait(what, condition, timeout, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")


def test_a_real_training_with_its_dashboard_under_attack(tmp_path):
    out, log = tmp_path / "run", tmp_path / "training.log"
    with open(log, "w") as handle:
        training = subprocess.Popen([sys.executable, str(TRAIN), "--mode", "psr", "--quiet", "--no-loss-curve",
                                     "--no-diagnostics", "--output-dir", str(out), "--max-steps", "5000",
                                     "--save-steps", "100000", "--dashboard", "0"],
                                    stdout=handle, stderr=subprocess.STDOUT, text=True, env=ENV,
                                    start_new_session=True)
    figures = {}
    try:
        line = _wait("the Dashboard: line", lambda: next(
            (t for t in log.read_text().splitlines() if t.startswith("Dashboard: ")), None), 120, log)
        base, token = line.split(" ", 1)[1].split("/?token=")
        port = int(base.rsplit(":", 1)[1])
        # Point 5: the printed URL connects at once (one try; the answer waits for the process to start).
        started = time.monotonic()
        assert _request(f"{base}/api/runs", token, timeout=60)[0] == 200
        figures["first_answer_s"] = round(time.monotonic() - started, 2)
        # Point 1: the log is the user's only and has no token; the query form is refused for the API and POSTs.
        dashboard_log = out / "logs" / "dashboard.log"
        assert stat.S_IMODE(dashboard_log.stat().st_mode) == 0o600 and token not in dashboard_log.read_text()
        assert stat.S_IMODE((out / "dashboard_token").stat().st_mode) == 0o600
        assert not any(token in path.read_text(errors="replace") for path in (out / "logs").rglob("*")
                       if path.is_file())  # train.log, log_history.jsonl, dashboard.log
        assert _request(f"{base}/api/data?token={token}")[0] == 401
        assert _request(f"{base}/api/stop?token={token}", method="POST", body=b"{}")[0] == 401
        _wait("the training to run", lambda: _step(out) >= 3, 120, log)

        # Point 2: the token holder's poll beside each attack (the attacker is a process of its own).
        for phase, argv in (("quiet", None), ("idle", ["--count", "200", "--seconds", "6"]),
                            ("dribble", ["--count", "200", "--seconds", "6", "--interval", "0.5"]),
                            ("burst", ["--count", "500", "--threads", "20"])):
            step, clock = _step(out), time.monotonic()
            with Poller(port, token, interval=0.1 if phase == "burst" else 0.25) as poller:
                if argv is None:
                    time.sleep(4)
                    attack = None
                else:
                    attack = json.loads(subprocess.run(
                        [sys.executable, "-m", "tests.dashboard.attack", phase, str(port), *argv], cwd=ROOT,
                        capture_output=True, text=True, timeout=60).stdout)
            summary = poller.summary()
            figures[phase] = {"poll": summary, "attack": attack,
                              "steps_per_s": round((_step(out) - step) / (time.monotonic() - clock), 2)}
            assert training.poll() is None, log.read_text()[-3000:]
            assert summary["polls"] >= 3 and summary["ok"] == summary["polls"], figures[phase]
            assert summary["max_s"] < 2.0, figures[phase]
            if phase == "burst":
                assert attack["statuses"] == {"401": 500}, attack  # all answered, none refused with 503

        # Point 3: 20 concurrent saves, each queued or refused with why; all queued ones are carried out.
        answers, barrier = [], threading.Barrier(20)

        def save(index):
            barrier.wait()
            answers.append(_request(f"{base}/api/save?run=0", token, "POST",
                                    json.dumps({"name": f"s{index % 4}"}).encode()))

        threads = [threading.Thread(target=save, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = [code for code, _ in answers]
        assert set(codes) <= {202, 409} and 1 <= codes.count(202) <= 4, answers  # one per name at most
        # Refused because the name is queued, being written (taken by the training, no marker yet) or used.
        assert all(any(why in body["error"] for why in ("already queued", "is being written", "already used"))
                   for code, body in answers if code == 409), answers
        accepted = [body["id"] for code, body in answers if code == 202]

        def outcome(request_id):
            code, body = _request(f"{base}/api/requests?run=0&id={request_id}", token)
            return body if code == 200 and body["status"] in ("done", "rejected", "failed") else None

        for request_id in accepted:
            assert _wait("the save", lambda: outcome(request_id), 60, log)["status"] == "done"

        # Stop, then a save and a second stop: refused at once, not queued forever.
        code, stop = _request(f"{base}/api/stop?run=0", token, "POST", b"{}")
        assert code == 202
        for action, body in (("save", b'{"name": "after-stop"}'), ("stop", b"{}")):
            code, answer = _request(f"{base}/api/{action}?run=0", token, "POST", body)
            assert code == 409 and "stop" in answer["error"], answer
        assert training.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert _wait("the stop", lambda: outcome(stop["id"]), 30, log)["status"] == "done"
        assert not list((out / "control" / "requests").glob("*.json"))
        names = {c.marker.get("name") for c in list_checkpoints(out) if c.valid}
        assert {body["name"] for code, body in answers if code == 202} <= names
        # After the end: refused at once with why, and the console said the page stays a while.
        code, answer = _request(f"{base}/api/save?run=0", token, "POST", b"{}")
        assert code == 409 and "stopped" in answer["error"], answer
        assert "Dashboard: still serving http://127.0.0.1:" in log.read_text()
        print(json.dumps(figures))
    finally:
        try:
            os.killpg(training.pid, signal.SIGKILL)  # the training and its dashboard
        except (ProcessLookupError, PermissionError):
            pass
        training.wait()
