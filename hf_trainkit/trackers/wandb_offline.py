"""W&B run files (`wandb/offline-run-*/run-<id>.wandb`, also kept for synced runs) -> rows.

wandb 0.31 no longer ships a reader of its own files, but it ships the `Record` protobuf they hold. The framing is
LevelDB's log format (see shared/notes/wandb-offline.md): a 7-byte file header (`:W&B`, a 2-byte magic, a version
byte), then 32 KiB blocks of records, each with a 7-byte header (CRC32 4 bytes, length 2 bytes little-endian, type 1
byte: 1 full, 2 first, 3 middle, 4 last) and never straddling the last 6 bytes of a block.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

from .errors import TrackerInputError, missing_extra

BLOCK = 32 * 1024
FILE_HEADER = 7
RECORD_HEADER = 7
RUN_FILE_PATTERN = re.compile(r"^run-(?P<id>[A-Za-z0-9_-]+)\.wandb$")
RUN_DIR_PATTERN = re.compile(r"^(offline-)?run-\d{8}_\d{6}-(?P<id>[A-Za-z0-9_-]+)$")
_HEADER = struct.Struct("<IHB")


def run_files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if RUN_FILE_PATTERN.match(p.name) and p.is_file())
    except OSError:
        return []


def run_segments(directory: Path) -> list[list[Path]] | None:
    """The W&B runs under a folder (itself a run dir, a `wandb/` dir, or an output dir holding `wandb/`), each a
    list of run files oldest first: the dirs of one run id are the segments of one run (a resumed run starts a new
    dir). None when there is none."""
    if run_files(directory):
        return [run_files(directory)]
    by_id: dict[str, list[Path]] = {}
    for place in (directory, directory / "wandb"):
        try:
            children = sorted(c for c in place.iterdir() if c.is_dir() and not c.is_symlink())
        except OSError:
            continue
        for child in children:
            match = RUN_DIR_PATTERN.match(child.name)
            if match:
                for path in run_files(child):
                    by_id.setdefault(RUN_FILE_PATTERN.match(path.name)["id"], []).append(path)
    if not by_id:
        return None
    return sorted(by_id.values(), key=lambda files: files[0].parent.name.split("-", 2)[-1])


def read_records(path: Path):
    """Yield the payloads of a run file; a torn end (a run still writing, or killed) ends the reading.

    Raises:
        TrackerInputError: not a W&B run file.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TrackerInputError(f"{path}: cannot read ({error.strerror or error}).") from None
    if data[:4] != b":W&B":
        raise TrackerInputError(f"{path}: not a W&B run file (no ':W&B' header).")
    offset, pending, size = FILE_HEADER, None, len(data)
    while offset + RECORD_HEADER <= size:
        left_in_block = BLOCK - (offset % BLOCK)
        if left_in_block < RECORD_HEADER:
            offset += left_in_block  # the padding at the end of a block
            continue
        crc, length, kind = _HEADER.unpack_from(data, offset)
        if kind == 0 and length == 0:  # zeroed space: the rest of the block
            offset += left_in_block
            continue
        start = offset + RECORD_HEADER
        payload = data[start:start + length]
        if len(payload) < length or kind not in (1, 2, 3, 4):
            raise _Torn(offset)
        if zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF != crc:  # wandb's CRC: over the type byte and data
            raise _Torn(offset)
        offset = start + length
        if kind == 1:
            yield payload
        elif kind == 2:
            pending = payload
        elif kind == 3 and pending is not None:
            pending += payload
        elif kind == 4 and pending is not None:
            yield pending + payload
            pending = None


class _Torn(Exception):
    def __init__(self, offset):
        self.offset = offset


def read_wandb_run(files: list[Path]) -> tuple[list[dict], dict, str | None, list[str]]:
    """The history rows of a W&B run (its run files, oldest first), its last summary values, its name and the notes
    to tell (a torn end)."""
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError:
        raise missing_extra("W&B run files", "wandb") from None
    rows, summary, name, notes = [], {}, None, []
    for path in files:
        count = 0
        try:
            for payload in read_records(path):
                record = wandb_internal_pb2.Record()
                try:
                    record.ParseFromString(payload)
                except Exception:
                    raise _Torn(-1) from None
                count += 1
                kind = record.WhichOneof("record_type")
                if kind == "history":
                    rows.append({item.key or "/".join(item.nested_key): _json(item.value_json)
                                 for item in record.history.item})
                elif kind == "summary":
                    for item in record.summary.update:
                        summary[item.key or "/".join(item.nested_key)] = _json(item.value_json)
                elif kind == "run" and record.run.display_name:
                    name = record.run.display_name
        except _Torn:
            if count == 0:
                raise TrackerInputError(f"{path}: corrupt W&B run file (its first record fails its checksum).") from None
            notes.append(f"{path}: torn after {count} records (a run still writing, or killed); read what came before.")
    return rows, summary, name, notes


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None
