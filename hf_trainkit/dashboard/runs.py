"""The run folders as the dashboard sees them: the live log read incrementally (or `trainer_state.json` for a run
without one), the live-control status, checkpoints, diagnostics. Reads only; acts only through
`checkpointing.control.submit_request`, the path `hf-trainkit control save|stop` takes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ..constants import CHECKPOINT_PATTERN, COMPLETE_MARKER, LIVE_LOG_FILE, LOG_FILE, TRAINING_COMPLETE
from ..monitor.load import json_loads, read_live_log
from ..monitor.tracker_runs import tracker_files
from . import data


CHECKPOINTS_EVERY_SECONDS = 2.0
LOAD_CHUNK_BYTES = 2 << 20  # the first reading of a long log, in parts: the lock (and the GIL) are let go between
DIAGNOSIS_EVERY_SECONDS = 5.0
# The warnings the training printed (logs/train.log: diagnostics, early stopping, starvation of a filtered mode,
# control requests, resume set-asides), as the console showed them.
FINDING_MARKERS = ("[diagnostics]", "Early stopping", "Control request", "Saved ", "so nothing is trained on",
                   "checkpoint(s) newer than step")
MAX_FINDINGS = 200
REPORT_PLACES = ("report.html", "plots/report.html")


class RunData:
    """One run: its log entries as metric columns, kept up to date by reading only what was appended."""

    def __init__(self, path: str | os.PathLike, label: str):
        self.path, self.label = Path(path), label
        self.lock = threading.Lock()
        self.columns = data.Columns()
        self.generation = 0  # +1 whenever the history is read again from the start (a resume set it aside)
        self._offset = 0
        self._identity = None  # (inode, device) of the live log, or mtime of the trainer_state.json read
        self._line_cache: tuple | None = None
        self._checkpoints: tuple[float, tuple, list] | None = None
        self._diagnosis: tuple[float, int, dict] | None = None
        self._findings: list[str] = []
        self._findings_offset = 0
        self.loaded = threading.Event()  # set once the history has been read a first time (see `load`)
        self._loaded_bytes, self._size = 0, 0

    # --- the first reading ---------------------------------------------------------------------------------------

    def load(self, cancelled: threading.Event | None = None):
        """Read the whole history a first time, in parts of `LOAD_CHUNK_BYTES` (the page says "loading" until
        then), then mark the run loaded: from then on each `refresh` reads only what was appended."""
        try:
            while self.refresh(limit=LOAD_CHUNK_BYTES) and not (cancelled and cancelled.is_set()):
                time.sleep(0)  # the GIL to the server's threads: a poll is answered between two parts
        finally:
            self.loaded.set()

    @property
    def loaded_fraction(self) -> float:
        """How much of the log the first reading has read (0 to 1)."""
        if self.loaded.is_set():
            return 1.0
        return min(1.0, self._loaded_bytes / self._size) if self._size else 0.0

    def newest(self) -> float:
        """When the run's log (or its newest trainer_state.json) was last written: the first reading goes newest
        first."""
        try:
            return (self.path / LIVE_LOG_FILE).stat().st_mtime
        except OSError:
            return max((mtime / 1e9 for _, mtime, _ in _state_files(self.path)), default=0.0)

    # --- the log ---------------------------------------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Entries read (the cursor a client gets)."""
        return len(self.columns)

    def _reset(self):
        self.columns, self._offset = data.Columns(), 0
        self.generation += 1
        self._line_cache = self._diagnosis = None

    def refresh(self, limit: int | None = None) -> bool:
        """Read what was appended since the last call (the whole history again if the file was replaced); with
        `limit`, about that many bytes of it. Returns whether there is more to read."""
        with self.lock:
            live = self.path / LIVE_LOG_FILE
            try:
                info = live.stat()
            except OSError:
                self._refresh_from_state()
                return False
            identity = (info.st_ino, info.st_dev)
            if identity != self._identity or info.st_size < self._offset:
                self._reset()
                self._identity = identity
            self._size = info.st_size
            if info.st_size == self._offset:
                return False
            try:
                entries, offset = read_live_log(live, self._offset, limit)
            except OSError:
                return False
            more = offset != self._offset and offset < info.st_size
            self._offset = self._loaded_bytes = offset
            data.append_entries(self.columns, entries)
            return more

    def _refresh_from_state(self):
        # No live log (a run from before it, or from plain transformers): its newest trainer_state.json, read again
        # only when one of them changed (a `stat` each otherwise).
        from ..monitor.load import MonitorInputError, load_run

        signature = _state_files(self.path) or tracker_files(self.path)
        if signature == self._identity:
            return
        try:
            run = load_run(self.path, self.label)
            # another tracker's run (TensorBoard, W&B, Trackio) comes with its entries; else the JSON it was read from
            history = getattr(run, "entries", None)
            if history is None:
                history = json_loads(run.source.read_bytes()).get("log_history") or []
        except (MonitorInputError, OSError, ValueError, RecursionError, AttributeError):
            return
        self._reset()
        self._identity = signature
        data.append_entries(self.columns, history if isinstance(history, list) else [])

    def since(self, cursor: int | None, client_generation: int | None, points: int) -> dict:
        with self.lock:
            return data.since_cursor(self.columns, cursor, self.generation, client_generation, points)

    def window(self, keys: list[str], axis: str, low: float, high: float, points: int) -> dict:
        with self.lock:
            return {key: data.window(self.columns, key, axis, low, high, points) for key in keys
                    if key in self.columns}

    # --- what is around it -----------------------------------------------------------------------------------------

    def state(self, read_only: bool = False) -> dict:
        """running / finished / stopped / gone / unknown, and whether Save and Stop can act (else why not)."""
        from ..control.status import is_running, read_status

        status = read_status(self.path)
        if status is None:
            finished = (self.path / TRAINING_COMPLETE).is_file()
            state = "finished" if finished else "no live status"
            reason = ("the training has finished" if finished else
                      "no live control here (no control/status.json: started without live control, or not yet)")
        else:
            state = status.get("state") or "unknown"
            if state == "running" and not is_running(status):
                state = "gone"
            reason = {"running": None,
                      "gone": f"the training's process no longer exists (killed or crashed at step "
                              f"{status.get('step')})",
                      "finished": f"the training has finished (step {status.get('step')})",
                      "stopped": f"the training has stopped (step {status.get('step')})"}.get(
                          state, f"the training is {state}")
        if read_only:
            reason = "this page is read-only (started with --read-only)"
        return {"state": state, "can_act": reason is None, "why_not": reason,
                "max_steps": (status or {}).get("max_steps"), "step": (status or {}).get("step"),
                "updated_at": (status or {}).get("updated_at")}

    def line(self, max_steps: int | None) -> dict:
        with self.lock:
            key = (self.generation, self.total, max_steps)
            if self._line_cache is None or self._line_cache[0] != key:
                line = data.metrics_line(self.columns, max_steps)
                # The pace of the most frequent log (the monitored metric), not of a sparse eval.
                chosen = data.primary_metric(self.columns)
                if chosen:
                    rows = self.columns.series[chosen[0]][0][-60:]
                    line["progress"] = data.progress([self.columns.x[r] for r in rows],
                                                     [self.columns.t[r] for r in rows], max_steps)
                self._line_cache = (key, line)
            return self._line_cache[1]

    def checkpoints(self) -> list[dict]:
        """The rows of `hf-trainkit checkpoints list --json`, recomputed when a checkpoint folder or marker
        changed (one directory read and a `stat` per checkpoint otherwise)."""
        from ..checkpointing.discover import list_checkpoints

        try:
            signature = tuple(sorted(
                (entry.name, _mtime(Path(entry.path) / COMPLETE_MARKER)) for entry in os.scandir(self.path)
                if entry.is_dir() and "checkpoint" in entry.name))
        except OSError:
            return []
        now = time.monotonic()
        if self._checkpoints and self._checkpoints[1] == signature and now - self._checkpoints[0] < 60:
            return self._checkpoints[2]
        rows = [{"step": i.step, "checkpoint": i.name, "name": i.marker.get("name"),
                 "pinned": bool(i.marker.get("pinned")), "reason": i.marker.get("reason"),
                 "metrics": {k: data.json_number(v) for k, v in i.metrics.items()},
                 "size_bytes": i.size_bytes, "valid": i.valid, "why_not": i.reason or None}
                for i in list_checkpoints(self.path, include_strays=True, compute_size=True)]
        self._checkpoints = (now, signature, rows)
        return rows

    def diagnosis(self) -> dict | None:
        """`diagnostics.diagnose` on the monitored curve and its eval counterpart (the monitor's verdict, the same
        model as the live callback's lines), at most every few seconds."""
        from ..diagnostics import diagnose, new_bests
        from ..metric_rules import eval_counterpart

        with self.lock:
            if self._diagnosis and (self._diagnosis[1] == self.total
                                    or time.monotonic() - self._diagnosis[0] < DIAGNOSIS_EVERY_SECONDS):
                return self._diagnosis[2]
            chosen = data.primary_metric(self.columns)
            if chosen is None:
                return None
            key, mode = chosen
            steps, values = self.columns.steps(key).tolist(), self.columns.values(key).tolist()
            eval_key = eval_counterpart(self.columns.series, key)
            eval_steps = self.columns.steps(eval_key).tolist() if eval_key else []
            eval_values = self.columns.values(eval_key).tolist() if eval_key else []
            total = self.total
        result = diagnose(steps, values, mode=mode, name=key, eval_steps=eval_steps, eval_values=eval_values,
                          eval_name=eval_key or "eval_loss")
        out = {"metric": key, "mode": mode, "verdict": result.verdict, "reason": result.reason,
               "advice": result.advice, "eval_metric": eval_key,
               "findings": [{"kind": f.kind, "step": data.json_number(f.step), "message": f.message}
                            for f in result.findings[-20:]],
               **new_bests(steps, values, mode)}
        self._diagnosis = (time.monotonic(), total, out)
        return out

    def findings(self) -> list[str]:
        """The lines the live callbacks printed (diagnostics, early stopping, control requests) in logs/train.log."""
        path = self.path / LOG_FILE
        try:
            size = path.stat().st_size
            if size < self._findings_offset:
                self._findings_offset, self._findings = 0, []
            with open(path, "rb") as handle:
                handle.seek(self._findings_offset)
                raw = handle.read(4 << 20)
        except OSError:
            return self._findings
        end = raw.rfind(b"\n") + 1
        self._findings_offset += end
        for line in raw[:end].decode("utf-8", "replace").splitlines():
            if any(marker in line for marker in FINDING_MARKERS):
                self._findings.append(line.strip()[:500])
        self._findings = self._findings[-MAX_FINDINGS:]
        return self._findings

    def report(self) -> Path | None:
        for place in REPORT_PLACES:
            if (self.path / place).is_file():
                return self.path / place
        return None


def _state_files(run: Path) -> tuple:
    """(name, mtime, size) of the trainer_state.json files of `run` and its checkpoints."""
    found = []
    try:
        with os.scandir(run) as entries:
            for entry in entries:
                if entry.name == "trainer_state.json" or (CHECKPOINT_PATTERN.match(entry.name) and entry.is_dir()):
                    path = Path(entry.path) / ("" if entry.name == "trainer_state.json" else "trainer_state.json")
                    try:
                        info = path.stat()
                    except OSError:
                        continue
                    found.append((entry.name, info.st_mtime_ns, info.st_size))
    except OSError:
        return ()
    return tuple(sorted(found))


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def is_run_dir(path: Path) -> bool:
    """Whether `path` looks like an output dir a dashboard can show: a live log, a trainer_state.json, a
    checkpoint, a live-control status or a completion marker; or another tracker's run (TensorBoard event files,
    a W&B run, a Trackio database) or a folder holding one."""
    from ..constants import CONTROL_DIR, STATUS_FILE

    try:
        if path.is_dir() and ((path / LIVE_LOG_FILE).is_file() or (path / "trainer_state.json").is_file()
                              or (path / CONTROL_DIR / STATUS_FILE).is_file()
                              or (path / TRAINING_COMPLETE).is_file()
                              or any(CHECKPOINT_PATTERN.match(c.name) for c in path.iterdir())):
            return True
    except OSError:
        pass
    return bool(tracker_files(path))  # the trackers' scan only when none of our own files is there
