"""Live control of a running training through files in its run dir (works everywhere, shared filesystems too).

    RUN_DIR/control/requests/<time>-<id>.json    one per request, written atomically by `hf-trainkit control` or
                                                  the HTTP endpoint, consumed by the training's main process
    RUN_DIR/control/responses/<id>.json          what became of it (done: which checkpoint; rejected: why)
    RUN_DIR/control/status.json                  step, epoch, last metrics, state, endpoint (written by training)
    RUN_DIR/control_token                        bearer token of the HTTP endpoint, mode 0600

The training side checks `requests/` at each step boundary on the main process (one `stat`, see RequestWatcher).
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from pathlib import Path

from .discover import list_checkpoints
from .marker import write_json_atomically
from .policy import validate_checkpoint_name


ACTIONS = ("save", "stop")
TOKEN_FILE = "control_token"


class ControlError(ValueError):
    """A request that cannot be accepted; `status` is the HTTP status that says so."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def control_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "control"


def _requests_dir(run_dir) -> Path:
    return control_dir(run_dir) / "requests"


def _responses_dir(run_dir) -> Path:
    return control_dir(run_dir) / "responses"


def prepare_control_dir(run_dir: str | os.PathLike):
    _requests_dir(run_dir).mkdir(parents=True, exist_ok=True)
    _responses_dir(run_dir).mkdir(parents=True, exist_ok=True)


def checkpoint_names(run_dir: str | os.PathLike) -> dict[str, str]:
    """name -> checkpoint folder, for the named checkpoints of `run_dir`."""
    return {info.marker["name"]: info.name for info in list_checkpoints(run_dir) if info.marker.get("name")}


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


def submit_request(run_dir: str | os.PathLike, action: str, name: str | None = None, source: str = "cli") -> str:
    """Validate and queue a request; its id (to wait for the response)."""
    check_request(run_dir, action, name)
    prepare_control_dir(run_dir)
    request_id = uuid.uuid4().hex[:12]
    request = {"id": request_id, "action": action, "name": name, "source": source, "created_at": time.time()}
    # Time first in the file name: the training applies requests in the order they came.
    write_json_atomically(_requests_dir(run_dir) / f"{time.time_ns():020d}-{request_id}.json", request)
    return request_id


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


def take_next_request(run_dir: str | os.PathLike) -> dict | None:
    """Remove and return the oldest well-formed request; malformed ones are answered as rejected."""
    folder = _requests_dir(run_dir)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except OSError:
        return None
    for file_name in names:
        path = folder / file_name
        try:
            request = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if not isinstance(request, dict):
            path.unlink(missing_ok=True)
            continue
        request_id = str(request.get("id") or file_name)
        # The answer is written before the request file goes, so a client polling for it never finds neither.
        try:
            check_request(run_dir, request.get("action"), request.get("name"))
        except ControlError as error:
            write_response(run_dir, {"id": request_id, "status": "rejected", "error": str(error)})
            path.unlink(missing_ok=True)
            continue
        write_response(run_dir, {"id": request_id, "action": request.get("action"), "name": request.get("name"),
                                 "status": "accepted"})
        path.unlink(missing_ok=True)
        return {**request, "id": request_id}
    return None


def reject_pending(run_dir: str | os.PathLike, why: str) -> int:
    """Answer every queued request as rejected (a new training starts: they were meant for an earlier one)."""
    count = 0
    while True:
        request = take_next_request(run_dir)
        if request is None:
            return count
        write_response(run_dir, {"id": request["id"], "action": request.get("action"), "status": "rejected",
                                 "error": why})
        count += 1


def write_response(run_dir: str | os.PathLike, response: dict):
    _responses_dir(run_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomically(_responses_dir(run_dir) / f"{response['id']}.json", {**response, "answered_at": time.time()})


def read_response(run_dir: str | os.PathLike, request_id: str) -> dict | None:
    try:
        return json.loads((_responses_dir(run_dir) / f"{request_id}.json").read_text())
    except (OSError, ValueError):
        return None


def is_queued(run_dir: str | os.PathLike, request_id: str) -> bool:
    try:
        return any(name.endswith(f"-{request_id}.json") for name in os.listdir(_requests_dir(run_dir)))
    except OSError:
        return False


def write_status(run_dir: str | os.PathLike, status: dict):
    control_dir(run_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomically(control_dir(run_dir) / "status.json", {**status, "updated_at": time.time()},
                          durable=False)


def read_status(run_dir: str | os.PathLike) -> dict | None:
    try:
        return json.loads((control_dir(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return None


def write_token(run_dir: str | os.PathLike) -> str:
    """A fresh bearer token in RUN_DIR/control_token, readable by the user only (0600, also if the file existed)."""
    token = secrets.token_urlsafe(32)
    path = Path(run_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, token.encode())
    finally:
        os.close(descriptor)
    return token


def checkpoint_table(run_dir: str | os.PathLike) -> list[dict]:
    """The checkpoints of `run_dir` as plain data (for `status` and `GET /checkpoints`)."""
    return [{"step": i.step, "checkpoint": i.name, "name": i.marker.get("name"), "reason": i.marker.get("reason"),
             "pinned": bool(i.marker.get("pinned")), "metrics": i.metrics, "valid": i.valid,
             "why_not": i.reason or None} for i in list_checkpoints(run_dir)]
