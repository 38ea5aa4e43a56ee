"""Is a checkpoint complete? Checks that read files, never write or delete."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import CHECKPOINT_PATTERN, COMPLETE_MARKER, TRAINER_STATE_NAME, TRAINING_COMPLETE  # noqa: F401


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
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
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
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


def _check_manifest(path: Path, marker: dict) -> str:
    for relative, size in marker.get("files", {}).items():
        file = path / relative
        if not file.is_file():
            return f"{relative} is missing (listed in {COMPLETE_MARKER})"
        actual = file.stat().st_size
        if actual != size:
            return f"{relative} is {actual} bytes, {COMPLETE_MARKER} says {size}"
    return ""


def inspect_checkpoint(path: str | os.PathLike, compute_size: bool = False) -> CheckpointInfo:
    """Read a checkpoint folder and decide whether training can resume from it.

    Valid means complete: with our completion marker, every file it lists is there with its size; without one
    (a checkpoint from plain transformers), `trainer_state.json` parses and the weights, optimizer, scheduler and
    RNG files exist and are not truncated.
    """
    path = Path(path)
    match = CHECKPOINT_PATTERN.match(path.name)
    name_step = int(match.group(1)) if match else None
    info = CheckpointInfo(path=path, step=name_step, valid=False)
    if not match:
        info.reason = "not a checkpoint-<step> folder"
        return info
    if not path.is_dir():
        info.reason = "not a directory"
        return info
    if compute_size:
        try:
            info.size_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        except OSError:
            pass
    state_file = path / TRAINER_STATE_NAME
    if not state_file.is_file():
        info.reason = f"{TRAINER_STATE_NAME} is missing"
        return info
    try:
        state = json.loads(state_file.read_text())
        info.step = int(state["global_step"])
    except (ValueError, KeyError, TypeError):
        info.reason = f"{TRAINER_STATE_NAME} is unreadable"
        return info
    if info.step != name_step:
        info.reason = f"{TRAINER_STATE_NAME} says step {info.step}, the folder name says {name_step}"
        return info
    history = [e for e in state.get("log_history", []) if isinstance(e, dict)]
    if history:
        info.metrics = {k: v for k, v in history[-1].items() if isinstance(v, (int, float)) and k != "step"}
    marker_file = path / COMPLETE_MARKER
    if marker_file.is_file():
        try:
            info.marker = json.loads(marker_file.read_text())
        except ValueError:
            info.reason = f"{COMPLETE_MARKER} is unreadable"
            return info
        info.metrics = info.marker.get("metrics") or info.metrics
        info.reason = _check_manifest(path, info.marker)
    else:
        info.reason = _check_without_marker(path)
    info.valid = not info.reason
    return info
