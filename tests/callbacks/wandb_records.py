"""Read the history rows of an offline W&B run file (`run-<id>.wandb`), as a test oracle.

The format (see ../shared/notes/wandb-offline.md): a 7-byte file header, then 32 KiB blocks in the LevelDB log
layout; each record has a 7-byte header (CRC32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last)
and never straddles the last 6 bytes of a block. Each joined payload is a `wandb_internal_pb2.Record`.
"""

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
FILE_HEADER = 7
RECORD_HEADER = 7


def read_payloads(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    offset, pending = FILE_HEADER, b""
    while offset + RECORD_HEADER <= len(data):
        left_in_block = BLOCK - (offset % BLOCK)
        if left_in_block < RECORD_HEADER:
            offset += left_in_block  # padding at the end of a block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + RECORD_HEADER])
        if kind == 0 and length == 0:
            offset += left_in_block
            continue
        payload = data[offset + RECORD_HEADER : offset + RECORD_HEADER + length]
        offset += RECORD_HEADER + length
        if kind == 1:
            yield payload
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            yield pending + payload
            pending = b""


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2

    for payload in read_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def history_rows(run_dir: Path, timeout: float = 60.0) -> list[dict]:
    """Every `wandb.log` row of the offline runs under `run_dir` (a `wandb/` folder), in order.

    W&B's service process writes the file asynchronously: wait (up to `timeout`) until every run file holds its
    final `exit` record, so that a loaded machine does not make the file look short.
    """
    paths = sorted(p for p in Path(run_dir).glob("offline-run-*/run-*.wandb"))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(any(r.WhichOneof("record_type") == "exit" for r in _records(p)) for p in paths):
            break
        time.sleep(0.2)
    rows = []
    for path in paths:
        for record in _records(path):
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows
