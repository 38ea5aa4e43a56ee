"""A live record of every log: `OUTPUT_DIR/logs/log_history.jsonl`, one JSON line per `Trainer.log` entry."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.utils import logging

from ..constants import LIVE_LOG_FILE, SUPERSEDED_DIR, TIME_KEY
from ..monitor.load import read_live_log


logger = logging.get_logger(__name__)


def _same_entry(written: dict, entry: dict) -> bool:
    # NaN != NaN: compare the JSON text, as it was written.
    written = {k: v for k, v in written.items() if k != TIME_KEY}
    return json.dumps(written, sort_keys=True, default=str) == json.dumps(entry, sort_keys=True, default=str)


def reconcile_live_log(output_dir: str | os.PathLike, log_history: list[dict]) -> Path | None:
    """Make `OUTPUT_DIR/logs/log_history.jsonl` start as `log_history` (the state the run starts from).

    A fresh start (empty history) or a resume from an older checkpoint leaves entries in the file that are not in
    the loaded history (steps past the resumed one, another timeline): the file is then moved, whole, to
    `OUTPUT_DIR/logs/superseded/<time>-log_history.jsonl` (as [`set_aside_checkpoints`] moves checkpoints; nothing
    is deleted) and a new one holds the loaded history, so no step is duplicated or lost. Returns where the old file
    went, or None.
    """
    path = Path(output_dir) / LIVE_LOG_FILE
    written, _ = read_live_log(path) if path.is_file() else ([], 0)
    if len(written) == len(log_history) and all(map(_same_entry, written, log_history)):
        return None
    moved = None
    if path.is_file():
        # Beside the log, not in OUTPUT_DIR/superseded/ (that holds whole checkpoints, one folder per setting aside).
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = path.parent / SUPERSEDED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        moved = folder / f"{stamp}-{path.name}"
        suffix = 1
        while moved.exists():
            suffix += 1
            moved = folder / f"{stamp}-{suffix}-{path.name}"
        os.replace(path, moved)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with open(temporary, "w") as handle:
        for entry in log_history:
            handle.write(json.dumps(entry, default=str) + "\n")
    os.replace(temporary, path)
    return moved


class LiveLogCallback(TrainerCallback):
    """Append every `Trainer.log` entry (the dict that goes into `state.log_history`) to
    `OUTPUT_DIR/logs/log_history.jsonl` as it happens, one JSON line each, flushed: a run can be watched
    (`hf-trainkit dashboard`, `hf-trainkit monitor`) with checkpoints off, before its first save and after a crash.

    Each line is the entry plus `"_time"` (wall-clock seconds, for the time axis and the ETA; readers drop it). Acts
    on `on_log`; writes on the world process zero only; changes nothing in `control`. At the first step (or the
    first log) the file is made to start as the history the run starts from: after a resume from an older
    checkpoint the entries past its step are moved aside (see [`reconcile_live_log`]). A write that fails is a
    warning, once; training goes on.
    """

    def __init__(self):
        self._handle = None
        self._reconciled = False
        self._failed = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._reconciled = False

    def _open(self, args, history: list[dict]):
        self._reconciled = True
        try:
            moved = reconcile_live_log(args.output_dir, history)
            if moved is not None and history:
                logger.warning(f"LiveLogCallback: log entries past step {history[-1].get('step')} (another timeline) "
                               f"moved to {moved}.")
            path = Path(args.output_dir) / LIVE_LOG_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(path, "a")
        except OSError as error:
            self._fail(error)

    def _fail(self, error: OSError):
        if not self._failed:
            logger.warning(f"LiveLogCallback: cannot write the live log ({error}); training goes on without it.")
        self._failed = True
        self._close()

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._reconciled and state.is_world_process_zero and not self._failed:
            self._open(args, list(state.log_history))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self._failed:
            return
        entry = state.log_history[-1] if state.log_history else dict(logs or {})
        if not self._reconciled:  # a log before any step (a finished run's summary)
            self._open(args, list(state.log_history[:-1]))
            if self._failed:
                return
        try:
            self._handle.write(json.dumps({TIME_KEY: time.time(), **entry}, default=str) + "\n")
            self._handle.flush()
        except (OSError, ValueError, AttributeError) as error:  # ValueError: a closed file
            self._fail(error if isinstance(error, OSError) else OSError(str(error)))

    def _close(self):
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError:
                pass
        self._handle = None

    def on_train_end(self, args, state, control, **kwargs):
        self._close()
        self._reconciled = False
