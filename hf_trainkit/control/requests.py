"""Live control of a running training through files in its run dir (works everywhere, shared filesystems too).

    RUN_DIR/control/requests/<time>-<id>.json    one per request, written atomically by `hf-trainkit control` or
                                                  the HTTP endpoint, consumed by the training's main process
    RUN_DIR/control/responses/<id>.json          what became of it (done: which checkpoint; rejected: why)
    RUN_DIR/control/status.json                  step, epoch, last metrics, state, endpoint (written by training;
                                                  status.py)
    RUN_DIR/control/stopping.json                the stop the training has taken (no request is queued after it)
    RUN_DIR/control/saving.json                  the named saves it has taken and not yet written
    RUN_DIR/control_token                        bearer token of the HTTP endpoint, mode 0600 (token.py)

The training side checks `requests/` at each step boundary on the main process (one `stat`, see RequestWatcher).
Every request is carried out or answered with why not: `submit_request` refuses (409) what nothing would carry out
(the training ended, is gone or is stopping, the same save is already queued) and, past MAX_QUEUED requests, says
try again (429); what is still queued when the training ends (or is found gone) is answered `rejected` with the
reason (`reject_queued`). Submitting and that last answer hold one lock (`control/.lock`), so no request slips in
between.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path

from ..checkpointing.discover import checkpoint_names
from ..checkpointing.marker import write_json_atomically
from ..checkpointing.policy import validate_checkpoint_name
from .files import (MAX_REQUEST_BYTES, ControlError, _rejected_dir, _requests_dir, _responses_dir, control_dir,
                    parse_request_json, read_regular_file)
from .status import process_gone, read_status


ACTIONS = ("save", "stop")
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # ids become file names: no '/', '..', NUL or absolute paths
MAX_QUEUED = 8  # requests waiting at once (the training takes one per step)
STOPPING_FILE = "stopping.json"  # inside CONTROL_DIR
SAVING_FILE = "saving.json"  # inside CONTROL_DIR: names of the saves taken and not yet written
LOCK_FILE = ".lock"  # inside CONTROL_DIR


def prepare_control_dir(run_dir: str | os.PathLike):
    _requests_dir(run_dir).mkdir(parents=True, exist_ok=True)
    _responses_dir(run_dir).mkdir(parents=True, exist_ok=True)


def check_request(run_dir: str | os.PathLike, action: str, name: str | None) -> None:
    """Raise ControlError (with its HTTP status) if `action`/`name` cannot be accepted for `run_dir`."""
    if action not in ACTIONS:
        raise ControlError(f"unknown action {action!r} (use {' or '.join(ACTIONS)})")
    if name is not None:
        if action != "save":
            raise ControlError("only a save takes a name")
        try:
            validate_checkpoint_name(name)
        except ValueError as error:
            raise ControlError(str(error)) from None
        taken = checkpoint_names(run_dir).get(name)
        if taken:
            raise ControlError(f"name {name!r} is already used by {taken}", status=409)


@contextlib.contextmanager
def _queue_lock(run_dir):
    """One writer of the queue at a time, across processes (submitting vs. the training's last answer)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): best effort
        yield
        return
    control_dir(run_dir).mkdir(parents=True, exist_ok=True)
    descriptor = os.open(control_dir(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                         0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def queued_requests(run_dir: str | os.PathLike) -> list[tuple[Path, dict]]:
    """(file, request) of every readable request waiting in `requests/`, oldest first (unreadable ones skipped)."""
    folder = _requests_dir(run_dir)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except OSError:
        return []
    found = []
    for name in names:
        try:
            request = parse_request_json(read_regular_file(folder / name, MAX_REQUEST_BYTES), "the request")
        except ControlError:
            continue
        if isinstance(request.get("id"), str) and REQUEST_ID.match(request["id"]):
            found.append((folder / name, request))
    return found


def _stop_taken(run_dir, status: dict | None) -> dict | None:
    """The stop the running training has taken (control/stopping.json written by this very process), if any."""
    try:
        taken = json.loads(read_regular_file(control_dir(run_dir) / STOPPING_FILE, 1 << 16))
    except (ControlError, ValueError, RecursionError):
        return None
    if (isinstance(taken, dict) and status is not None and taken.get("pid") == status.get("pid")
            and taken.get("host") == status.get("host")):
        return taken
    return None


def _names_taken(run_dir, status: dict | None) -> dict:
    """name -> request id of the named saves the running training has taken off the queue (control/saving.json,
    written by this very process): their checkpoint may not be written yet, the name is spoken for all the same."""
    try:
        taken = json.loads(read_regular_file(control_dir(run_dir) / SAVING_FILE, 1 << 20))
    except (ControlError, ValueError, RecursionError):
        return {}
    if (isinstance(taken, dict) and status is not None and taken.get("pid") == status.get("pid")
            and taken.get("host") == status.get("host") and isinstance(taken.get("names"), dict)):
        return taken["names"]
    return {}


def _record_taken_name(run_dir, name: str, request_id: str | None):
    """Add (or, with request_id None, remove) a name in control/saving.json, for this process."""
    path = control_dir(run_dir) / SAVING_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    names = dict(_names_taken(run_dir, me))
    if request_id is None:
        names.pop(name, None)
    else:
        names[name] = request_id
    write_json_atomically(path, {**me, "names": names})


def release_name(run_dir: str | os.PathLike, name: str):
    """The save taken under `name` failed: the name can be asked for again."""
    with contextlib.suppress(OSError), _queue_lock(run_dir):
        _record_taken_name(run_dir, name, None)


def why_not_accepted(run_dir: str | os.PathLike, action: str, name: str | None) -> ControlError | None:
    """Why a request would not be carried out by the training now (409/429), or None. Needs no lock to read;
    `submit_request` asks again under the lock."""
    status = read_status(run_dir)
    if status is not None:
        state = status.get("state")
        if state != "running":
            return ControlError(f"the training has {state or 'ended'} (step {status.get('step')}): nothing would "
                                f"carry out the {action}", status=409)
        if process_gone(status):
            return ControlError(f"the training's process (pid {status.get('pid')}) no longer exists (killed or "
                                f"crashed at step {status.get('step')}): nothing would carry out the {action}",
                                status=409)
        taken = _stop_taken(run_dir, status)
        if taken is not None:
            return ControlError(f"the training is stopping (request {taken.get('id')}): it ends after this step "
                                "without taking another request", status=409)
        being_written = _names_taken(run_dir, status) if action == "save" and name is not None else {}
        if name in being_written:
            return ControlError(f"a save named {name!r} was taken by the training (request "
                                f"{being_written[name]}) and is being written", status=409)
    queued = [request for _, request in queued_requests(run_dir)]
    for request in queued:
        if request.get("action") == "stop":
            return ControlError(f"a stop is already queued (request {request['id']}): the training saves and ends "
                                f"at the next step boundary, so nothing after it would be carried out", status=409)
        if action == "save" and request.get("action") == "save" and request.get("name") == name:
            which = f"a save named {name!r}" if name else "an unnamed save"
            return ControlError(f"{which} is already queued (request {request['id']}): it is carried out at the "
                                f"next step boundary", status=409)
    if len(queued) >= MAX_QUEUED:
        return ControlError(f"{len(queued)} requests are already queued (the training takes one per step); try "
                            "again in a few steps", status=429)
    return None


def submit_request(run_dir: str | os.PathLike, action: str, name: str | None = None, source: str = "cli") -> str:
    """Validate and queue a request; its id (to wait for the response). Raises ControlError (with the HTTP status)
    for a bad request (400) or one the training would not carry out (409: it ended, is gone or stopping, the same
    save is queued; 429: MAX_QUEUED are waiting)."""
    check_request(run_dir, action, name)
    prepare_control_dir(run_dir)
    with _queue_lock(run_dir):
        refusal = why_not_accepted(run_dir, action, name)
        if refusal is not None:
            refusal.about_the_run = True
            raise refusal
        request_id = uuid.uuid4().hex[:12]
        request = {"id": request_id, "action": action, "name": name, "source": source, "created_at": time.time()}
        # Time first in the file name: the training applies requests in the order they came.
        write_json_atomically(_requests_dir(run_dir) / f"{time.time_ns():020d}-{request_id}.json", request)
    return request_id


def reject_queued(run_dir: str | os.PathLike, why: str) -> int:
    """Answer every request still queued as rejected because `why` (the training ended, or is gone, before it
    could carry them out), under the queue's lock; returns how many."""
    count = 0
    try:
        with _queue_lock(run_dir):
            for path, request in queued_requests(run_dir):
                write_response(run_dir, {"id": request["id"], "action": request.get("action"),
                                         "name": request.get("name"), "status": "rejected", "error": why})
                with contextlib.suppress(OSError):
                    path.unlink()
                count += 1
    except OSError:
        pass
    return count


def settle_queue(run_dir: str | os.PathLike, status: dict | None = None) -> int:
    """If the training of `run_dir` has ended or is gone, answer what it left queued as rejected (with why);
    returns how many. Cheap when nothing is queued (one directory read)."""
    if not has_requests(run_dir):
        return 0
    status = status if status is not None else read_status(run_dir)
    if status is None:
        return 0
    state, step = status.get("state"), status.get("step")
    if state == "running" and process_gone(status):
        why = f"the training's process (pid {status.get('pid')}) ended (killed or crashed at step {step}) first"
    elif state in ("finished", "stopped"):
        why = f"the training {state} at step {step} before it could carry this out"
    else:
        return 0
    return reject_queued(run_dir, why)


def has_requests(run_dir: str | os.PathLike) -> bool:
    """Whether `requests/` holds a request (one directory read)."""
    try:
        with os.scandir(_requests_dir(run_dir)) as entries:
            return any(entry.name.endswith(".json") and not entry.name.startswith(".") for entry in entries)
    except OSError:
        return False


class RequestWatcher:
    """The check done at every step boundary: one `stat` of `requests/` while its mtime stays the same (creating a
    request file changes it), a directory read when it changed, and one anyway every `full_scan_seconds` (a
    filesystem with coarse or cached mtimes, e.g. NFS, still gets its requests applied, a little later)."""

    def __init__(self, run_dir: str | os.PathLike, full_scan_seconds: float = 2.0):
        self.folder = _requests_dir(run_dir)
        self.run_dir = run_dir
        self.full_scan_seconds = full_scan_seconds
        self._mtime: int | None = None
        self._last_scan = 0.0

    def pending(self) -> bool:
        now = time.monotonic()
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except OSError:
            return False
        if mtime == self._mtime and now - self._last_scan < self.full_scan_seconds:
            return False
        found = has_requests(self.run_dir)
        # Remember the mtime only when the folder was empty: with requests left, look again next step.
        self._mtime, self._last_scan = (None if found else mtime), now
        return found


def quarantine(run_dir: str | os.PathLike, path: Path, why: str) -> str:
    """Move a request file that cannot be used into `control/rejected/` (kept for a look, never read again);
    returns the one-line warning to print."""
    folder = _rejected_dir(run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, folder / f"{time.time_ns()}-{path.name}")
        where = f"moved to {folder}"
    except OSError as error:
        where = f"could not be moved away ({error.strerror or error}); it is ignored from now on"
    return f"Live control: ignored request {path.name[:80]!r}: {why}; {where}."


class RequestQueue:
    """The training side of the request folder: takes the oldest usable request, answers or quarantines the rest.

    Nothing in the folder can stop training: a request is read only if it is a regular file of at most 64 KiB,
    holding a JSON object of at most 16 levels whose id is a plain name; anything else is moved to
    `control/rejected/` with one warning (and skipped for good if even that fails).
    """

    def __init__(self, run_dir: str | os.PathLike, warn=print, for_this_training: bool = True):
        self.run_dir = run_dir
        self.warn = warn
        self.for_this_training = for_this_training  # False: emptying the queue, a stop taken is not ours to do
        self._ignored: set[str] = set()

    def take(self) -> dict | None:
        folder = _requests_dir(self.run_dir)
        try:
            names = sorted(n for n in os.listdir(folder)
                           if n.endswith(".json") and not n.startswith(".") and n not in self._ignored)
        except OSError:
            return None
        for file_name in names:
            path = folder / file_name
            try:
                request = parse_request_json(read_regular_file(path, MAX_REQUEST_BYTES), "the request")
                request_id = request.get("id")
                if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
                    raise ControlError(f"its id {str(request_id)[:40]!r} is not 1-64 letters, digits, '_' or '-'")
            except ControlError as error:
                if not path.exists() and not path.is_symlink():
                    continue  # taken by someone else meanwhile
                self.warn(quarantine(self.run_dir, path, str(error)))
                if path.exists() or path.is_symlink():
                    self._ignored.add(file_name)
                continue
            # The answer is written before the request file goes, so a client polling for it never finds neither.
            try:
                check_request(self.run_dir, request.get("action"), request.get("name"))
            except ControlError as error:
                write_response(self.run_dir, {"id": request_id, "status": "rejected", "error": str(error)})
                self._remove(path, file_name)
                continue
            stop = request.get("action") == "stop" and self.for_this_training
            if stop:
                # Written before the request file goes: a client always sees the stop, queued or taken.
                write_json_atomically(control_dir(self.run_dir) / STOPPING_FILE,
                                      {"id": request_id, "pid": os.getpid(), "host": socket.gethostname(),
                                       "taken_at": time.time()})
            if request.get("action") == "save" and request.get("name") and self.for_this_training:
                # Under the queue's lock, before the request file goes: a client asking for the same name while
                # this save is written is refused (the checkpoint's marker names it only once it is written).
                with _queue_lock(self.run_dir):
                    _record_taken_name(self.run_dir, request["name"], request_id)
            write_response(self.run_dir, {"id": request_id, "action": request.get("action"),
                                          "name": request.get("name"), "status": "accepted"})
            self._remove(path, file_name)
            if stop:
                reject_queued(self.run_dir, f"a stop (request {request_id}) was taken first: the training ends "
                                            "without carrying this out")
            return request
        return None

    def _remove(self, path: Path, file_name: str):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            self._ignored.add(file_name)


def reject_pending(run_dir: str | os.PathLike, why: str, warn=print) -> int:
    """Answer every queued request as rejected (a new training starts: they were meant for an earlier one)."""
    count = 0
    queue = RequestQueue(run_dir, warn, for_this_training=False)
    while True:
        request = queue.take()
        if request is None:
            return count
        write_response(run_dir, {"id": request["id"], "action": request.get("action"), "status": "rejected",
                                 "error": why})
        count += 1


def write_response(run_dir: str | os.PathLike, response: dict):
    if not isinstance(response.get("id"), str) or not REQUEST_ID.match(response["id"]):
        raise ControlError(f"request id {str(response.get('id'))[:40]!r} cannot name a response file")
    _responses_dir(run_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomically(_responses_dir(run_dir) / f"{response['id']}.json", {**response, "answered_at": time.time()})


def read_response(run_dir: str | os.PathLike, request_id: str) -> dict | None:
    if not REQUEST_ID.match(request_id):
        return None
    try:
        response = json.loads((_responses_dir(run_dir) / f"{request_id}.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return response if isinstance(response, dict) else None


def is_queued(run_dir: str | os.PathLike, request_id: str) -> bool:
    try:
        return any(name.endswith(f"-{request_id}.json") for name in os.listdir(_requests_dir(run_dir)))
    except OSError:
        return False
