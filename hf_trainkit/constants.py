"""File and folder names shared by the training side and the monitor (stdlib only: the monitor imports it)."""

import re


TRAINER_STATE_NAME = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME, without importing torch
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "hf_trainkit_complete.json"
TRAINING_COMPLETE = "training_complete.json"
STALE_MARKER = "hf_trainkit_complete.stale.json"  # a marker taken away while its checkpoint is saved again
UNLOADABLE_MARKER = "hf_trainkit_unloadable.json"  # a checkpoint whose load failed at a resume: skipped after
RUN_RECORD = "hf_trainkit_run.json"  # what a run was trained from: base model, task, generation settings (for eval)
BASE_MODEL_DIR = "base_model"  # the built-in toy base model of a run, saved so that eval measures the same base
EVAL_RESULTS = "eval_results.json"  # written by `hf-trainkit eval`
