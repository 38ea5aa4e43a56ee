"""Live control: act on a running training (save, stop, status) through files in its run dir, from the command
line, an HTTP endpoint or the dashboard. Acts on checkpoints only through `checkpointing/`'s public functions.

    files.py     where the control files are, and how one is read safely (untrusted input)
    requests.py  the request queue: submit (refusing what nothing would carry out), take, answer, reject
    status.py    the training's live status, and whether its process is still there
    token.py     bearer tokens, readable by the user only
    server.py    the HTTP endpoint beside a training (`--control-port`), also the dashboard's server

The training side is `callbacks/live_control.py`; the command is `commands/control.py`.
"""

from .files import MAX_JSON_DEPTH, MAX_REQUEST_BYTES, ControlError, control_dir, parse_request_json, read_regular_file
from .requests import (ACTIONS, MAX_QUEUED, REQUEST_ID, RequestQueue, RequestWatcher, check_request, has_requests,
                       is_queued, prepare_control_dir, queued_requests, quarantine, read_response, reject_pending,
                       reject_queued, release_name, settle_queue, submit_request, why_not_accepted, write_response)
from .status import is_running, process_gone, read_status, write_status
from .token import read_token, write_token


__all__ = ["ACTIONS", "MAX_JSON_DEPTH", "MAX_QUEUED", "MAX_REQUEST_BYTES", "REQUEST_ID", "ControlError",
           "RequestQueue", "RequestWatcher", "check_request", "control_dir", "has_requests", "is_queued",
           "is_running", "parse_request_json", "prepare_control_dir", "process_gone", "quarantine",
           "queued_requests", "read_regular_file", "read_response", "read_status", "read_token", "reject_pending",
           "reject_queued", "release_name", "settle_queue", "submit_request", "why_not_accepted", "write_response",
           "write_status", "write_token"]
