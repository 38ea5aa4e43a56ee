"""Every file and folder name the package reads or writes in a run's output dir, in one place (stdlib only: the
monitor imports it on machines without the training stack)."""

from __future__ import annotations

import os
import re
from pathlib import Path


# --- checkpoints -----------------------------------------------------------------------------------------------------
CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_NAME = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME, without importing torch
COMPLETE_MARKER = "hf_trainkit_complete.json"
STALE_MARKER = "hf_trainkit_complete.stale.json"  # a marker taken away while its checkpoint is saved again
# Written first into a checkpoint saved in the background (--async-save), taken away just before its marker: until
# then the folder is incomplete, whatever files it already holds (DeepSpeed's `latest` is written before the shards).
WRITING_MARKER = "hf_trainkit_writing.json"
UNLOADABLE_MARKER = "hf_trainkit_unloadable.json"  # a checkpoint whose load failed at a resume: skipped after
SUPERSEDED_DIR = "superseded"  # checkpoints of another timeline, moved aside (never deleted)

# --- the run ---------------------------------------------------------------------------------------------------------
TRAINING_COMPLETE = "training_complete.json"
RUN_RECORD = "hf_trainkit_run.json"  # what a run was trained from: base model, task, generation settings (for eval)
BASE_MODEL_DIR = "base_model"  # the built-in toy base model of a run, saved so that eval measures the same base
TOY_BASE_RECIPE = "hf_trainkit_toy_base.json"  # inside BASE_MODEL_DIR: how that base was built
LOG_FILE = os.path.join("logs", "train.log")  # the console of every segment of the run
# The live record of every log (LiveLogCallback): one JSON object per line, plus the wall-clock time of each.
LIVE_LOG_FILE = "logs/log_history.jsonl"
TIME_KEY = "_time"  # the key of that time in each line
IMAGE_DIR = "img"  # end-of-training curves
LOSS_CURVE, REWARD_CURVE = "loss_curve.png", "reward_curve.png"
STATS_FILE = "training_stats.json"
WANDB_RUN_ID_FILE = "wandb_run_id.txt"  # the W&B run a resumed segment continues
EVAL_RESULTS = "eval_results.json"  # written by `hf-trainkit eval`

# --- live control ----------------------------------------------------------------------------------------------------
CONTROL_DIR = "control"
REQUESTS_DIR, RESPONSES_DIR, REJECTED_DIR = "requests", "responses", "rejected"  # inside CONTROL_DIR
STATUS_FILE = "status.json"  # inside CONTROL_DIR
TOKEN_FILE = "control_token"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}-{step}"


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """`OUTPUT_DIR/checkpoint-STEP`, the folder the Trainer saves step STEP into."""
    return Path(output_dir) / checkpoint_name(step)
