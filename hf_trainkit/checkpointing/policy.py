"""Which checkpoints a policy saves and keeps: pure decisions, shared by the callback and the tests."""

from __future__ import annotations

import math
import re

from .validate import CheckpointInfo


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def monitored_value(info: CheckpointInfo, key: str) -> float | None:
    """The value a checkpoint was saved with for `key`: the policy's (smoothed) value, else the raw metric."""
    monitor = info.marker.get("monitor") or {}
    value = monitor.get("value") if monitor.get("key") == key else info.metrics.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def best_checkpoints(checkpoints: list[CheckpointInfo], key: str, mode: str, k: int) -> list[CheckpointInfo]:
    """The `k` valid checkpoints with the best `key`, best first (ties: the older step first, as it came first)."""
    scored = [(monitored_value(c, key), c) for c in checkpoints if c.valid]
    scored = [(v, c) for v, c in scored if v is not None]
    scored.sort(key=lambda vc: ((vc[0] if mode == "min" else -vc[0]), vc[1].step))
    return [c for _, c in scored[:k]]


def pinned_names(checkpoints: list[CheckpointInfo]) -> set[str]:
    """Folders whose marker pins them (named checkpoints): rotation never deletes them."""
    return {c.name for c in checkpoints if c.marker.get("pinned")}


def validate_checkpoint_name(name: str) -> str:
    """`name` if it is a safe checkpoint name, else ValueError saying why (it ends up in a JSON file and a URL)."""
    if not isinstance(name, str):
        raise ValueError(f"the checkpoint name must be a string, not {type(name).__name__} {str(name)[:40]!r}")
    if not name:
        raise ValueError("the checkpoint name is empty")
    if "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise ValueError(f"checkpoint name {name!r} must not contain '/', '\\' or '..'")
    if not NAME_PATTERN.match(name):
        raise ValueError(f"checkpoint name {name[:80]!r} must be 1-64 characters of letters, digits, '_', '.', '-', "
                         "starting with a letter or digit")
    return name
