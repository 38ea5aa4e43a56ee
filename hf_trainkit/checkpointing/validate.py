"""Is a checkpoint complete? Checks that read files, never write or delete."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import (CHECKPOINT_PATTERN, COMPLETE_MARKER, STALE_MARKER, TRAINER_STATE_NAME,  # noqa: F401
                         TRAINING_COMPLETE, UNLOADABLE_MARKER, WRITING_MARKER)


from .integrity import WEIGHT_FILES, WEIGHT_INDEXES  # noqa: E402
TORCH_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")


@dataclass
class CheckpointInfo:
    """What `inspect_checkpoint` found: the step, whether it is complete, and why not."""

    path: Path
    step: int | None
    valid: bool
    reason: str = ""
    marker: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    size_bytes: int = 0

    @property
    def name(self) -> str:
        return self.path.name


def _safetensors_complete(path: Path) -> str:
    """'' if the file holds every byte its header promises, else why not."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated ({size} bytes)"
        (header_length,) = struct.unpack("<Q", head)
        if 8 + header_length > size:
            return f"{path.name} is truncated (header says {header_length} bytes, file has {size})"
        try:
            header = json.loads(handle.read(header_length))
        except ValueError:
            return f"{path.name} has an unreadable header"
    if not isinstance(header, dict):
        return f"{path.name} has an unreadable header"
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        return f"{path.name} has an unreadable header"
    if 8 + header_length + end > size:
        return f"{path.name} is truncated ({size} of {8 + header_length + end} bytes)"
    return ""


def _torch_file_complete(path: Path) -> str:
    # torch.save writes a zip archive; its central directory is written last, so a cut file has none.
    if not zipfile.is_zipfile(path):
        return f"{path.name} is truncated or not a torch file"
    return ""


def _file_complete(path: Path) -> str:
    if path.suffix == ".safetensors":
        return _safetensors_complete(path)
    if path.suffix in (".pt", ".pth", ".bin"):
        return _torch_file_complete(path)
    return ""


def _check_without_marker(path: Path) -> str:
    """Checks for a checkpoint written by plain transformers (no completion marker)."""
    deepspeed_latest = path / "latest"
    if deepspeed_latest.is_file():
        tag = deepspeed_latest.read_text().strip()
        if not tag or not (path / tag).is_dir() or not any((path / tag).iterdir()):
            return f"DeepSpeed 'latest' names {tag!r}, which is missing or empty"
    else:
        for name in TORCH_FILES[:2]:
            if not (path / name).is_file():
                return f"{name} is missing"
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    for index_name in WEIGHT_INDEXES:
        index = path / index_name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (ValueError, KeyError):
                return f"{index_name} is unreadable"
            missing = [s for s in sorted(shards) if not (path / s).is_file()]
            if missing:
                return f"weight shard {missing[0]} is missing"
            weights += [path / s for s in sorted(shards)]
    if not weights and not deepspeed_latest.is_file():
        return "no model weights"
    for file in [*weights, *(path / n for n in TORCH_FILES), *path.glob("rng_state*.pth")]:
        if file.is_file():
            problem = _file_complete(file)
            if problem:
                return problem
    return ""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number_or_none(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def state_problem(state) -> str:
    """'' if a parsed `trainer_state.json` has the types a resume relies on, else what is wrong."""
    if not isinstance(state, dict):
        return f"{TRAINER_STATE_NAME} holds a {type(state).__name__}, not an object"
    if not _is_int(state.get("global_step")) or state["global_step"] < 0:
        return f"{TRAINER_STATE_NAME}: global_step is {str(state.get('global_step'))[:40]!r}, not a step number"
    history = state.get("log_history", [])
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        return f"{TRAINER_STATE_NAME}: log_history is not a list of objects"
    for key in ("max_steps", "num_train_epochs", "logging_steps", "save_steps", "train_batch_size"):
        if key in state and state[key] is not None and not _is_int(state[key]):
            return f"{TRAINER_STATE_NAME}: {key} is {str(state[key])[:40]!r}, not an integer"
    for key in ("epoch", "best_metric", "total_flos"):
        if not _is_number_or_none(state.get(key)):
            return f"{TRAINER_STATE_NAME}: {key} is {str(state[key])[:40]!r}, not a number"
    if not isinstance(state.get("best_model_checkpoint"), (str, type(None))):
        return f"{TRAINER_STATE_NAME}: best_model_checkpoint is not a path"
    if not isinstance(state.get("stateful_callbacks", {}), (dict, type(None))):
        return f"{TRAINER_STATE_NAME}: stateful_callbacks is not an object"
    return ""


def _unknown_state_fields(state: dict) -> str:
    """'' if `TrainerState(**state)` (what transformers' resume does) accepts every key."""
    import dataclasses

    from transformers import TrainerState

    known = {f.name for f in dataclasses.fields(TrainerState)}
    unknown = sorted(set(state) - known)
    return f"{TRAINER_STATE_NAME} has fields transformers does not know: {', '.join(unknown)[:120]}" if unknown else ""


def marker_problem(marker) -> str:
    """'' if a parsed completion marker has the shape validation reads, else what is wrong."""
    if not isinstance(marker, dict):
        return f"{COMPLETE_MARKER} holds a {type(marker).__name__}, not an object"
    files = marker.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and _is_int(v) for k, v in files.items()):
        return f"{COMPLETE_MARKER}: 'files' is not a map of file names to sizes"
    for relative in files:
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or ".." in parts:
            return f"{COMPLETE_MARKER}: file name {relative[:80]!r} points outside the checkpoint"
    if not isinstance(marker.get("checksums", {}), dict) or not isinstance(marker.get("required", []), list):
        return f"{COMPLETE_MARKER}: 'checksums' or 'required' is malformed"
    if not isinstance(marker.get("metrics", {}), (dict, type(None))):
        return f"{COMPLETE_MARKER}: 'metrics' is not an object"
    return ""


def _check_manifest(path: Path, marker: dict, verify: bool) -> str:
    files = marker["files"]
    required = marker.get("required")
    if required is None:  # markers written before `required` existed: at least the weights
        required = [] if any(n in files for n in (*WEIGHT_FILES, *WEIGHT_INDEXES)) or "latest" in files \
            else ["model weights"]
    for name in required:
        if name not in files:
            return f"{name} is missing (the save needs it; {COMPLETE_MARKER} does not list it)"
    for relative, size in files.items():
        file = path / relative
        if not file.is_file():
            return f"{relative} is missing (listed in {COMPLETE_MARKER})"
        actual = file.stat().st_size
        if actual != size:
            return f"{relative} is {actual} bytes, {COMPLETE_MARKER} says {size}"
    if verify:
        from .integrity import file_checksum

        for relative, expected in sorted(marker.get("checksums", {}).items()):
            if relative in files and file_checksum(path / relative) != expected:
                return f"{relative} does not match its checksum (changed after the save: corrupted)"
    return ""


def inspect_checkpoint(path: str | os.PathLike, compute_size: bool = False, verify: bool = False) -> CheckpointInfo:
    """Read a checkpoint folder and decide whether training can resume from it; never raises for what is on disk.

    Valid means complete: with our completion marker, every file it lists is there with its size, and the files a
    resume needs are among them; without one (a checkpoint from plain transformers), `trainer_state.json` parses
    and the weights, optimizer, scheduler and RNG files exist and are not truncated.

    `verify=True` also reads every byte: the checksums the marker recorded, and a load of the torch pickles (what a
    resume is about to do anyway). Listing and rotation leave it off; choosing the checkpoint to resume from turns
    it on.
    """
    path = Path(path)
    match = CHECKPOINT_PATTERN.match(path.name)
    name_step = int(match.group(1)) if match else None
    info = CheckpointInfo(path=path, step=name_step, valid=False)
    try:
        info.reason = _inspect(path, match, info, compute_size, verify)
    except RecursionError:
        info.reason = "a JSON file is nested too deeply to read"
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, struct.error) as error:
        info.reason = f"a file has an unexpected shape ({type(error).__name__}: {str(error)[:120]})"
    except OSError as error:  # permission denied, a directory where a file should be, a vanished file ...
        where = Path(error.filename).name if getattr(error, "filename", None) else path.name
        info.reason = f"cannot read {where} ({error.strerror or error})"
    info.valid = not info.reason
    return info


def _inspect(path: Path, match, info: CheckpointInfo, compute_size: bool, verify: bool) -> str:
    if not match:
        return "not a checkpoint-<step> folder"
    if not path.is_dir():
        return "not a directory"
    if compute_size:
        try:
            info.size_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        except OSError:
            pass
    if (path / UNLOADABLE_MARKER).exists():
        try:
            why = json.loads((path / UNLOADABLE_MARKER).read_bytes()).get("error", "")
        except (OSError, ValueError, AttributeError, RecursionError):
            why = ""
        return f"a resume could not load it{f' ({str(why)[:160]})' if why else ''}"
    state_file = path / TRAINER_STATE_NAME
    if not state_file.is_file():
        return f"{TRAINER_STATE_NAME} is missing"
    try:
        state = json.loads(state_file.read_bytes())
    except ValueError:  # also UnicodeDecodeError
        return f"{TRAINER_STATE_NAME} is unreadable (not JSON)"
    problem = state_problem(state)
    if problem:
        return problem
    if state["global_step"] != info.step:
        return f"{TRAINER_STATE_NAME} says step {state['global_step']}, the folder name says {info.step}"
    history = state.get("log_history") or []
    if history:
        info.metrics = {k: v for k, v in history[-1].items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
    marker_file = path / COMPLETE_MARKER
    if marker_file.exists():
        if not marker_file.is_file():
            return f"{COMPLETE_MARKER} is not a regular file"
        try:
            marker = json.loads(marker_file.read_bytes())
        except ValueError:
            return f"{COMPLETE_MARKER} is unreadable"
        problem = marker_problem(marker)
        if problem:
            return problem
        info.marker = marker
        if isinstance(marker.get("metrics"), dict) and marker["metrics"]:
            info.metrics = marker["metrics"]
        problem = _check_manifest(path, marker, verify)
    elif (path / STALE_MARKER).exists():
        return "being saved again (its earlier marker was taken away first): incomplete"
    elif (path / WRITING_MARKER).exists():
        return "being written in the background (--async-save), or cut short while it was: incomplete"
    else:
        problem = _check_without_marker(path)
    if not problem and verify:
        from .integrity import load_problem

        problem = _unknown_state_fields(state) or next(
            filter(None, map(_safetensors_complete, sorted(path.glob("*.safetensors")))), "") or load_problem(path)
    return problem

