"""Moving another timeline's checkpoints out of the way, so that a fresh start or a resume from an older checkpoint
neither loses them nor writes over them file by file (nor has them deleted by rotation as "newer by step")."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..argparsing import UsageError
from ..constants import CHECKPOINT_PATTERN, SUPERSEDED_DIR, TRAINING_COMPLETE


class SetAsideError(UsageError):
    """A folder in the way of this run's saves that cannot be moved aside: the run stops before training (one line,
    naming the folder and the fix) instead of crashing at the save that would collide with it, after the steps
    were trained."""


def in_the_way(path: Path, why: str, after_step: int) -> SetAsideError:
    return SetAsideError(
        f"{path} is newer than step {after_step}, where this run starts, and cannot be moved aside ({why}); a save "
        f"of this run would collide with it. Give yourself read and write access to it (chmod -R u+rwX {path}) or "
        f"move it out of {path.parent}, then run the same command again.")


def folders_in_the_way(output_dir: str | os.PathLike, after_step: int) -> list[Path]:
    """The `checkpoint-<step>` folders newer than `after_step` that this user cannot move aside (renaming a folder
    into another one needs write access to it, and to the output dir): checked before anything is loaded."""
    root = Path(output_dir)
    try:
        children = list(root.iterdir())
    except OSError:
        return []
    newer = sorted((int(m.group(1)), child) for child in children
                   if (m := CHECKPOINT_PATTERN.match(child.name)) and int(m.group(1)) > after_step)
    if not newer:
        return []
    if not os.access(root, os.W_OK | os.X_OK):
        return [path for _, path in newer]
    return [path for _, path in newer if path.is_dir() and not path.is_symlink() and not os.access(path, os.W_OK)]


def check_nothing_in_the_way(output_dir: str | os.PathLike, after_step: int):
    """Raise `SetAsideError` for the first folder newer than `after_step` that could not be moved aside."""
    blocked = folders_in_the_way(output_dir, after_step)
    if blocked:
        raise in_the_way(blocked[0], "no write access to it" if os.access(Path(output_dir), os.W_OK | os.X_OK)
                         else f"no write access to {output_dir}", after_step)


@dataclass
class SetAside:
    folder: Path
    stamp: str
    names: list[str]


def set_aside_checkpoints(output_dir: str | os.PathLike, after_step: int, include_training_complete: bool = False
                          ) -> SetAside | None:
    """Move every `checkpoint-<step>` with step > `after_step` (and, when asked, `training_complete.json`) into
    `OUTPUT_DIR/superseded/<time>/`. Renames only: instant, no copy, nothing deleted. None when nothing moved.

    Raises:
        SetAsideError: a folder could not be moved (after moving the others): a save would collide with it.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return None
    doomed = sorted((int(m.group(1)), child) for child in root.iterdir()
                    if (m := CHECKPOINT_PATTERN.match(child.name)) and int(m.group(1)) > after_step)
    record = root / TRAINING_COMPLETE
    extra = [record] if include_training_complete and record.is_file() else []
    if not doomed and not extra:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = root / SUPERSEDED_DIR / stamp
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = root / SUPERSEDED_DIR / f"{stamp}-{suffix}"
    try:
        folder.mkdir(parents=True)
    except OSError as error:
        raise in_the_way((doomed[0][1] if doomed else record), error.strerror or str(error), after_step) from None
    failed = []
    for path in [p for _, p in doomed] + extra:
        try:
            os.replace(path, folder / path.name)
        except OSError as error:
            failed.append((path, error.strerror or str(error)))
    if failed:
        if len(failed) == len(doomed) + len(extra):
            try:
                folder.rmdir()  # nothing was moved: no empty folder left behind
            except OSError:
                pass
        raise in_the_way(*failed[0], after_step)
    return SetAside(folder=folder, stamp=folder.name, names=[p.name for _, p in doomed] + [p.name for p in extra])
