"""Checkpoints you can resume from: completion marker, safe rotation, preemption saves, a training-complete record."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.utils import logging

from ..checkpointing.discover import list_checkpoints
from ..checkpointing.marker import (BackgroundChecksums, IncompleteCheckpointError, invalidate_marker, read_marker,
                                    write_complete_marker, write_json_atomically)
from ..checkpointing.set_aside import set_aside_checkpoints
from ..checkpointing.policy import pinned_names
from ..checkpointing.rotate import checkpoints_to_delete
from ..checkpointing.save_request import (REASONS, SaveRequest, pop_save_request, request_save,
                                           saving_enabled)
from ..checkpointing.validate import COMPLETE_MARKER, TRAINING_COMPLETE
from ..distributed import agree_on_max, barrier


logger = logging.get_logger(__name__)

# Requests a signal can make, in increasing strength: all ranks agree on the strongest one any rank received.
NOTHING, SAVE, SAVE_AND_STOP = 0, 1, 2
# Signals that mean "save and stop": a scheduler's SIGTERM, Ctrl-C (SIGINT), a closed terminal or ssh (SIGHUP).
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)


def batch_change_message(args, state) -> str | None:
    """A warning when the run resumes with another total batch size than its checkpoint was trained with."""
    import json

    marker_file = Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE_MARKER
    try:
        saved = json.loads(marker_file.read_text())
    except (OSError, ValueError):
        return None
    world_size = max(getattr(args, "world_size", 1), 1)
    total = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    before = saved.get("total_train_batch_size")
    if before is None or before == total:
        return None
    return (f"Resuming step {state.global_step} with a total batch of {total} (world size {world_size}) instead of "
            f"{before} (world size {saved.get('world_size')}): the data position is counted in steps, so this run "
            f"continues at sample {state.global_step * total} instead of {state.global_step * before}, skipping or "
            f"repeating data. To keep it, choose --per-device-train-batch-size and --gradient-accumulation-steps "
            f"so that their product times the world size is {before}.")


def _has_config(model) -> bool:
    """Whether saving `model` writes a config.json (a transformers model, or a PEFT model around one)."""
    model = getattr(model, "module", model)  # DDP / DeepSpeed wrappers
    return hasattr(model, "config") and hasattr(model, "save_pretrained")


class ResumableCheckpointsCallback(TrainerCallback):
    """Make every checkpoint safe to resume from, and save on preemption.

    - `on_save`: once every rank has finished its part of the save (barrier), the main process writes the
      completion marker (`hf_trainkit_complete.json`: every file with its size, the files a resume needs, step,
      world size, total batch size, why it was saved, the metrics at that step). A checkpoint without it is
      recognisably incomplete. A worker thread then adds an xxh3-128 checksum of every file (about 0.1 s per GB),
      which a resume verifies: same-size corruption is found too.
    - Rotation: takes over `save_total_limit` from the `Trainer` (whose rotation sorts by mtime and can delete the
      newest checkpoint): counts valid checkpoints by step, never deletes the newest valid one, the best one or a
      `protected` one, and runs only after the new save is complete.
    - Preemption: SIGTERM, SIGINT (Ctrl-C) and SIGHUP ask for a save and a clean stop at the next step boundary,
      SIGUSR1 for a save and go on; every rank agrees through one small all-reduce per step (no file polling). The
      same signal a second time exits at once (a second Ctrl-C); a launcher's SIGTERM after a Ctrl-C does not.
    - A fresh start or a resume from an older checkpoint moves the checkpoints newer than the starting step (another
      timeline, or damaged saves) into `OUTPUT_DIR/superseded/<time>/` before the first step: nothing is lost,
      and a save never overwrites files of another run piece by piece.
    - `on_train_end`: writes `training_complete.json` when training reached its end (not when preempted), so a
      re-run of the same command does not train again.

    Args:
        save_total_limit (`int`, *optional*): keep at most this many valid checkpoints (default: the Trainer's
            `save_total_limit`, which is then switched off in the Trainer).
        protected (`list[str]`, *optional*): checkpoint folder names never deleted.
        handle_signals (`bool`, *optional*, defaults to `True`): install the SIGTERM/SIGUSR1 handlers.
        mirror ([`CheckpointMirror`], *optional*): copy each complete checkpoint there in the background (the
            main process only); training waits for the copies at its end.
    """

    def __init__(self, save_total_limit: int | None = None, protected: list[str] | None = None,
                 handle_signals: bool = True, mirror=None):
        self.mirror = mirror
        self.save_total_limit = save_total_limit
        self.protected = set(protected or [])
        self.handle_signals = handle_signals
        self.requested = NOTHING
        self.preempted = False
        self.stop_signal: str | None = None  # the signal that stopped training, e.g. "SIGINT"
        self.saved_on_stop: str | None = None  # the checkpoint written when it stopped
        self._previous_handlers: dict = {}
        self._stop_signals_seen: list[int] = []
        self._invalidated: dict[str, dict] = {}  # checkpoint folder -> its marker, taken away before a re-save
        self._checksums = BackgroundChecksums()

    # --- set-up ---------------------------------------------------------------------------------------------------

    def on_init_end(self, args, state, control, **kwargs):
        if self.save_total_limit is None:
            self.save_total_limit = args.save_total_limit
        args.save_total_limit = None  # rotation is ours from now on (see the class docstring)

    def _on_signal(self, signum, frame):
        if signum in STOP_SIGNALS:
            if signum in self._stop_signals_seen:
                print(f"Second {signal.Signals(signum).name}: exiting now, without saving.", flush=True)
                os._exit(128 + signum)
            self._stop_signals_seen.append(signum)
            self.stop_signal = self.stop_signal or signal.Signals(signum).name
            self.requested = max(self.requested, SAVE_AND_STOP)
        else:
            self.requested = max(self.requested, SAVE)

    def on_train_begin(self, args, state, control, **kwargs):
        self._checked_resume = False
        self._segment_start = time.time()
        self._runtime_before, self._segments_before = 0.0, 0
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for signum in (*STOP_SIGNALS, getattr(signal, "SIGUSR1", None)):
            if signum is not None:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _remap_best_checkpoint(self, args, state):
        # A run copied from another machine carries absolute paths that point nowhere here.
        best = state.best_model_checkpoint
        if best and not os.path.isdir(best):
            local = os.path.join(args.output_dir, os.path.basename(os.path.normpath(best)))
            if os.path.isdir(local):
                state.best_model_checkpoint = local

    def on_step_begin(self, args, state, control, **kwargs):
        if self._invalidated:
            self._restore_untouched_markers(args, state)
        # The Trainer loads a checkpoint's state after on_train_begin: the first step is where a resume is visible.
        if getattr(self, "_checked_resume", True):
            return
        self._checked_resume = True
        if state.global_step > 0:  # resumed: the training time of the segments before, as the checkpoint recorded it
            saved = read_marker(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            if isinstance(saved.get("train_runtime_so_far"), (int, float)):
                self._runtime_before = float(saved["train_runtime_so_far"])
                self._segments_before = int(saved.get("segments") or 1)
        if state.is_world_process_zero and saving_enabled(args):
            self._set_aside_other_timelines(args, state)
        barrier()  # no rank saves before the folders are out of the way
        if state.global_step > 0:
            self._remap_best_checkpoint(args, state)
            if state.is_world_process_zero:
                message = batch_change_message(args, state)
                if message:
                    logger.warning(message)

    def _set_aside_other_timelines(self, args, state):
        try:
            moved = set_aside_checkpoints(args.output_dir, after_step=state.global_step,
                                          include_training_complete=state.global_step == 0)
        except OSError as error:
            logger.warning(f"ResumableCheckpointsCallback: could not move older runs' checkpoints aside ({error}); "
                           "saves at their steps will replace them.")
            return
        if moved:
            checkpoints = [n for n in moved.names if n != TRAINING_COMPLETE]
            listed = ", ".join(checkpoints[:4]) + (" ..." if len(checkpoints) > 4 else "")
            record = f" and {TRAINING_COMPLETE}" if TRAINING_COMPLETE in moved.names else ""
            logger.warning(f"Moved {len(checkpoints)} checkpoint(s) newer than step {state.global_step} ({listed})"
                           f"{record} to {moved.folder}: they belong to another run or were damaged; nothing was "
                           "deleted.")
        if self.mirror is not None:
            try:
                self.mirror.set_aside(after_step=state.global_step, stamp=moved.stamp if moved else None)
            except Exception as error:  # a mirror outage must not stop training
                logger.warning(f"CheckpointMirror: could not move newer checkpoints aside on {self.mirror.url} "
                               f"({type(error).__name__}: {error}).")

    # --- every step: one agreement across ranks ---------------------------------------------------------------------

    def on_step_end(self, args, state, control, **kwargs):
        self._take_marker_before_resave(args, state)
        if not self.handle_signals:
            return
        agreed = agree_on_max(self.requested)
        if agreed == NOTHING:
            return
        self.requested = NOTHING
        if agreed == SAVE_AND_STOP:
            control.should_training_stop = True
            self.preempted = True
        # With checkpoints switched off, a preemption only stops cleanly: the user asked for no checkpoint.
        if saving_enabled(args):
            request_save(control, state, "preempt" if agreed == SAVE_AND_STOP else "manual")

    # --- saves ------------------------------------------------------------------------------------------------------

    def _take_marker_before_resave(self, args, state):
        """A folder for this step already exists (a save at this step is about to write into it): its marker goes
        first, so a kill halfway through never leaves it "complete" with files of two saves. Put back at the next
        step when no save came."""
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir() and checkpoint.name not in self._invalidated:
            try:
                self._invalidated[checkpoint.name] = invalidate_marker(checkpoint)
            except OSError as error:
                logger.warning(f"ResumableCheckpointsCallback: could not invalidate {checkpoint} ({error}).")

    def _restore_untouched_markers(self, args, state):
        from ..checkpointing.marker import STALE_MARKER

        for name in list(self._invalidated):  # still here: no save came at that step
            previous = self._invalidated.pop(name)
            stale = Path(args.output_dir) / name / STALE_MARKER
            if previous and stale.is_file():
                os.replace(stale, stale.with_name(COMPLETE_MARKER))

    def on_save(self, args, state, control, **kwargs):
        barrier()  # every rank has written its shards before the marker says "complete"
        request = pop_save_request(control, state)
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and checkpoint.is_dir():
            world_size = max(getattr(args, "world_size", 1), 1)
            try:
                marker = write_complete_marker(
                    checkpoint, self._metadata(args, state, request, checkpoint), world_size=world_size,
                    save_only_model=bool(getattr(args, "save_only_model", False)),
                    needs_config=_has_config(kwargs.get("model")), checksum=False)
                self._invalidated.pop(checkpoint.name, None)
                if marker.get("name"):
                    logger.warning(f"Saved {checkpoint} as {marker['name']!r} ({marker['reason']}, pinned).")
                if self.preempted:
                    self.saved_on_stop = str(checkpoint)
                # Checksums in the background (training goes on), then the mirror copy, which carries them.
                self._checksums.submit(checkpoint, then=self.mirror.push_in_background if self.mirror else None)
                self._rotate(args, state)
            except IncompleteCheckpointError as error:
                logger.warning(f"ResumableCheckpointsCallback: {error}; it is not marked complete and a resume will "
                               "skip it.")
            except OSError as error:
                logger.warning(f"ResumableCheckpointsCallback: could not finish {checkpoint} ({error}).")
        barrier()  # no rank goes on (or exits) before the marker and the rotation are done

    def _metadata(self, args, state, request: SaveRequest | None, checkpoint: Path) -> dict:
        world_size = max(getattr(args, "world_size", 1), 1)
        metrics = {}
        for entry in state.log_history:  # every log of this step: train metrics and evaluation alike
            if entry.get("step") == state.global_step:
                metrics.update({k: v for k, v in entry.items() if isinstance(v, (int, float)) and k != "step"})
        if not metrics:  # not a logging step: the latest training log
            last = next((e for e in reversed(state.log_history) if "loss" in e or "reward" in e), {})
            metrics = {k: v for k, v in last.items() if isinstance(v, (int, float)) and k != "step"}
        reasons = list(request.reasons) if request else []
        if state.global_step >= state.max_steps > 0 and "final" not in reasons:
            reasons.append("final")
        reasons = reasons or ["interval"]
        metadata = {
            "step": state.global_step,
            "epoch": state.epoch,
            "reason": min(reasons, key=REASONS.index),
            "reasons": reasons,
            "world_size": world_size,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "total_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
            "metrics": metrics,
            # Training time up to this save over every segment (a resumed run's own train_runtime counts only its
            # last segment): the next segment continues from it.
            "train_runtime_so_far": self._runtime_before + time.time() - getattr(self, "_segment_start", time.time()),
            "segments": self._segments_before + 1,
        }
        # Saved again at the same step (a named save right after an interval save): keep its name and pin.
        previous = self._invalidated.get(checkpoint.name) or {}
        name = (request.name if request else None) or previous.get("name")
        if name:
            metadata["name"] = name
        if (request and request.pinned) or previous.get("pinned"):
            metadata["pinned"] = True
        if request:
            metadata.update(request.extra)
        return metadata

    def _rotate(self, args, state):
        checkpoints = list_checkpoints(args.output_dir)
        protected = set(self.protected) | pinned_names(checkpoints) | set(self._checksums.pending)
        if self.mirror is not None:
            protected |= set(self.mirror.pending)
        if state.best_model_checkpoint:
            protected.add(os.path.basename(os.path.normpath(state.best_model_checkpoint)))
        for info in self._deletions(checkpoints, protected):
            shutil.rmtree(info.path, ignore_errors=True)

    def _deletions(self, checkpoints: list, protected: set[str]) -> list:
        return checkpoints_to_delete(checkpoints, self.save_total_limit, protected)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The end-of-training summary: add the time of every segment (transformers' train_runtime is this call's).
        if logs and isinstance(logs.get("train_runtime"), (int, float)) and state.log_history \
                and state.log_history[-1].get("train_runtime") == logs["train_runtime"]:
            state.log_history[-1]["total_train_runtime"] = round(self._runtime_before + logs["train_runtime"], 4)
            state.log_history[-1]["train_segments"] = self._segments_before + 1

    # --- the end ----------------------------------------------------------------------------------------------------

    def on_train_end(self, args, state, control, **kwargs):
        if self._invalidated:
            self._restore_untouched_markers(args, state)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
        self._checksums.wait()
        if self.mirror is not None and args.should_save:
            if self.mirror.pending:
                print(f"Waiting for the checkpoint copies to {self.mirror.url} ...", flush=True)
            self.mirror.wait()
        if self.preempted or not args.should_save:
            return
        try:
            os.makedirs(args.output_dir, exist_ok=True)
            write_json_atomically(Path(args.output_dir) / TRAINING_COMPLETE, {
                "global_step": state.global_step, "max_steps": state.max_steps,
                "num_train_epochs": args.num_train_epochs, "finished_at": time.time(),
            })
        except OSError as error:
            logger.warning(f"ResumableCheckpointsCallback: could not write {TRAINING_COMPLETE} ({error}).")
