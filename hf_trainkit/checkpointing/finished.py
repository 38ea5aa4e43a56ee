"""The record of a finished run, `training_complete.json`: written last, once the final `trainer_state.json`, config
and weights are at the top of the output dir, listing them with their sizes and checksums. A re-run believes it only
after checking them; when they are missing or damaged it finishes the job from the checkpoints instead."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..constants import (COMPLETE_MARKER, STALE_MARKER, TRAINER_STATE_NAME, TRAINING_COMPLETE, UNLOADABLE_MARKER)
from .integrity import CHECKSUM_ALGORITHM, WEIGHT_FILES, WEIGHT_INDEXES, checksums, file_checksum
from .marker import write_json_atomically
from .validate import _file_complete, state_problem


CONFIG_FILES = ("config.json", "adapter_config.json")
# What a checkpoint holds only to resume training: not part of the final model at the top of the output dir.
_TRAINING_ONLY = {TRAINER_STATE_NAME, "optimizer.pt", "scheduler.pt", "scaler.pt", "latest", "zero_to_fp32.py",
                  COMPLETE_MARKER, STALE_MARKER, UNLOADABLE_MARKER}


def _weight_files(root: Path, present: set[str]) -> list[str]:
    names = [name for name in WEIGHT_FILES if name in present]
    for index in (name for name in WEIGHT_INDEXES if name in present):
        names.append(index)
        try:
            names += sorted(set(json.loads((root / index).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # an unreadable index: listed, and found wanting when checked
    return names


def final_files(output_dir: str | os.PathLike) -> list[str]:
    """The top-level files of a finished run that the record vouches for: `trainer_state.json`, the weights (or
    adapter, or a sharded index and its shards) and their config."""
    root = Path(output_dir)
    present = {p.name for p in root.iterdir() if p.is_file()}
    names = [TRAINER_STATE_NAME] if TRAINER_STATE_NAME in present else []
    names += _weight_files(root, present)
    names += [name for name in CONFIG_FILES if name in present]
    return list(dict.fromkeys(name for name in names if (root / name).is_file()))


def write_training_complete(output_dir: str | os.PathLike, fields: dict, vouch: bool = True) -> dict:
    """Write `training_complete.json` atomically, last. With `vouch`, it lists the final files (size and checksum),
    which are flushed to disk first, so the record never exists before what it vouches for."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    record = {**fields, "finished_at": time.time()}
    if vouch:
        names = final_files(root)
        for name in names:
            with open(root / name, "rb") as handle:
                os.fsync(handle.fileno())
        record.update({"files": {name: (root / name).stat().st_size for name in names},
                       "checksum_algorithm": CHECKSUM_ALGORITHM, "checksums": checksums(root, names)})
    write_json_atomically(root / TRAINING_COMPLETE, record)
    return record


def _state_problem(path: Path, final_step) -> str:
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as error:
        return f"{TRAINER_STATE_NAME} cannot be read ({type(error).__name__})"
    problem = state_problem(state)
    if problem:
        return problem
    if isinstance(final_step, int) and state["global_step"] != final_step:
        return f"{TRAINER_STATE_NAME} is at step {state['global_step']}, not {final_step}"
    return ""


def final_outputs_problem(output_dir: str | os.PathLike, record: dict) -> str:
    """'' if what `record` (a parsed `training_complete.json`) vouches for is there and intact, else what is wrong.

    A record that lists its files: each is there with its size, is complete by its own format, and matches its
    checksum. An older record (written before it listed them): `trainer_state.json` and the final weights (with
    their config) are there and complete. Either way `trainer_state.json` parses and is at the record's step.
    """
    root = Path(output_dir)
    files = record.get("files")
    try:
        if files is None:
            present = {p.name for p in root.iterdir() if p.is_file()}
            weights = _weight_files(root, present)
            if not weights:
                return "the final weights (model.safetensors, pytorch_model.bin or an adapter) are missing"
            if TRAINER_STATE_NAME not in present:
                return f"{TRAINER_STATE_NAME} is missing"
            if any(name.startswith("model") or name.startswith("pytorch_model") for name in weights) \
                    and "config.json" not in present:
                return "config.json is missing"
            files = {name: None for name in [TRAINER_STATE_NAME, *weights]}
            digests = {}
        else:
            digests = record.get("checksums") or {}
            if not isinstance(files, dict) or not isinstance(digests, dict) or not all(
                    isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")
                    and isinstance(size, int) for name, size in files.items()):
                return f"{TRAINING_COMPLETE} lists its files in a form it cannot have been written in"
        for name, size in files.items():
            path = root / name
            if not path.is_file():
                return f"{name} is missing"
            if size is not None and path.stat().st_size != size:
                return f"{name} is {path.stat().st_size} bytes, {TRAINING_COMPLETE} says {size}"
            problem = _file_complete(path)
            if problem:
                return problem
        for name, digest in sorted(digests.items()):
            if name in files and file_checksum(root / name) != digest:
                return f"{name} does not match its checksum (changed after the run finished)"
        if TRAINER_STATE_NAME in files:
            return _state_problem(root / TRAINER_STATE_NAME, record.get("global_step"))
    except OSError as error:
        return f"its files cannot be read ({error.strerror or error})"
    return ""


def finish_from_checkpoint(output_dir: str | os.PathLike, checkpoint: str | os.PathLike) -> list[str] | None:
    """Write the final model of a run from the checkpoint of its last step: its weights, config and tokenizer files
    (each copied to a temporary name and renamed into place), and its `trainer_state.json` unless the output dir
    already holds a valid one of that step. The names written, or None when the checkpoint has no weights of its
    own to copy (DeepSpeed's sharded states: the caller resumes from it instead)."""
    source, root = Path(checkpoint), Path(output_dir)
    names = sorted(p.name for p in source.iterdir() if p.is_file() and p.name not in _TRAINING_ONLY
                   and not (p.name.startswith("rng_state") and p.name.endswith(".pth")))
    if not _weight_files(source, set(names)):
        return None
    try:
        step = json.loads((source / TRAINER_STATE_NAME).read_bytes())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        step = None
    if _state_problem(root / TRAINER_STATE_NAME, step):
        names.append(TRAINER_STATE_NAME)
    for name in names:
        temporary = root / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(source / name, temporary)
        os.replace(temporary, root / name)
    return names


def weights_load_problem(checkpoint: str | os.PathLike) -> str:
    """Why the full-model weights of `checkpoint` do not load into the model its config describes ("" when they
    do, or when there are none of their own: an adapter, DeepSpeed shards). Sizes and checksums cannot tell weights
    whose shapes do not fit the model; a resume finds out at its load, and writing them as a run's final weights
    must find out before."""
    source = Path(checkpoint)
    if not any((source / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                      "pytorch_model.bin")):
        return ""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        config = AutoConfig.from_pretrained(str(source))
        model_class = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None \
            else AutoModelForCausalLM
        model_class.from_pretrained(str(source))
    except Exception as error:  # transformers raises many types for weights that do not fit
        text = str(error).strip()
        return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"
    return ""
