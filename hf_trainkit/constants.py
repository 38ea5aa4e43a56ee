"""File and folder names shared by the training side and the monitor (stdlib only: the monitor imports it)."""

import re


TRAINER_STATE_NAME = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME, without importing torch
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "hf_trainkit_complete.json"
TRAINING_COMPLETE = "training_complete.json"
STALE_MARKER = "hf_trainkit_complete.stale.json"  # a marker taken away while its checkpoint is saved again
UNLOADABLE_MARKER = "hf_trainkit_unloadable.json"  # a checkpoint whose load failed at a resume: skipped after
