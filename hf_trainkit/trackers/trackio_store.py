"""Trackio's local store (one SQLite file per project, `<TRACKIO_DIR>/<project>.db`) -> rows, through trackio's own
`SQLiteStorage` (what its dashboard reads with), pointed at the file's folder. trackio 0.43 imports no UI
(gradio_client only), so this costs the `trackio` package and nothing else.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import TrackerInputError, missing_extra

DB_SUFFIX = ".db"
_LOCK = threading.Lock()  # trackio finds its files through one module-level folder: one reading at a time


def is_trackio_db(path: Path) -> bool:
    """A SQLite file with trackio's `metrics` table (read-only look, no trackio import)."""
    if path.suffix != DB_SUFFIX or not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                return False
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='metrics'").fetchone() is not None
        finally:
            connection.close()
    except (OSError, sqlite3.Error):
        return False


def databases(directory: Path) -> list[Path]:
    """The trackio databases in a folder or its `trackio/` sub-folder."""
    found = []
    for place in (directory, directory / "trackio"):
        try:
            found += sorted(p for p in place.iterdir() if is_trackio_db(p))
        except OSError:
            continue
    return found


def default_dir() -> Path:
    """Where trackio keeps its projects: `TRACKIO_DIR`, else `$HF_HOME/trackio` (trackio's own rule)."""
    if os.environ.get("TRACKIO_DIR"):
        return Path(os.environ["TRACKIO_DIR"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "trackio"


def _storage():
    try:
        import trackio.sqlite_storage as storage
    except ImportError:
        raise missing_extra("Trackio's store", "trackio") from None
    return storage


@contextmanager
def _pointed_at(storage, folder: Path):
    with _LOCK:
        saved = storage.TRACKIO_DIR
        storage.TRACKIO_DIR = folder
        try:
            yield storage.SQLiteStorage
        finally:
            storage.TRACKIO_DIR = saved


def run_names(db: Path) -> list[str]:
    """The runs of a project database, oldest first.

    Raises:
        TrackerInputError: not a database trackio can read.
    """
    storage = _storage()
    try:
        with _pointed_at(storage, db.parent) as store:
            return store.get_runs(db.stem)
    except (sqlite3.Error, OSError, ValueError) as error:
        raise TrackerInputError(f"{db}: not a readable Trackio database ({error}).") from None


def read_trackio_run(db: Path, run: str) -> list[dict]:
    """The logged rows of run `run` in project database `db`, in the order they were logged."""
    storage = _storage()
    try:
        with _pointed_at(storage, db.parent) as store:
            logs = store.get_logs(db.stem, run)
    except (sqlite3.Error, OSError, ValueError) as error:
        raise TrackerInputError(f"{db}: not a readable Trackio database ({error}).") from None
    return logs
