"""The completion marker: written last, after every rank finished its part of a save."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .background import BackgroundWorker
from .integrity import CHECKSUM_ALGORITHM, checksums, required_files
from .validate import COMPLETE_MARKER, STALE_MARKER, UNLOADABLE_MARKER


def write_json_atomically(path: Path, data: dict, durable: bool = True):
    """Write to a temporary file and rename it over `path`: a reader sees the old file or the new one, never half.

    `durable=False` skips the fsync, for files rewritten often whose loss in a power cut costs nothing (a status).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


class IncompleteCheckpointError(RuntimeError):
    """A save that did not write every file a resume needs: no completion marker is written for it."""


def write_complete_marker(checkpoint: str | os.PathLike, metadata: dict, *, world_size: int = 1,
                          save_only_model: bool = False, needs_config: bool = True, checksum: bool = True,
                          ranks: list[int] | None = None) -> dict:
    """List every file of `checkpoint` with its size and checksum, check that the files a resume needs are there
    (see `integrity.required_files`), add `metadata`, and write the marker last. `ranks`: the ranks whose files
    this folder holds, when it is one node's part of the checkpoint (a disk per node).

    Raises:
        IncompleteCheckpointError: a needed file is missing; the checkpoint stays without a marker (invalid).
    """
    root = Path(checkpoint)
    files = {
        f.relative_to(root).as_posix(): f.stat().st_size
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name != COMPLETE_MARKER and not f.name.startswith(f".{COMPLETE_MARKER}")
        and f.name != STALE_MARKER
    }
    required, missing = required_files(root, set(files), world_size=world_size, save_only_model=save_only_model,
                                       needs_config=needs_config, ranks=ranks)
    if missing:
        raise IncompleteCheckpointError(f"{root.name} lacks {', '.join(missing)}")
    marker = {"format": 2, "written_at": time.time(), **metadata, "required": required, "files": files}
    if checksum:
        marker["checksum_algorithm"] = CHECKSUM_ALGORITHM
        marker["checksums"] = checksums(root, list(files))
    write_json_atomically(root / COMPLETE_MARKER, marker)
    return marker


def write_deepspeed_latest(checkpoint: str | os.PathLike) -> bool:
    """Write DeepSpeed's `latest` (the tag of the one `global_step*` folder) where it is missing: DeepSpeed writes it
    on the global rank 0 only, and a node with its own disk cannot load its shards without it. Whether written."""
    root = Path(checkpoint)
    tags = [p.name for p in root.glob("global_step*") if p.is_dir()]
    if (root / "latest").exists() or len(tags) != 1:
        return False
    (root / "latest").write_text(tags[0])
    return True


def invalidate_marker(checkpoint: str | os.PathLike) -> dict:
    """Take the completion marker of `checkpoint` out of the way before its files are written again, so that a
    kill in the middle never leaves a "complete" mix of two saves. Returns the old marker ({} if none); it is kept
    as `hf_trainkit_complete.stale.json` for the record."""
    root = Path(checkpoint)
    previous = read_marker(root)
    try:
        os.replace(root / COMPLETE_MARKER, root / STALE_MARKER)
    except FileNotFoundError:
        pass
    return previous


def mark_unloadable(path: str | os.PathLike, error: str):
    """Record in the checkpoint that loading it failed, so the next resume skips it at once (nothing is deleted)."""
    try:
        (Path(path) / UNLOADABLE_MARKER).write_text(json.dumps({"error": error, "at": time.time()}))
    except OSError:
        pass


def read_marker(checkpoint: str | os.PathLike) -> dict:
    """The completion marker of `checkpoint`, or {} when it has none (or an unreadable or malformed one)."""
    try:
        marker = json.loads((Path(checkpoint) / COMPLETE_MARKER).read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return marker if isinstance(marker, dict) else {}


def add_checksums(checkpoint: str | os.PathLike) -> bool:
    """Hash every file the marker of `checkpoint` lists and write the marker again with the checksums. False (and
    nothing written) when the marker changed meanwhile or a file is gone or has another size: a checkpoint being
    rotated away or saved again is left as it is."""
    root = Path(checkpoint)
    marker = read_marker(root)
    files = marker.get("files")
    if not isinstance(files, dict) or "checksums" in marker:
        return False
    try:
        digests = checksums(root, list(files))
        if any((root / name).stat().st_size != size for name, size in files.items()):
            return False
    except OSError:
        return False
    if read_marker(root).get("written_at") != marker.get("written_at"):
        return False
    write_json_atomically(root / COMPLETE_MARKER, {**marker, "checksum_algorithm": CHECKSUM_ALGORITHM,
                                                   "checksums": digests})
    return True


class BackgroundChecksums(BackgroundWorker):
    """Adds the checksums to each new marker in a worker thread, so a save costs training only the size listing.

    A checkpoint is resumable (complete by sizes) as soon as its marker exists; its checksums follow about 0.1 s
    per GB later (`benchmarks/checkpoint_checksum.py`). `submit(checkpoint, then=push)` runs `then` after, in the
    same thread (the mirror push: the copy carries the checksums). `wait()` at the end of training.
    """

    def __init__(self):
        super().__init__(add_checksums, _warn_checksums_failed, name="checkpoint-checksums")


def _warn_checksums_failed(checkpoint: Path, error: Exception):
    from transformers.utils import logging

    logging.get_logger(__name__).warning(f"Could not add checksums to {checkpoint} ({error}).")
