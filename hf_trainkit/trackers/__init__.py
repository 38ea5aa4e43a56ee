"""Runs other trackers logged: TensorBoard event files, W&B run files, Trackio's local store, read into the
`log_history` entries `monitor.load` reads from a trainer_state.json, so that the plots, summary, diagnosis, report
and dashboard work on them unchanged (DESIGN.md §7: they never know which tracker a run came from).

`find_tracker_run(path)` says what a path holds without reading it; `read_tracker_run(found)` reads it. The readers
are optional extras (`hf_trainkit[tensorboard]`, `hf_trainkit[trackio]`; W&B's is a core dependency), imported
only when a run of theirs is read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import tensorboard, trackio_store, wandb_offline
from .errors import TrackerInputError
from .names import KeyMap, canonical_key, describe_renames, resumed, rows_to_entries

__all__ = ["FoundRun", "TrackerInputError", "TrackerRun", "canonical_key", "describe_renames", "find_tracker_run",
           "tracker_runs_in", "read_tracker_run"]

TENSORBOARD, WANDB, TRACKIO = "TensorBoard", "W&B", "Trackio"
# When a folder holds a run in several trackers (one run logged to several), the one read: W&B and Trackio keep
# float64 values, TensorBoard float32.
PREFERENCE = (WANDB, TRACKIO, TENSORBOARD)
TRACKIO_SPEC = re.compile(r"^trackio:(?P<project>[^/]+)(?:/(?P<run>.+))?$")
DB_RUN_SPEC = re.compile(r"^(?P<db>.+\.db):(?P<run>[^/]+)$")
# What the final summary entry holds (transformers' WandbCallback keeps these in the run's summary, not its
# history).
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")


@dataclass
class FoundRun:
    """A tracker's run found at a path, not read yet: `parts` are its event dirs, run files or (db, run name)."""

    kind: str
    where: Path
    parts: list = field(default_factory=list)
    choices: list[str] = field(default_factory=list)  # several runs there: their names (an error when read)


@dataclass
class TrackerRun:
    kind: str
    source: Path
    name: str | None
    entries: list[dict]
    renamed: dict[str, str]
    notes: list[str]


def tracker_runs_in(directory: Path) -> list[FoundRun]:
    """The trackers' runs a folder holds (itself or its usual sub-folders), in `PREFERENCE` order, unread."""
    found = []
    wandb_runs = wandb_offline.run_segments(directory)
    if wandb_runs:
        found.append(FoundRun(WANDB, directory, wandb_runs[0] if len(wandb_runs) == 1 else [],
                              [str(files[0].parent) for files in wandb_runs] if len(wandb_runs) > 1 else []))
    for db in trackio_store.databases(directory):
        found.append(FoundRun(TRACKIO, db, [db]))
    tb_runs = tensorboard.run_segments(directory)
    if tb_runs:
        found.append(FoundRun(TENSORBOARD, directory, tb_runs[0] if len(tb_runs) == 1 else [],
                              [str(dirs[0]) for dirs in tb_runs] if len(tb_runs) > 1 else []))
    return sorted(found, key=lambda run: PREFERENCE.index(run.kind))


def find_tracker_run(path: str | Path) -> FoundRun | None:
    """What a RUN argument names, when it is a tracker's: an event file, a `.wandb` file, a trackio `.db` (or
    `DB:RUN`), `trackio:PROJECT[/RUN]` (in trackio's own folder), or a folder holding one of them. None otherwise."""
    text = str(path)
    spec = TRACKIO_SPEC.match(text)
    if spec and not Path(text).exists():
        db = trackio_store.default_dir() / f"{spec['project']}{trackio_store.DB_SUFFIX}"
        if not db.is_file():
            raise TrackerInputError(f"{text}: no Trackio project {spec['project']!r} in {db.parent} (set TRACKIO_DIR "
                                    "to the folder trackio logged to, or pass its .db file).")
        return FoundRun(TRACKIO, db, [db, spec["run"]] if spec["run"] else [db])
    spec = DB_RUN_SPEC.match(text)
    if spec and not Path(text).exists() and Path(spec["db"]).is_file():
        return FoundRun(TRACKIO, Path(spec["db"]), [Path(spec["db"]), spec["run"]])
    path = Path(path)
    if path.is_file():
        if tensorboard.is_event_file(path):
            return FoundRun(TENSORBOARD, path, [path])
        if path.suffix == ".wandb":
            return FoundRun(WANDB, path, [path])
        if trackio_store.is_trackio_db(path):
            return FoundRun(TRACKIO, path, [path])
        if path.suffix == trackio_store.DB_SUFFIX:
            raise TrackerInputError(f"{path}: not a readable Trackio database (corrupt, or a SQLite file without "
                                    "trackio's 'metrics' table).")
        return None
    if path.is_dir():
        found = tracker_runs_in(path)
        return found[0] if found else None
    return None


def read_tracker_run(found: FoundRun) -> TrackerRun:
    """Read a run `find_tracker_run` found into `log_history` entries (names mapped, resumes resolved).

    Raises:
        TrackerInputError: one line naming the file and what is wrong (or the runs to choose from).
    """
    if found.choices:
        listed = ", ".join(found.choices[:6]) + (" ..." if len(found.choices) > 6 else "")
        raise TrackerInputError(f"{found.where}: holds {len(found.choices)} {found.kind} runs ({listed}); pass one "
                                "of them (or a glob matching them).")
    keys = KeyMap()
    summary: dict = {}
    name = None
    if found.kind == TENSORBOARD:
        parts = found.parts[0] if found.parts and found.parts[0].is_file() else found.parts
        rows, notes = tensorboard.read_tensorboard_run(parts)
        entries = rows_to_entries(rows, keys)
        source = found.parts[0] if isinstance(parts, Path) else found.parts[-1]
        name = source.parent.name if isinstance(parts, Path) else None
    elif found.kind == WANDB:
        rows, summary, name, notes = wandb_offline.read_wandb_run(found.parts)
        entries = rows_to_entries(rows, keys, step_key="_step")
        source = found.parts[-1]
    else:
        db = found.parts[0]
        runs = trackio_store.run_names(db)
        run = found.parts[1] if len(found.parts) > 1 else None
        if run is None:
            if len(runs) != 1:
                listed = ", ".join(runs[:6]) + (" ..." if len(runs) > 6 else "")
                what = f"holds {len(runs)} runs ({listed}); pass one as {db}:RUN" if runs else "holds no run"
                raise TrackerInputError(f"{db}: a Trackio project that {what}.")
            run = runs[0]
        elif run not in runs:
            raise TrackerInputError(f"{db}: no Trackio run {run!r} (runs: {', '.join(runs[:10]) or 'none'}).")
        rows = [_trackio_row(row) for row in trackio_store.read_trackio_run(db, run)]
        entries = rows_to_entries(rows, keys)
        notes, name, source = [], run, db
    entries = resumed(entries)
    final = {key: value for key, value in summary.items() if key in SUMMARY_KEYS and isinstance(value, (int, float))
             and not isinstance(value, bool)}
    if final and not any("train_runtime" in entry for entry in entries):
        entries.append({"step": entries[-1]["step"] if entries else 0, **final})
    return TrackerRun(found.kind, source, name, entries, keys.renamed, notes)


def _trackio_row(row: dict) -> dict:
    """A trackio log (its ISO `timestamp`, its own `step` counter) with the wall time as seconds."""
    stamp = row.get("timestamp")
    if isinstance(stamp, str):
        try:
            row = {**row, "_timestamp": datetime.fromisoformat(stamp).timestamp()}
        except ValueError:
            pass
    if "train/global_step" not in row and isinstance(row.get("step"), int):
        row = {**row, "train/global_step": row["step"]}
    return row


def global_step(entries: list[dict]) -> int:
    steps = [entry["step"] for entry in entries if math.isfinite(entry["step"])]
    return int(max(steps)) if steps else 0
