"""The live status of a training (RUN_DIR/control/status.json, written by its main process) and whether that
training is still there."""

from __future__ import annotations

import json
import os
import socket
import time

from ..checkpointing.marker import write_json_atomically
from ..constants import STATUS_FILE
from .files import ControlError, control_dir, read_regular_file


def write_status(run_dir: str | os.PathLike, status: dict):
    control_dir(run_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomically(control_dir(run_dir) / STATUS_FILE, {**status, "updated_at": time.time()},
                          durable=False)


def read_status(run_dir: str | os.PathLike) -> dict | None:
    try:
        status = json.loads(read_regular_file(control_dir(run_dir) / STATUS_FILE, 1 << 20))
    except (ControlError, ValueError, RecursionError):
        return None
    return status if isinstance(status, dict) else None


def process_gone(status: dict) -> bool:
    """True when `status` names a process of this machine that no longer exists (killed, crashed)."""
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # another machine (shared filesystem): cannot tell, the request waits for it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False



def is_running(status: dict | None) -> bool:
    """Whether `status` describes a training that is running now (as far as this machine can tell)."""
    return status is not None and status.get("state") == "running" and not process_gone(status)
