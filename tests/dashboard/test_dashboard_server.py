"""The dashboard server over real HTTP on 127.0.0.1: token, Host/Origin, POST-only actions, limits, JSON errors."""

import http.client
import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from hf_trainkit.control import write_status
from hf_trainkit.dashboard.server import DashboardServer
from hf_trainkit.monitor.load import LIVE_LOG_FILE


def _write_log(run, steps, start=1):
    path = run / LIVE_LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        for s in range(start, start + steps):
            handle.write(json.dumps({"_time": 100.0 + s, "loss": 0.0, "reward": s / 100, "step": s}) + "\n")


def call(server, method, path, token=None, body=None, headers=None):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    all_headers = {"Host": f"{host}:{port}"}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    all_headers.update(headers or {})
    connection.request(method, path, body=body, headers=all_headers)
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    kind = response.getheader("Content-Type", "")
    return response.status, (json.loads(raw) if kind.startswith("application/json") else raw), response


def test_token_is_required_and_stored_user_only(served):
    server, run = served
    assert stat.S_IMODE((run / "dashboard_token").stat().st_mode) == 0o600
    assert (run / "dashboard_token").read_text() == server.token and server.url.endswith(f"?token={server.token}")
    for token in (None, "wrong", server.token + "x"):
        status, body, _ = call(server, "GET", "/api/runs", token=token)
        assert status == 401 and "token" in body["error"]
    status, body, _ = call(server, "GET", "/api/runs", token=server.token)
    assert status == 200 and body["runs"][0]["label"] == "run"
    # The query form only where a link needs it (the report); never for the API or a POST (issue 30).
    for method, path in (("GET", "/api/runs"), ("GET", "/api/data"), ("POST", "/api/stop"), ("POST", "/api/save")):
        status, body, _ = call(server, method, f"{path}?token={server.token}", body=b"{}" if method == "POST" else None)
        assert status == 401 and "Authorization header" in body["error"], (path, body)
    status, body, _ = call(server, "GET", f"/api/report?run=0&token={server.token}")
    assert status == 404 and "no report.html yet" in body["error"]  # let in: it only has no report to show yet
    (run / "report.html").write_text("<html>the report</html>")
    assert call(server, "GET", f"/api/report?run=0&token={server.token}")[1] == b"<html>the report</html>"
    assert call(server, "GET", "/api/report?run=0&token=wrong")[0] == 401
    # The page itself holds no data: it loads without a token, with a strict CSP and nosniff.
    status, page, response = call(server, "GET", "/")
    assert status == 200 and b"dashboard.js" in page and b"http" not in page.split(b"<body>")[1].replace(b"https", b"")
    assert "script-src 'self'" in response.getheader("Content-Security-Policy")
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert call(server, "GET", "/static/uPlot.iife.min.js")[0] == 200
    assert call(server, "GET", "/static/../server.py")[0] == 404


def test_host_and_origin_are_checked(served):
    server, _ = served
    status, body, _ = call(server, "GET", "/api/runs", token=server.token, headers={"Host": "evil.example:80"})
    assert status == 403 and "Host" in body["error"]  # DNS rebinding
    status, body, _ = call(server, "GET", "/", headers={"Host": "attacker.test"})
    assert status == 403
    status, body, _ = call(server, "POST", "/api/stop", token=server.token, body=b"{}",
                           headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in body["error"]
    port = server.server_address[1]
    assert call(server, "GET", "/api/runs", token=server.token, headers={"Host": f"localhost:{port}",
                                                                         "Origin": f"http://localhost:{port}"})[0] == 200
    # Through `ssh -L 9000:127.0.0.1:PORT`: another port on a loopback name, the page's own origin.
    assert call(server, "GET", "/api/runs", token=server.token, headers={"Host": "localhost:9000",
                                                                         "Origin": "http://localhost:9000"})[0] == 200
    status, body, _ = call(server, "POST", "/api/stop", token=server.token, body=b"{}",
                           headers={"Host": "localhost:9000", "Origin": "http://localhost:3000"})
    assert status == 403  # another local site


def test_actions_are_post_only_and_bad_requests_get_json_errors(served):
    server, run = served
    for path in ("/api/save", "/api/stop"):
        status, body, response = call(server, "GET", path, token=server.token)
        assert status == 405 and "not allowed" in body["error"] and response.getheader("Allow") == "POST"
    assert call(server, "DELETE", "/api/runs", token=server.token)[0] == 405
    assert call(server, "BREW", "/nowhere", token=server.token)[0] == 404
    status, body, _ = call(server, "POST", "/api/save", token=server.token, body=b"x" * (65 * 1024))
    assert status == 413 and "body" in body["error"]
    status, body, _ = call(server, "POST", "/api/save", token=server.token, body=b"[" * 100 + b"]" * 100)
    assert status == 400 and "error" in body
    status, body, _ = call(server, "POST", "/api/save", token=server.token, body=b'{"name": "../../x"}')
    assert status == 409 and "no live control" in body["error"]  # not running: nothing is queued
    assert call(server, "GET", "/api/details?run=7", token=server.token)[0] == 404
    status, body, _ = call(server, "GET", "/api/data?" + "&".join(f"a{i}=1" for i in range(50)), token=server.token)
    assert status == 400 and "query" in body["error"]
    assert call(server, "GET", "/api/window?run=0&from=x&to=1", token=server.token)[0] == 400
    # A running training (its live status says so, its pid is ours): a bad name is refused, a good one queued.
    import os
    import socket as sockets

    write_status(run, {"state": "running", "step": 30, "max_steps": 100, "pid": os.getpid(),
                       "host": sockets.gethostname()})
    status, body, _ = call(server, "POST", "/api/save", token=server.token, body=b'{"name": "../../x"}')
    assert status == 400 and "name" in body["error"]
    status, body, _ = call(server, "POST", "/api/save", token=server.token, body=b'{"name": "good-one"}')
    assert status == 202 and body["status"] == "queued"
    assert list((run / "control" / "requests").glob(f"*-{body['id']}.json"))  # the live-control request file
    status, body, _ = call(server, "GET", f"/api/requests?run=0&id={body['id']}", token=server.token)
    assert status == 200 and body["status"] == "queued"
    read_only = DashboardServer([(str(run), "run")], port=0, read_only=True, token_file=run / "ro_token").start()
    try:
        status, body, _ = call(read_only, "POST", "/api/stop", token=read_only.token, body=b"")
        assert status == 409 and "read-only" in body["error"]
    finally:
        read_only.stop()


def test_a_raw_garbage_request_line_gets_json(served):
    server, _ = served
    with socket.create_connection(server.server_address[:2], timeout=10) as raw:
        raw.sendall(b"\x00\xff GARBAGE\r\n\r\n")
        answer = raw.recv(4096)
    assert b"application/json" in answer and b"Traceback" not in answer


def test_data_sends_only_what_is_new(served):
    server, run = served
    status, body, _ = call(server, "GET", "/api/data?points=1000", token=server.token)
    first = body["runs"][0]
    assert first["reset"] and first["cursor"] == 30 and len(first["series"]["reward"]["y"]) == 30
    assert first["line"]["text"].startswith("Step 30") and first["state"]["can_act"] is False
    _write_log(run, 2, start=31)
    cursor = f"{first['generation']}:{first['cursor']}"
    status, body, _ = call(server, "GET", f"/api/data?c={cursor}", token=server.token)
    update = body["runs"][0]
    assert not update["reset"] and update["series"]["reward"]["x"] == [31, 32] and update["cursor"] == 32
    # The log replaced (set aside on a resume): the client starts over.
    (run / LIVE_LOG_FILE).rename(run / "old.jsonl")
    _write_log(run, 5)
    status, body, _ = call(server, "GET", f"/api/data?c={update['generation']}:{update['cursor']}",
                           token=server.token)
    assert body["runs"][0]["reset"] and body["runs"][0]["cursor"] == 5


def test_a_dead_training_is_shown_as_gone_and_several_runs_are_served(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        _write_log(run, 12)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_status(runs[0], {"state": "running", "step": 12, "max_steps": 50, "pid": dead.pid,
                           "host": socket.gethostname()})
    (runs[1] / "training_complete.json").write_text("{}")
    server = DashboardServer([(str(runs[0]), "A"), (str(runs[1]), "B")], port=0).start()
    try:
        status, body, _ = call(server, "GET", "/api/data?c=,", token=server.token)
        assert [r["label"] for r in body["runs"]] == ["A", "B"]
        first, second = body["runs"]
        assert first["state"]["state"] == "gone" and "no longer exists" in first["state"]["why_not"]
        assert second["state"]["state"] == "finished" and not second["state"]["can_act"]
        assert first["line"]["text"].startswith("Step 12/50") and second["series"]["reward"]["x"][-1] == 12
        assert call(server, "POST", "/api/stop?run=0", token=server.token, body=b"")[0] == 409
    finally:
        server.stop()


def test_background_dashboard_returns_a_ready_url_at_once(tmp_path):
    import time
    import urllib.request

    from hf_trainkit.dashboard import background, start_dashboard_in_background

    run = tmp_path / "run"
    _write_log(run, 3)
    started = time.monotonic()
    url = start_dashboard_in_background(run, 0)
    assert time.monotonic() - started < 2.0 and url.startswith("http://127.0.0.1:") and "?token=" in url
    try:
        base, token = url.split("/?token=")
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(f"{base}/api/runs", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert json.loads(response.read())["runs"][0]["label"] == "run"
                break
            except OSError:
                assert time.monotonic() < deadline, (run / "logs" / "dashboard.log").read_text()
                time.sleep(0.3)
        assert stat.S_IMODE((run / "dashboard_token").stat().st_mode) == 0o600
    finally:
        for process in background._BACKGROUND:
            process.terminate()
            process.wait(timeout=30)


def test_a_run_without_live_log_is_read_from_its_trainer_state(tmp_path):
    run = tmp_path / "old-run"
    (run / "checkpoint-2").mkdir(parents=True)
    history = [{"loss": 1.0 / s, "step": s, "epoch": s / 10} for s in (1, 2)]
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": history}))
    server = DashboardServer([(str(run), "old")], port=0).start()
    try:
        status, body, _ = call(server, "GET", "/api/data", token=server.token)
        first = body["runs"][0]
        assert status == 200 and first["series"]["loss"]["x"] == [1, 2] and first["line"]["metric"] == "loss"
        cursor = f"{first['generation']}:{first['cursor']}"
        assert call(server, "GET", f"/api/data?c={cursor}", token=server.token)[1]["runs"][0]["series"] == {}
        history.append({"loss": 0.2, "step": 3, "epoch": 0.3})
        (run / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": history}))
        update = call(server, "GET", f"/api/data?c={cursor}", token=server.token)[1]["runs"][0]
        assert update["reset"] and update["series"]["loss"]["x"] == [1, 2, 3]
    finally:
        server.stop()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to see the dashboard process")
def test_background_dashboard_ends_after_the_training_process(tmp_path):
    import time

    run = tmp_path / "run"
    _write_log(run, 3)
    code = ("import sys; from hf_trainkit.dashboard import background, start_dashboard_in_background as start; "
            "print(start(sys.argv[1], 0, linger=1.0)); print(background._BACKGROUND[0].pid)")
    parent = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120)
    url, pid = parent.stdout.split()[:2]
    pid = int(pid)
    # On exit the training's console says the dashboard goes on for a while (issue 30).
    assert f"Dashboard: still serving {url.split('?')[0]} for " in parent.stdout and f"kill {pid}" in parent.stdout
    deadline = time.monotonic() + 60
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    log = (run / "logs" / "dashboard.log").read_text()
    assert not _running(pid), log
    assert url.split("?")[0] in log and "has ended; serving the final state for review" in log
    token = url.split("?token=")[1]
    assert token not in log and stat.S_IMODE((run / "logs" / "dashboard.log").stat().st_mode) == 0o600
