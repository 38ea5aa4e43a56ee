"""Moving another timeline's checkpoints out of the way, so that a fresh start or a resume from an older checkpoint
neither loses them nor writes over them file by file (nor has them deleted by rotation as "newer by step")."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..constants import CHECKPOINT_PATTERN, SUPERSEDED_DIR, TRAINING_COMPLETE




@dataclass
class SetAside:
    folder: Path
    stamp: str
    names: list[str]


def set_aside_checkpoints(output_dir: str | os.PathLike, after_step: int, include_training_complete: bool = False
                          ) -> SetAside | None:
    """Move every `checkpoint-<step>` with step > `after_step` (and, when asked, `training_complete.json`) into
    `OUTPUT_DIR/superseded/<time>/`. Renames only: instant, no copy, nothing deleted. None when nothing moved."""
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
    folder.mkdir(parents=True)
    for _, path in doomed:
        os.replace(path, folder / path.name)
    for path in extra:
        os.replace(path, folder / path.name)
    return SetAside(folder=folder, stamp=folder.name, names=[p.name for _, p in doomed] + [p.name for p in extra])
