"""Other trackers' runs (`hf_trainkit.trackers`: TensorBoard, W&B, Trackio) as the `RunHistory` `load_run` gives
for a trainer_state.json, and the notes said once about them (which tracker was read, the names mapped)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ..constants import TRAINER_STATE_NAME
from .load import MonitorInputError, RunHistory, default_label, parse_state

_DB_RUN = re.compile(r"^.+\.db:[^/]+$")  # a Trackio project file and one of its runs: project.db:RUN
_TOLD: set[str] = set()
_RENAMES_TOLD: set[tuple[str, str]] = set()
_LOOKED_IN: set[Path] = set()  # output dirs already scanned for trackers' copies (the note is said once anyway)
# The folders trackers keep their runs in: a run found there is named after the folder above (the output dir).
_TRACKER_FOLDERS = ("wandb", "runs", "logs", "tensorboard", "trackio")


def _default_label(path: Path, tracker_name: str | None) -> str:
    """The tracker's own run name for a run file or run folder; the output dir's name for a folder holding it."""
    if tracker_name and (path.is_file() or path.name.startswith(("offline-run-", "run-"))):
        return tracker_name
    try:
        path = path.resolve()
    except (OSError, RuntimeError):
        path = path.absolute()
    if path.name in _TRACKER_FOLDERS and path.parent.name:
        return path.parent.name
    return default_label(path)


def tell_once(text: str):
    """A note about what was read, on stderr (stdout is for results), once per process: `--watch` and the
    dashboard read runs again and again."""
    if text not in _TOLD:
        _TOLD.add(text)
        print(f"hf-trainkit: {text}", file=sys.stderr, flush=True)


def is_db_run_spec(path: Path) -> bool:
    return bool(_DB_RUN.match(str(path)))


def is_tracker_file(path: Path) -> bool:
    """An event file, a W&B run file, or a SQLite file (Trackio's store; `load_tracker_run` says if it is not)."""
    name = path.name
    if name.startswith("events.out.tfevents.") or name.endswith(".wandb"):
        return True
    if name.endswith(".db"):
        try:
            with open(path, "rb") as handle:
                return handle.read(16) == b"SQLite format 3\x00"
        except OSError:
            return False
    return False


def holds_tracker_run(directory: Path) -> bool:
    from ..trackers import tracker_runs_in

    return bool(tracker_runs_in(directory))


def say_trackers_also_there(directory: Path):
    """An output dir read from its trainer_state.json that also holds a tracker's copy of the run: said once (the
    run is read once)."""
    from ..trackers import tracker_runs_in

    if directory in _LOOKED_IN:  # `--watch` and the dashboard read the same run again and again
        return
    _LOOKED_IN.add(directory)
    try:
        found = tracker_runs_in(directory)
    except OSError:
        return
    if found:
        kinds = ", ".join(dict.fromkeys(run.kind for run in found))
        tell_once(f"{directory}: read {TRAINER_STATE_NAME} (also there: {kinds}, the same run; pass its folder to "
                  "read that instead).")


def load_tracker_run(path: str | Path, label: str | None) -> RunHistory:
    """A tracker's run (a file, a folder holding one, `trackio:PROJECT[/RUN]` or `PROJECT.db:RUN`) as a
    `RunHistory`.

    Raises:
        MonitorInputError: one line naming the file and what is wrong.
    """
    from ..trackers import (TrackerInputError, describe_renames, find_tracker_run, global_step, read_tracker_run,
                            tracker_runs_in)

    text = str(path)
    try:
        found = find_tracker_run(text)
        if found is None:
            raise MonitorInputError(f"{text}: no TensorBoard, W&B or Trackio run there.")
        run = read_tracker_run(found)
    except TrackerInputError as error:
        raise MonitorInputError(str(error)) from None
    if not run.entries:
        raise MonitorInputError(f"{run.source}: a {run.kind} run with no scalar logged yet.")
    if Path(text).is_dir():
        others = [f.kind for f in tracker_runs_in(Path(text)) if f.kind != run.kind]
        also = f" (also there: {', '.join(dict.fromkeys(others))}, the same run)" if others else ""
        tell_once(f"{text}: read the {run.kind} run in {run.source}{also}.")
    for note in run.notes:
        tell_once(note)
    new = {old: name for old, name in run.renamed.items() if (old, name) not in _RENAMES_TOLD}
    if new:  # a comparison of several trackers' runs says each mapping once
        _RENAMES_TOLD.update(new.items())
        tell_once(f"metric names mapped to trainer_state.json's: {describe_renames(new)}.")
    if label is None:
        label = _default_label(Path(text.split(":")[0]), run.name)
    history = parse_state({"log_history": run.entries, "global_step": global_step(run.entries)}, run.source, label)
    history.state["tracker"] = run.kind
    history.entries = run.entries  # the dashboard's columns are built from entries (as from a live log)
    return history


def tracker_files(path: Path) -> tuple:
    """(path, mtime_ns, size) of the files holding the tracker run at `path` (a file, or a folder holding one;
    none for a trainer_state.json output dir), sorted: a signature that changes when the run logs more."""
    from ..trackers import find_tracker_run

    path = Path(path)
    try:
        if path.is_dir() and (path / TRAINER_STATE_NAME).is_file():
            return ()
        found = find_tracker_run(path)
    except (OSError, ValueError):
        return ()
    if found is None:
        return ()
    if found.kind == "TensorBoard":
        files = [p for part in found.parts for p in (part.iterdir() if part.is_dir() else [part])]
    elif found.kind == "Trackio":
        db = found.parts[0]
        files = [db, db.with_name(db.name + "-wal")]
    else:
        files = list(found.parts) or [found.where]
    signature = []
    for file in files:
        try:
            info = file.stat()
        except OSError:
            continue
        signature.append((str(file), info.st_mtime_ns, info.st_size))
    return tuple(sorted(signature))
