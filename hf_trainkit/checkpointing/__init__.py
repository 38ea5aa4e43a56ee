"""Finding, validating and rotating checkpoints; the data behind auto-resume.

`find_resume_checkpoint(output_dir)` is the entry point: the newest checkpoint that is complete, by step.
"""

from .discover import find_resume_checkpoint, list_checkpoints, read_training_complete
from .marker import read_marker, write_complete_marker
from ..metric_rules import default_mode, is_improvement
from .policy import best_checkpoints, validate_checkpoint_name
from .save_request import request_save
from .rotate import checkpoints_to_delete
from .validate import COMPLETE_MARKER, TRAINING_COMPLETE, CheckpointInfo, inspect_checkpoint


__all__ = [
    "COMPLETE_MARKER",
    "TRAINING_COMPLETE",
    "CheckpointInfo",
    "checkpoints_to_delete",
    "find_resume_checkpoint",
    "inspect_checkpoint",
    "list_checkpoints",
    "read_training_complete",
    "write_complete_marker",
    "best_checkpoints",
    "default_mode",
    "is_improvement",
    "read_marker",
    "request_save",
    "validate_checkpoint_name",
]
