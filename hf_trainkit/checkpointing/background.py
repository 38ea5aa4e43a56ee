"""One worker thread per kind of after-save work (checksums, mirror copies): training goes on while it runs."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path


class BackgroundWorker:
    """Runs `work(checkpoint)` for each submitted checkpoint, in order, on one daemon thread started on demand.

    `pending` names the checkpoints queued or in progress (rotation must keep them); `wait()` blocks until all are
    done. An error in `work` goes to `on_error(checkpoint, error)`: background work never takes training down.
    `then(checkpoint)`, if given to `submit`, runs after `work` on the same thread.
    """

    def __init__(self, work, on_error, name: str):
        self._work, self._on_error, self._name = work, on_error, name
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # a thread that is about to exit never leaves a new item behind
        self._thread: threading.Thread | None = None
        self.pending: set[str] = set()

    def submit(self, checkpoint: str | os.PathLike, then=None):
        checkpoint = Path(checkpoint)
        with self._lock:
            self.pending.add(checkpoint.name)
            self._queue.put((checkpoint, then))
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name=self._name, daemon=True)
                self._thread.start()

    def _drain(self):
        while True:
            try:
                checkpoint, then = self._queue.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                self._work(checkpoint)
                if then is not None:
                    then(checkpoint)
            except Exception as error:
                self._on_error(checkpoint, error)
            finally:
                self.pending.discard(checkpoint.name)  # after `then`, which may have queued it elsewhere
                self._queue.task_done()

    def wait(self):
        self._queue.join()
