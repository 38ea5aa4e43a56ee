"""The completion marker: written last, after every rank finished its part of a save."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .validate import COMPLETE_MARKER


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


def write_complete_marker(checkpoint: str | os.PathLike, metadata: dict) -> dict:
    """List every file of `checkpoint` with its size, add `metadata`, and write the marker last."""
    root = Path(checkpoint)
    files = {
        str(f.relative_to(root)): f.stat().st_size
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name != COMPLETE_MARKER and not f.name.startswith(f".{COMPLETE_MARKER}")
    }
    marker = {"format": 1, "written_at": time.time(), **metadata, "files": files}
    write_json_atomically(root / COMPLETE_MARKER, marker)
    return marker


def read_marker(checkpoint: str | os.PathLike) -> dict:
    """The completion marker of `checkpoint`, or {} when it has none (or an unreadable one)."""
    try:
        marker = json.loads((Path(checkpoint) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}
