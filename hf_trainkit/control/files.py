"""The files of live control, read as untrusted input: where they are, and how one is read safely (a regular file
of bounded size, never through a symlink or a FIFO; JSON of bounded depth). Shared by the request queue, the
status and the HTTP endpoint."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..constants import CONTROL_DIR, REJECTED_DIR, REQUESTS_DIR, RESPONSES_DIR


MAX_REQUEST_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16


class ControlError(ValueError):
    """A request that cannot be accepted; `status` is the HTTP status that says so, `about_the_run` whether the
    request is fine but the training would not carry it out now (ended, gone, stopping, the same save queued)."""

    def __init__(self, message: str, status: int = 400, about_the_run: bool = False):
        super().__init__(message)
        self.status, self.about_the_run = status, about_the_run


def control_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CONTROL_DIR


def _requests_dir(run_dir) -> Path:
    return control_dir(run_dir) / REQUESTS_DIR


def _responses_dir(run_dir) -> Path:
    return control_dir(run_dir) / RESPONSES_DIR


def _rejected_dir(run_dir) -> Path:
    return control_dir(run_dir) / REJECTED_DIR


def json_depth(value, limit: int) -> int:
    """Nesting depth of a parsed JSON value, counted without recursion and no further than `limit` + 1."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)]
        level = [item for item in level if isinstance(item, (dict, list))]
    return depth


def parse_request_json(raw: bytes, what: str) -> dict:
    """A JSON object of at most MAX_REQUEST_BYTES and MAX_JSON_DEPTH levels, else ControlError saying why."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ControlError(f"{what} is over {MAX_REQUEST_BYTES} bytes", status=413)
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ControlError(f"{what} is nested too deeply") from None
    except ValueError:  # also UnicodeDecodeError
        raise ControlError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ControlError(f"{what} must be a JSON object")
    if json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ControlError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of `path` if it is a regular file (not a directory, FIFO, device or symlink) of at most
    `max_bytes`; ControlError otherwise. Opened non-blocking, so a FIFO never wedges the reader."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise ControlError(f"cannot open it ({error.strerror or error})") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ControlError("not a regular file")
        if info.st_size > max_bytes:
            raise ControlError(f"over {max_bytes} bytes", status=413)
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            return handle.read(max_bytes + 1)
    finally:
        os.close(descriptor)
