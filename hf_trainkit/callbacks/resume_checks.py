"""What a resumed (or restarted) run checks at its first step, before anything is saved."""

from __future__ import annotations

import json
import os

from transformers import TrainerCallback
from transformers.utils import logging

from ..checkpointing.save_request import saving_enabled
from ..checkpointing.set_aside import set_aside_checkpoints
from ..constants import COMPLETE_MARKER, TRAINING_COMPLETE, checkpoint_dir
from ..distributed import barrier


logger = logging.get_logger(__name__)


def batch_change_message(args, state) -> str | None:
    """A warning when the run resumes with another total batch size than its checkpoint was trained with."""
    marker_file = checkpoint_dir(args.output_dir, state.global_step) / COMPLETE_MARKER
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


class ResumeChecksCallback(TrainerCallback):
    """At the first step of a run (where the Trainer has loaded a checkpoint's state, if any):

    - a fresh start or a resume from an older checkpoint moves the checkpoints newer than the starting step
      (another timeline, or damaged saves) into `OUTPUT_DIR/superseded/<time>/`, on the mirror too: nothing is
      lost, and a save never overwrites files of another run piece by piece; every rank waits for it;
    - a run copied from another machine gets its `best_model_checkpoint` pointed at the local folder;
    - a resume with another total batch size warns that the data position moves.
    """

    def __init__(self, mirror=None):
        self.mirror = mirror
        self._checked = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._checked = False

    def on_step_begin(self, args, state, control, **kwargs):
        if self._checked:
            return
        self._checked = True
        if args.should_save and saving_enabled(args):  # each node's own disk, with save_on_each_node
            self._set_aside_other_timelines(args, state)
        barrier()  # no rank saves before the folders are out of the way
        if state.global_step > 0:
            self._remap_best_checkpoint(args, state)
            if state.is_world_process_zero:
                message = batch_change_message(args, state)
                if message:
                    logger.warning(message)

    def _remap_best_checkpoint(self, args, state):
        # A run copied from another machine carries absolute paths that point nowhere here.
        best = state.best_model_checkpoint
        if best and not os.path.isdir(best):
            local = os.path.join(args.output_dir, os.path.basename(os.path.normpath(best)))
            if os.path.isdir(local):
                state.best_model_checkpoint = local

    def _set_aside_other_timelines(self, args, state):
        try:
            moved = set_aside_checkpoints(args.output_dir, after_step=state.global_step,
                                          include_training_complete=state.global_step == 0)
        except OSError as error:
            logger.warning(f"ResumeChecksCallback: could not move older runs' checkpoints aside ({error}); saves at "
                           "their steps will replace them.")
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
