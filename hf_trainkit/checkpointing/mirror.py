"""A remote (or mounted) copy of a run's checkpoints, through fsspec: push in the background, pull on start.

The completion marker is copied last, in both directions, so a copy cut short is recognisably incomplete on the
other side too: a mirrored checkpoint counts only once its marker is there.
"""

from __future__ import annotations

import errno
import posixpath
import re
from pathlib import Path

from transformers.utils import logging

from .background import BackgroundWorker
from ..constants import CHECKPOINT_PATTERN, COMPLETE_MARKER, SUPERSEDED_DIR, checkpoint_dir, checkpoint_name


logger = logging.get_logger(__name__)


class CheckpointMirror:
    """Copies of `checkpoint-<step>` folders under an fsspec URL (`/mnt/drive/runs/x`, `s3://bucket/runs/x`, ...).

    Args:
        url (`str`): where the mirror lives; a local path works as is.
        save_total_limit (`int`, *optional*): keep at most this many complete checkpoints there (newest first).
    """

    def __init__(self, url: str, save_total_limit: int | None = None):
        import fsspec

        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.save_total_limit = save_total_limit
        self._copies = BackgroundWorker(self._push_if_there, self._report_failed_copy, name="checkpoint-mirror")
        self.errors: list[str] = []

    def for_node(self, node: int) -> "CheckpointMirror":
        """The mirror of one node's part of each checkpoint, under `URL/node-<node>/` (a disk per node: each node
        copies and pulls its own part)."""
        return CheckpointMirror(f"{self.url.rstrip('/')}/node-{node}", save_total_limit=self.save_total_limit)

    # --- reading the mirror -----------------------------------------------------------------------------------------

    def complete_steps(self) -> list[int]:
        """Steps of the mirrored checkpoints whose marker arrived (oldest first)."""
        if not self.fs.exists(self.root):
            return []
        steps = []
        for entry in self.fs.ls(self.root, detail=False):
            match = CHECKPOINT_PATTERN.match(posixpath.basename(entry.rstrip("/")))
            if match and self.fs.exists(posixpath.join(entry, COMPLETE_MARKER)):
                steps.append(int(match.group(1)))
        return sorted(steps)

    def _all_steps(self) -> list[int]:
        if not self.fs.exists(self.root):
            return []
        names = (posixpath.basename(e.rstrip("/")) for e in self.fs.ls(self.root, detail=False))
        return sorted(int(m.group(1)) for m in map(CHECKPOINT_PATTERN.match, names) if m)

    # --- copying ----------------------------------------------------------------------------------------------------

    def _copy_tree(self, files: list[tuple[str, str]], put: bool):
        # files: (source, destination) pairs; the marker is always last.
        for source, destination in sorted(files, key=lambda pair: pair[0].endswith(COMPLETE_MARKER)):
            if put:
                self.fs.makedirs(posixpath.dirname(destination), exist_ok=True)
                self.fs.put_file(source, destination)
            else:
                Path(destination).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(source, destination)

    def push(self, checkpoint: str | Path):
        """Copy a complete local checkpoint to the mirror (marker last), then apply the limit there.

        A mirror that fills up (ENOSPC) does not stay stuck at an old step: the cut-short copy goes, the older
        copies beyond `save_total_limit - 1` go to make room, and the copy is tried once more. Without a limit
        nothing is deleted and the error says so.
        """
        checkpoint = Path(checkpoint)
        remote = posixpath.join(self.root, checkpoint.name)
        files = [(str(f), posixpath.join(remote, f.relative_to(checkpoint).as_posix()))
                 for f in sorted(checkpoint.rglob("*")) if f.is_file()]
        try:
            self._copy_tree(files, put=True)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            self._remove(remote)
            if not self.save_total_limit or not self.rotate(room_for_one_more=True):
                raise OSError(errno.ENOSPC, f"no space left on the mirror for {checkpoint.name}; free space there "
                              "or set --save-total-limit so older copies make room") from None
            self._copy_tree(files, put=True)
        self.rotate()

    def _remove(self, remote: str):
        try:
            self.fs.rm(remote, recursive=True)
        except FileNotFoundError:
            pass

    def rotate(self, room_for_one_more: bool = False) -> list[int]:
        """Delete cut-short copies and the complete ones beyond the limit (one more with `room_for_one_more`, before
        a copy that did not fit); the steps deleted."""
        complete = self.complete_steps()
        if not complete:
            return []
        newest = complete[-1]
        doomed = [s for s in self._all_steps() if s < newest and s not in complete]  # cut-short copies
        if self.save_total_limit:
            keep = self.save_total_limit - 1 if room_for_one_more else self.save_total_limit
            doomed += complete[: max(len(complete) - keep, 0)]
        for step in doomed:
            self._remove(posixpath.join(self.root, checkpoint_name(step)))
        return doomed

    def set_aside(self, after_step: int, stamp: str | None = None):
        """Move the mirrored checkpoints newer than `after_step` (another run's) under `superseded/<stamp>/`, as the
        local ones are: otherwise rotation there would keep them as "newest" and delete this run's copies."""
        import time

        newer = [s for s in self._all_steps() if s > after_step]
        if not newer:
            return
        target = posixpath.join(self.root, SUPERSEDED_DIR, stamp or time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
        self.fs.makedirs(target, exist_ok=True)
        for step in newer:
            name = checkpoint_name(step)
            self.fs.mv(posixpath.join(self.root, name), posixpath.join(target, name), recursive=True)

    def pull(self, step: int, output_dir: str | Path) -> Path:
        """Download mirrored `checkpoint-<step>` into `output_dir` (marker last) and return its local path."""
        remote = posixpath.join(self.root, checkpoint_name(step))
        local = checkpoint_dir(output_dir, step)
        files = [(path, str(local / posixpath.relpath(path, remote))) for path in self.fs.find(remote)]
        self._copy_tree(files, put=False)
        return local

    # --- background pushes ------------------------------------------------------------------------------------------

    def push_in_background(self, checkpoint: str | Path):
        """Queue a push; one worker thread copies while training goes on."""
        self._copies.submit(checkpoint)

    @property
    def pending(self) -> set[str]:
        """Names queued or being copied: local rotation must keep them."""
        return self._copies.pending

    def _push_if_there(self, checkpoint: Path):
        if checkpoint.is_dir():
            self.push(checkpoint)

    def _report_failed_copy(self, checkpoint: Path, error: Exception):  # a mirror outage must not stop training
        message = f"could not mirror {checkpoint.name} to {self.url} ({type(error).__name__}: {error})"
        self.errors.append(message)
        logger.warning(f"CheckpointMirror: {message}")

    def wait(self):
        """Block until every queued push is done."""
        self._copies.wait()


def newest_local_step(output_dir: str | Path) -> int:
    from .discover import find_resume_checkpoint

    found = find_resume_checkpoint(output_dir, warn=False)
    return int(re.search(r"(\d+)$", found).group(1)) if found else -1
