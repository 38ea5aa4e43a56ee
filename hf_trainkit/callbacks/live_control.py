"""Act on a running training: named saves on demand, graceful stop, status (files in the run dir, optional HTTP),
and the signals a scheduler or a terminal sends (save and stop)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.utils import logging

from ..control import (ControlError, RequestQueue, RequestWatcher, prepare_control_dir,
                                     reject_pending, reject_queued, release_name, write_response, write_status,
                                     write_token)
from ..checkpointing.marker import read_marker
from ..constants import TOKEN_FILE, checkpoint_dir
from ..checkpointing.save_request import mark_preempted, request_save, saving_enabled
from ..distributed import agree_on_max_each, broadcast_from_main


logger = logging.get_logger(__name__)

# What a rank asks for at a step boundary, in increasing strength: all ranks agree on the strongest any asked for.
NOTHING, SAVE, STOP = 0, 1, 2
STATUS_EVERY_SECONDS = 1.0
# Signals that mean "save and stop": a scheduler's SIGTERM, Ctrl-C (SIGINT), a closed terminal or ssh (SIGHUP).
# SIGUSR1 means "save and go on".
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)
SAVE_SIGNALS = tuple(s for s in (getattr(signal, "SIGUSR1", None),) if s is not None)


class LiveControlCallback(TrainerCallback):
    """Take requests while training runs: `hf-trainkit control save|stop|status RUN_DIR`, the HTTP endpoint, and
    signals.

    - **save** (optionally with a name): a checkpoint at the next step boundary, training goes on. A named
      checkpoint is pinned: rotation never deletes it; `hf-trainkit checkpoints list` shows its name.
    - **stop**: save and end training after the current step (the run counts as finished, like early stopping).
    - **status**: `RUN_DIR/control/status.json` (step, epoch, last metrics, state), refreshed at most every second.
    - **signals**: SIGTERM, SIGINT (Ctrl-C) and SIGHUP ask for a save and a clean stop at the next step boundary
      (preemption: the run is not finished, the same command resumes), SIGUSR1 for a save and go on. The same
      signal a second time exits at once (a second Ctrl-C); a launcher's SIGTERM after a Ctrl-C does not.

    The main process checks the request folder at each step boundary (one `stat`); signals reach any rank. Every
    rank learns both through one small all-reduce per step (plus a broadcast of the request when there is one), so
    all ranks save and stop at the same step. With `port` set, the main process also serves the HTTP endpoint of
    [`~checkpointing.control_server.ControlServer`] on `host` (127.0.0.1 unless told otherwise); the token is in
    `RUN_DIR/control_token`, readable by the user only. If the port cannot be opened, training goes on with the
    file transport and a warning.

    Args:
        port (`int`, *optional*): HTTP port (0 picks a free one; its number is in the status file). None: files only.
        host (`str`, *optional*, defaults to `"127.0.0.1"`): interface to listen on.
        watch_requests (`bool`, *optional*, defaults to `True`): take `hf-trainkit control` requests (False:
            signals only).
        handle_signals (`bool`, *optional*, defaults to `True`): install the signal handlers (main thread only).
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", watch_requests: bool = True,
                 handle_signals: bool = True):
        self.port, self.host = port, host
        self.watch_requests, self.handle_signals = watch_requests, handle_signals
        self.requested = NOTHING  # what the signals received since the last step boundary ask for
        self.preempted = False
        self.stop_signal: str | None = None  # the signal that stopped training, e.g. "SIGINT"
        self.saved_on_stop: str | None = None  # the checkpoint written when it stopped
        self._previous_handlers: dict = {}
        self._stop_signals_seen: list[int] = []
        self.server = None
        self.endpoint: dict | None = None
        self.stopped_by_request = False
        self._awaiting: list[dict] = []
        self._last_status = 0.0
        self._status: dict = {}
        self._watcher = None
        self._queue = None

    # --- set-up and status -------------------------------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        if signum in STOP_SIGNALS:
            if signum in self._stop_signals_seen:
                # print, not the logger: a signal handler must not wait for a lock the interrupted code may hold.
                print(f"Second {signal.Signals(signum).name}: exiting now, without saving.", flush=True)
                os._exit(128 + signum)
            self._stop_signals_seen.append(signum)
            self.stop_signal = self.stop_signal or signal.Signals(signum).name
            self.requested = max(self.requested, STOP)
        else:
            self.requested = max(self.requested, SAVE)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (*STOP_SIGNALS, *SAVE_SIGNALS):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        if not state.is_world_process_zero or not self.watch_requests:
            return
        try:
            prepare_control_dir(args.output_dir)
            stale = reject_pending(args.output_dir, "sent before this training started (to a run that is gone)",
                                   warn=logger.warning)
            if stale:
                logger.warning(f"LiveControlCallback: rejected {stale} request(s) left from an earlier run.")
        except OSError as error:
            logger.warning(f"LiveControlCallback: cannot create {args.output_dir}/control ({error}); live control off.")
            return
        if self.port is not None and self.server is None:
            self._start_server(args)
        self._write_status(args, state, "running", force=True)

    def _start_server(self, args):
        from ..control.server import ControlServer

        try:
            token = write_token(args.output_dir)
            self.server = ControlServer(args.output_dir, token, lambda: self._status, self.host, self.port).start()
        except OSError as error:
            logger.warning(f"LiveControlCallback: cannot serve on {self.host}:{self.port} ({error}); use "
                           f"`hf-trainkit control ... {args.output_dir}` (request files) instead.")
            return
        self.endpoint = {"url": self.server.url, "token_file": str(Path(args.output_dir) / TOKEN_FILE)}
        logger.warning(f"Live control: {self.server.url} (Authorization: Bearer $(cat {self.endpoint['token_file']}))")

    def _write_status(self, args, state, run_state: str, force: bool = False):
        now = time.monotonic()
        if not force and now - self._last_status < STATUS_EVERY_SECONDS:
            return
        self._last_status = now
        last = next((e for e in reversed(state.log_history) if "loss" in e or "reward" in e), {})
        self._status = {
            "state": run_state, "step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
            "last_metrics": {k: v for k, v in last.items() if isinstance(v, (int, float))},
            "pid": os.getpid(), "host": socket.gethostname(), "world_size": max(getattr(args, "world_size", 1), 1),
            "endpoint": self.endpoint,
        }
        try:
            write_status(args.output_dir, self._status)
        except OSError as error:
            logger.warning(f"LiveControlCallback: could not write the status file ({error}).")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.watch_requests:
            self._write_status(args, state, "running")

    # --- requests: one decision on every rank ----------------------------------------------------------------------

    def _next_request(self, args) -> dict | None:
        if self._watcher is None:
            self._watcher = RequestWatcher(args.output_dir)
            self._queue = RequestQueue(args.output_dir, warn=logger.warning)
        try:
            return self._queue.take() if self._watcher.pending() else None
        except (OSError, ControlError) as error:  # a broken request never takes the training down
            logger.warning(f"LiveControlCallback: could not read a request ({error}).")
            return None

    def on_step_end(self, args, state, control, **kwargs):
        request = self._next_request(args) if state.is_world_process_zero and self.watch_requests else None
        request_code = {None: NOTHING, "save": SAVE, "stop": STOP}[request and request["action"]]
        signal_code, request_code = agree_on_max_each([self.requested, request_code])  # one all-reduce per step
        if signal_code != NOTHING:
            self.requested = NOTHING
            self._apply_signal(args, state, control, signal_code)
        if request_code != NOTHING:
            self._apply_request(args, state, control, broadcast_from_main(request))

    def _apply_signal(self, args, state, control, code: int):
        if code == STOP:
            control.should_training_stop = True
            self.preempted = True
            mark_preempted(control)
        # With checkpoints switched off, a preemption only stops cleanly: the user asked for no checkpoint.
        if saving_enabled(args):
            request_save(control, state, "preempt" if code == STOP else "manual")

    def _apply_request(self, args, state, control, request: dict):
        extra = {"stopped_by": "control request"} if request["action"] == "stop" else {}
        request_save(control, state, "manual", name=request.get("name"), pinned=bool(request.get("name")),
                     request_id=request["id"], **extra)
        if request["action"] == "stop":
            control.should_training_stop = True
            self.stopped_by_request = True
        if state.is_world_process_zero:
            self._awaiting.append({**request, "step": state.global_step})
            # Taken off the queue: say so until the save is done (GET /requests/<id> never loses it).
            self._respond(args, request, state.global_step, status="saving")
            what = f"checkpoint {request['name']!r}" if request.get("name") else "a checkpoint"
            then = "then stopping" if request["action"] == "stop" else "training goes on"
            logger.warning(f"Control request {request['id']}: saving {what} at step {state.global_step}, {then}.")

    def _answer_finished_saves(self, args, state):
        """Answer requests whose save is done (called after the save, at the next step boundary or the end)."""
        if not self._awaiting:  # only the main process has any
            return
        done = [r for r in self._awaiting if r["step"] <= state.global_step]
        for request in done:
            checkpoint = checkpoint_dir(args.output_dir, request["step"])
            if read_marker(checkpoint):
                self._respond(args, request, request["step"], status="done", checkpoint=str(checkpoint))
            else:
                self._respond(args, request, request["step"], status="failed",
                              error=f"{checkpoint} was not completed")
                if request.get("name"):
                    release_name(args.output_dir, request["name"])  # it can be asked for again
        self._awaiting = [r for r in self._awaiting if r not in done]

    def _respond(self, args, request: dict, step: int, **outcome):
        try:
            write_response(args.output_dir, {"id": request["id"], "action": request["action"],
                                             "name": request.get("name"), "step": step, **outcome})
        except (OSError, ControlError) as error:
            logger.warning(f"LiveControlCallback: could not answer request {request['id']} ({error}).")

    def on_step_begin(self, args, state, control, **kwargs):
        self._answer_finished_saves(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
        if self.preempted and read_marker(checkpoint_dir(args.output_dir, state.global_step)):
            self.saved_on_stop = str(checkpoint_dir(args.output_dir, state.global_step))
        self._answer_finished_saves(args, state)
        if self.server is not None:
            self.server.stop()
            self.server = None
        if state.is_world_process_zero and self.watch_requests:
            finished = state.global_step >= state.max_steps > 0 and not (self.stopped_by_request or self.preempted)
            self._write_status(args, state, "finished" if finished else "stopped", force=True)
            # After the status (no request is queued from here on): what is left is answered, not kept waiting.
            reject_queued(args.output_dir, f"the training {'finished' if finished else 'stopped'} at step "
                                           f"{state.global_step} before it could carry this out")
