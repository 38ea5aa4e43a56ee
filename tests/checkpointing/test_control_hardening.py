"""Live control as an adversary tries it: hostile request files and HTTP clients never wedge, kill or escape a
training; request files are fuzzed."""

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_trainkit.control import (RequestQueue, prepare_control_dir, read_status, submit_request,
                                              write_token)

from .test_live_control import control, http, training, wait_for_status  # noqa: F401  (fixture)


def requests_dir(run: Path) -> Path:
    return run / "control" / "requests"


def plant_hostile_requests(run: Path, outside: Path) -> int:
    """Request files no client of ours writes; returns how many."""
    folder = requests_dir(run)
    hostile = {
        "1-escape.json": {"id": f"../../../{outside.name}/escaped", "action": "save"},
        "2-absolute.json": {"id": str(outside / "absolute"), "action": "save"},
        "3-slash.json": {"id": "a/b", "action": "save"},
        "4-not-a-string.json": {"id": ["x"], "action": "save"},
        "5-list.json": [1, 2, 3],
    }
    for name, content in hostile.items():
        (folder / name).write_text(json.dumps(content))
    (folder / "6-deep.json").write_text("[" * 200_000 + "]" * 200_000)
    (folder / "7-nested.json").write_text('{"id": "abc", "action": "save", "x": ' + "[" * 40 + "]" * 40 + "}")
    (folder / "8-huge.json").write_bytes(b'{"id": "big", "action": "save", "pad": "' + b"x" * (1 << 20) + b'"}')
    (folder / "9-binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (folder / "a-directory.json").mkdir()
    os.mkfifo(folder / "b-fifo.json")
    (folder / "c-symlink.json").symlink_to(outside / "target.json")
    return 12


def test_hostile_request_files_are_quarantined_and_the_good_one_is_applied(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    (outside / "target.json").write_text(json.dumps({"id": "abc", "action": "stop"}))
    prepare_control_dir(run)
    count = plant_hostile_requests(run, outside)
    good = submit_request(run, "save", "good-one")
    warnings, taken = [], []
    queue = RequestQueue(run, warnings.append)

    def drain():
        while (request := queue.take()) is not None:
            taken.append(request)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "reading the requests blocked (a FIFO?)"
    assert [(r["id"], r["name"]) for r in taken] == [(good, "good-one")]
    assert len(warnings) == count and all(w.startswith("Live control: ignored request") for w in warnings)
    assert sorted(p.name for p in requests_dir(run).iterdir()) == []
    assert len(list((run / "control" / "rejected").iterdir())) == count
    # Nothing was written outside the run dir, and the symlink's target was never read as a request or changed.
    assert sorted(p.name for p in outside.iterdir()) == ["target.json"]
    assert not (tmp_path / "escaped.json").exists() and not list(tmp_path.glob("**/escaped*"))
    assert sorted(p.name for p in (run / "control" / "responses").iterdir()) == [f"{good}.json"]


request_bodies = st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"id": st.text(max_size=70), "action": st.sampled_from(["save", "stop", "x", None]),
                           "name": st.one_of(st.none(), st.text(max_size=70))}).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies=st.lists(request_bodies, min_size=1, max_size=4))
def test_fuzzed_request_files_never_raise_or_escape(tmp_path_factory, bodies):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    prepare_control_dir(run)
    for index, body in enumerate(bodies):
        (requests_dir(run) / f"{index:04d}-fuzz.json").write_bytes(body)
    queue = RequestQueue(run, warn=lambda message: None)
    taken = []
    for _ in range(len(bodies) + 1):
        request = queue.take()
        if request is not None:
            assert request["action"] in ("save", "stop")
            taken.append(request)
    assert list(requests_dir(run).iterdir()) == []  # every file applied, answered or quarantined
    written = {p.relative_to(run).parts[:2] for p in run.rglob("*") if p.is_file()}
    # A stop taken is recorded (stopping.json), a named save taken too (saving.json), both under the queue's lock.
    allowed = {("control", "responses"), ("control", "rejected")}
    if any(r["action"] == "stop" for r in taken):
        allowed |= {("control", "stopping.json"), ("control", ".lock")}
    if any(r["action"] == "save" and r.get("name") for r in taken):
        allowed |= {("control", "saving.json"), ("control", ".lock")}
    assert written <= allowed


def test_token_file_never_follows_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    run = tmp_path / "run"
    run.mkdir()
    (run / "control_token").symlink_to(victim)
    token = write_token(run)
    assert victim.read_text() == "do not touch"
    info = os.lstat(run / "control_token")
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert (run / "control_token").read_text() == token


def raw_http(port: int, payload: bytes, timeout: float = 15.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_hostile_http_clients_and_files_do_not_disturb_a_training(training, tmp_path):
    out, process = training
    status = wait_for_status(out, process)
    url = status["endpoint"]["url"]
    port = int(url.rsplit(":", 1)[1])
    token = (out / "control_token").read_text()
    auth = f"Authorization: Bearer {token}\r\n".encode()

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.json").write_text("{}")
    planted = plant_hostile_requests(out, outside)

    # A client that resets its connection mid-request.
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /save_checkpoint HTTP/1.1\r\nContent-Length: 50\r\n" + auth + b"\r\n{\"na")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    # Content-Length that is negative, not a number, too large; a body nested too deeply.
    for length, expected in ((b"-1", 400), (b"abc", 400), (b"1000000000", 413)):
        code, body = status_and_json(raw_http(port, b"POST /save_checkpoint HTTP/1.1\r\nHost: x\r\n" + auth +
                                              b"Content-Length: " + length + b"\r\n\r\n{}"))
        assert code == expected and "error" in body
    deep = b"[" * 50_000 + b"]" * 50_000
    code, body = status_and_json(raw_http(port, b"POST /save_checkpoint HTTP/1.1\r\n" + auth + b"Content-Length: " +
                                          str(len(deep)).encode() + b"\r\n\r\n" + deep))
    assert code == 413 and "error" in body
    nested = b'{"name": ' + b"[" * 30 + b"]" * 30 + b"}"
    code, body = status_and_json(raw_http(port, b"POST /save_checkpoint HTTP/1.1\r\n" + auth + b"Content-Length: " +
                                          str(len(nested)).encode() + b"\r\n\r\n" + nested))
    assert code == 400 and "nested" in body["error"]
    # Unknown methods: JSON 401 without the token, JSON 405 with it; never http.server's HTML.
    for method in (b"PATCH", b"BREW", b"OPTIONS"):
        code, body = status_and_json(raw_http(port, method + b" /stop HTTP/1.1\r\n\r\n"))
        assert code == 401 and "error" in body
        code, body = status_and_json(raw_http(port, method + b" /stop HTTP/1.1\r\n" + auth + b"\r\n"))
        assert code == 405 and "not allowed" in body["error"]
    code, body = status_and_json(raw_http(port, b"GARBAGE\r\n\r\n"))
    assert code == 400 and "error" in body
    # Idle connections (the old cap of 8, and more) do not lock it: the token holder is answered at once.
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    time.sleep(0.5)
    started = time.monotonic()
    code, body = status_and_json(raw_http(port, b"GET /status HTTP/1.1\r\n" + auth + b"Connection: close\r\n\r\n"))
    assert code == 200 and body["state"] == "running" and time.monotonic() - started < 2.0
    for sock in idle:
        sock.close()
    time.sleep(0.5)

    # After all that the training still runs and still takes a real request.
    assert process.poll() is None
    code, body = http(f"{url}/save_checkpoint", "POST", token, {"name": "still-alive"})
    assert code == 202
    saved = control("save", out, "--name", "via-files")
    assert saved.returncode == 0, saved.stderr
    assert process.poll() is None
    assert read_status(out)["state"] == "running"
    assert len(list((out / "control" / "rejected").iterdir())) == planted
    assert sorted(p.name for p in outside.iterdir()) == ["target.json"]
    process.terminate()
    process.wait(timeout=60)
    log = (tmp_path / "training.log").read_text()
    assert "Traceback" not in log and "Exception occurred during processing" not in log
    assert log.count("Live control: ignored request") == planted


def test_a_body_shorter_than_its_content_length_gets_a_json_408_and_a_close(tmp_path):
    from hf_trainkit.control.server import CONNECTION_TIMEOUT_SECONDS, ControlServer

    assert CONNECTION_TIMEOUT_SECONDS == 10.0  # what the README promises; the server below waits 1 s to be quick
    server = ControlServer(str(tmp_path), "secret", lambda: {"state": "running"}, connection_timeout=1.0).start()
    try:
        port = server.server_address[1]
        started = time.monotonic()
        # 9 bytes of the 50 announced, then silence: the connection stays open on the client's side.
        response = raw_http(port, b"POST /save_checkpoint HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
                                  b"Content-Length: 50\r\n\r\n{\"name\": ", timeout=15.0)
        elapsed = time.monotonic() - started
        code, body = status_and_json(response)
        assert code == 408 and "shorter than its Content-Length" in body["error"], response
        # Answered once the server's timeout passed, and closed: raw_http read to the end (it waits 15 s otherwise).
        assert 1.0 <= elapsed < 8.0, elapsed
        assert not list(requests_dir(tmp_path).glob("*.json"))  # nothing reached the training
        # The server still answers the next client.
        code, body = status_and_json(raw_http(port, b"GET /status HTTP/1.1\r\nAuthorization: Bearer secret\r\n\r\n"))
        assert code == 200 and body == {"state": "running"}
    finally:
        server.stop()


@pytest.mark.parametrize("name", [5, 0, False, 1.5, ["a"], {"x": "y"}])
def test_a_checkpoint_name_that_is_not_a_string_is_rejected_as_such(tmp_path, name):
    from hf_trainkit.control import ControlError, check_request, read_response
    from hf_trainkit.control.server import ControlServer

    with pytest.raises(ControlError, match="must be a string"):
        check_request(tmp_path, "save", name)
    # A request file (another machine, or any client writing files): answered as rejected, with that reason.
    prepare_control_dir(tmp_path)
    (requests_dir(tmp_path) / "0001-abc123.json").write_text(json.dumps({"id": "abc123", "action": "save",
                                                                          "name": name}))
    assert RequestQueue(tmp_path, warn=lambda line: None).take() is None
    response = read_response(tmp_path, "abc123")
    assert response["status"] == "rejected" and "must be a string" in response["error"], response
    assert not list(requests_dir(tmp_path).glob("*.json"))
    # Over HTTP: a JSON 400 saying the same.
    server = ControlServer(str(tmp_path), "secret", dict).start()
    try:
        body = json.dumps({"name": name}).encode()
        code, answer = status_and_json(raw_http(server.server_address[1], b"POST /save_checkpoint HTTP/1.1\r\n"
                                                b"Authorization: Bearer secret\r\nContent-Length: " +
                                                str(len(body)).encode() + b"\r\n\r\n" + body))
        assert code == 400 and "must be a string" in answer["error"], answer
    finally:
        server.stop()


# --- every accepted request is carried out or answered with why not (issue 30) ------------------------------------

def _running_here(run: Path, pid: int | None = None):
    from hf_trainkit.control import write_status

    write_status(run, {"state": "running", "step": 5, "max_steps": 100, "pid": pid or os.getpid(),
                       "host": socket.gethostname()})


def _refusal(run, action, name=None):
    from hf_trainkit.control import ControlError

    with pytest.raises(ControlError) as refused:
        submit_request(run, action, name)
    return refused.value.status, str(refused.value)


def test_nothing_is_queued_behind_a_stop_queued_or_taken(tmp_path):
    from hf_trainkit.control import read_response

    _running_here(tmp_path)
    early = submit_request(tmp_path, "save", "before-the-stop")
    stop = submit_request(tmp_path, "stop")
    status, why = _refusal(tmp_path, "save")
    assert status == 409 and f"a stop is already queued (request {stop})" in why
    assert _refusal(tmp_path, "stop")[0] == 409  # stop twice: the second is refused, not queued forever
    refused = control("save", tmp_path, "--no-wait")  # the CLI: one line, exit 1 (the run's state, not a bad input)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"hf-trainkit control: error: save: a stop is already queued (request {stop}): the training saves and ends "
        "at the next step boundary, so nothing after it would be carried out."], refused.stderr
    queue = RequestQueue(tmp_path, warn=lambda line: None)
    assert queue.take()["id"] == early  # in the order they came
    # A save another machine wrote past the lock slipped in behind the stop: rejected when the stop is taken.
    (requests_dir(tmp_path) / f"{time.time_ns():020d}-sneaked.json").write_text(
        json.dumps({"id": "sneaked", "action": "save", "name": None}))
    assert queue.take()["id"] == stop
    assert read_response(tmp_path, "sneaked")["status"] == "rejected"
    assert f"a stop (request {stop}) was taken first" in read_response(tmp_path, "sneaked")["error"]
    status, why = _refusal(tmp_path, "save", "late")  # taken, the training not yet ended: still refused
    assert status == 409 and f"the training is stopping (request {stop})" in why
    assert not list(requests_dir(tmp_path).glob("*.json"))
    # A new training in the same folder (another pid) takes requests again.
    _running_here(tmp_path, pid=os.getppid())
    assert submit_request(tmp_path, "save")


def test_a_save_already_queued_and_a_full_queue_are_refused_with_why(tmp_path):
    from hf_trainkit.control import MAX_QUEUED

    _running_here(tmp_path)
    first = submit_request(tmp_path, "save")
    status, why = _refusal(tmp_path, "save")
    assert status == 409 and f"an unnamed save is already queued (request {first})" in why
    named = submit_request(tmp_path, "save", "a")
    status, why = _refusal(tmp_path, "save", "a")
    assert status == 409 and f"a save named 'a' is already queued (request {named})" in why
    for index in range(MAX_QUEUED - 2):
        submit_request(tmp_path, "save", f"n{index}")
    status, why = _refusal(tmp_path, "save", "one-too-many")
    assert status == 429 and f"{MAX_QUEUED} requests are already queued" in why
    assert len(list(requests_dir(tmp_path).glob("*.json"))) == MAX_QUEUED


def test_concurrent_submits_queue_exactly_what_the_rules_allow(tmp_path):
    """20 processes' worth of saves at once (threads here, the lock is a file lock): one unnamed save is queued,
    the 19 others refused; never two unnamed ones through a race."""
    from hf_trainkit.control import ControlError

    _running_here(tmp_path)
    outcomes, barrier = [], threading.Barrier(20)

    def one():
        barrier.wait()
        try:
            outcomes.append(("queued", submit_request(tmp_path, "save")))
        except ControlError as error:
            outcomes.append((error.status, str(error)))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o[0] for o in outcomes if o[0] == "queued") == ["queued"]
    assert [o[0] for o in outcomes].count(409) == 19
    assert len(list(requests_dir(tmp_path).glob("*.json"))) == 1


def test_what_a_training_leaves_queued_is_rejected_with_why(tmp_path):
    """The real callback's on_train_end: the status says stopped, then every request still queued is answered
    rejected with the step; one queued for a training that was killed is answered the same way by whoever looks."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from hf_trainkit.callbacks.live_control import LiveControlCallback
    from hf_trainkit.control import read_response, settle_queue

    run = tmp_path / "ended"
    prepare_control_dir(run)
    _running_here(run)
    ids = [submit_request(run, "save", "late-one"), submit_request(run, "save")]
    callback = LiveControlCallback(handle_signals=False)
    args = SimpleNamespace(output_dir=str(run), world_size=1)
    state = SimpleNamespace(global_step=40, max_steps=40, epoch=1.0, log_history=[], is_world_process_zero=True)
    callback.on_train_end(args, state, SimpleNamespace())
    assert read_status(run)["state"] == "finished"
    for request_id in ids:
        response = read_response(run, request_id)
        assert response["status"] == "rejected"
        assert response["error"] == "the training finished at step 40 before it could carry this out"
    assert not list(requests_dir(run).glob("*.json"))
    assert _refusal(run, "save")[0] == 409

    killed = tmp_path / "killed"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    _running_here(killed, pid=dead.pid)
    queued = submit_request(killed, "save")  # the training was alive when it was sent
    dead.wait()
    assert settle_queue(killed) == 1
    response = read_response(killed, queued)
    assert response["status"] == "rejected" and f"(pid {dead.pid}) ended" in response["error"]
    assert not list(requests_dir(killed).glob("*.json"))


def test_a_stop_left_from_an_earlier_run_does_not_block_the_next_one(tmp_path):
    """A stop queued for a training that is gone is rejected when the next one starts, and that one still takes
    requests (the stale stop is not taken as its own)."""
    from types import SimpleNamespace

    from hf_trainkit.callbacks.live_control import LiveControlCallback
    from hf_trainkit.control import read_response

    prepare_control_dir(tmp_path)
    (requests_dir(tmp_path) / f"{time.time_ns():020d}-stalestop.json").write_text(
        json.dumps({"id": "stalestop", "action": "stop", "name": None}))
    callback = LiveControlCallback(handle_signals=False)
    args = SimpleNamespace(output_dir=str(tmp_path), world_size=1)
    state = SimpleNamespace(global_step=0, max_steps=40, epoch=0.0, log_history=[], is_world_process_zero=True)
    callback.on_train_begin(args, state, SimpleNamespace())
    try:
        assert read_response(tmp_path, "stalestop")["status"] == "rejected"
        assert read_status(tmp_path)["state"] == "running"
        assert submit_request(tmp_path, "save")  # not "the training is stopping"
    finally:
        callback.on_train_end(args, state, SimpleNamespace())


def test_a_name_taken_by_the_training_is_refused_until_its_save_is_written_or_fails(tmp_path):
    """Between the training taking a named save off the queue and its checkpoint's marker naming it, the same name
    must not be queued again (20 concurrent saves of 4 names once got 5 accepted: one name twice)."""
    from hf_trainkit.control import ControlError, release_name, write_status

    run = tmp_path / "run"
    prepare_control_dir(run)
    write_status(run, {"state": "running", "step": 3, "pid": os.getpid(), "host": socket.gethostname()})
    first = submit_request(run, "save", "s0")
    with pytest.raises(ControlError) as queued:
        submit_request(run, "save", "s0")
    assert queued.value.status == 409 and "already queued" in str(queued.value)
    assert RequestQueue(run, warn=lambda message: None).take()["id"] == first  # taken: no checkpoint yet
    with pytest.raises(ControlError) as being_written:
        submit_request(run, "save", "s0")
    assert being_written.value.status == 409 and first in str(being_written.value)
    assert submit_request(run, "save", "s1")  # another name is fine
    release_name(run, "s0")  # the save failed: the name is free again
    assert submit_request(run, "save", "s0")
    # A saving.json left by another process (an earlier training) holds no name for this one.
    write_status(run, {"state": "running", "step": 3, "pid": os.getpid() + 1, "host": socket.gethostname()})
    assert RequestQueue(run, warn=lambda message: None).take()["name"] == "s1"
