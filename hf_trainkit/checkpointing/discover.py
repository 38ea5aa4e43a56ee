"""Finding checkpoints in an output dir, ordered by step (never by mtime), and the one to resume from."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers.utils import logging

from .validate import CHECKPOINT_PATTERN, TRAINING_COMPLETE, CheckpointInfo, inspect_checkpoint


logger = logging.get_logger(__name__)


def _candidates(root: Path) -> list[tuple[int, Path]]:
    """`checkpoint-<step>` folders by step (the number, which `inspect_checkpoint` checks against
    `trainer_state.json`; never the mtime), oldest first."""
    found = []
    try:
        children = list(root.iterdir())
    except OSError as error:
        logger.warning(f"Cannot list {root} ({error.strerror or error}).")
        return []
    for child in children:
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def list_checkpoints(output_dir: str | os.PathLike, include_strays: bool = False,
                     compute_size: bool = False, verify: bool = False) -> list[CheckpointInfo]:
    """Every `checkpoint-<step>` folder of `output_dir`, inspected, oldest step first.

    Stray folders that look like checkpoints but are not `checkpoint-<step>` (`checkpoint-final`,
    `tmp-checkpoint-12`) are included, as invalid, only with `include_strays=True`. `verify=True` reads every
    byte of every checkpoint (checksums, loadable pickles): see `inspect_checkpoint`.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    infos = [inspect_checkpoint(path, compute_size, verify) for _, path in _candidates(root)]
    if include_strays:
        infos += [inspect_checkpoint(child, compute_size) for child in sorted(root.iterdir())
                  if child.is_dir() and "checkpoint" in child.name and not CHECKPOINT_PATTERN.match(child.name)]
    return infos


def find_resume_checkpoint(output_dir: str | os.PathLike, *, warn: bool = True, verify: bool = True,
                           steps=None) -> str | None:
    """Path of the newest *valid* checkpoint in `output_dir` (by step, never by mtime), or None.

    Inspects from the newest down and stops at the first valid one, so a dir with thousands of checkpoints costs
    a few file reads plus, with `verify` (the default), one read of the chosen checkpoint's bytes: the checksums
    its marker recorded and a load of its torch pickles, so a checkpoint corrupted after its save (or one that
    cannot be loaded) is skipped like an incomplete one. Invalid checkpoints newer than it are skipped with a
    one-line warning saying why. Nothing is deleted. `steps` limits the choice to those steps (the ones complete on
    every node, with a disk per node).
    """
    root = Path(output_dir)
    if not root.is_dir():
        return None
    for step, path in reversed(_candidates(root)):
        if steps is not None and step not in steps:
            continue
        info = inspect_checkpoint(path, verify=verify)
        if info.valid:
            return str(info.path)
        if warn:
            logger.warning(f"Skipping {info.path}: {info.reason}.")
    return None


def read_training_complete(output_dir: str | os.PathLike) -> dict | None:
    """The record `CheckpointManagerCallback` writes when training ran to its end, or None."""
    path = Path(output_dir) / TRAINING_COMPLETE
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def checkpoint_names(run_dir: str | os.PathLike) -> dict[str, str]:
    """name -> checkpoint folder, for the named checkpoints of `run_dir`."""
    return {info.marker["name"]: info.name for info in list_checkpoints(run_dir) if info.marker.get("name")}


def checkpoint_table(run_dir: str | os.PathLike) -> list[dict]:
    """The checkpoints of `run_dir` as plain data (for `status` and `GET /checkpoints`)."""
    return [{"step": i.step, "checkpoint": i.name, "name": i.marker.get("name"), "reason": i.marker.get("reason"),
             "pinned": bool(i.marker.get("pinned")), "metrics": i.metrics, "valid": i.valid,
             "why_not": i.reason or None} for i in list_checkpoints(run_dir)]
