"""Which checkpoints a save limit removes: a pure decision on inspected checkpoints."""

from __future__ import annotations

from .validate import CheckpointInfo


def checkpoints_to_delete(checkpoints: list[CheckpointInfo], save_total_limit: int | None,
                          protected: set[str] = frozenset(), *, keep_only_protected: bool = False
                          ) -> list[CheckpointInfo]:
    """The checkpoints that rotation may delete now.

    - `save_total_limit` counts *valid* checkpoints, ordered by step (never by mtime);
    - never deleted: the newest valid checkpoint, any name in `protected` (the best one, pinned/named ones);
    - invalid leftovers are deleted only when a newer valid checkpoint exists (an invalid newest one may be a save
      in progress, or the only trace of a crash: it stays until something better exists);
    - `keep_only_protected=True` (best-N policies, where `protected` holds the best N): every other valid
      checkpoint but the newest goes, whatever `save_total_limit` says.
    """
    valid = [c for c in checkpoints if c.valid]
    if not valid:
        return []
    newest = max(valid, key=lambda c: c.step)
    deletions = [c for c in checkpoints if not c.valid and c.step is not None and c.step < newest.step
                 and c.name not in protected]
    keep_always = {newest.name, *protected}
    if keep_only_protected:
        return sorted(deletions + [c for c in valid if c.name not in keep_always], key=lambda c: c.step)
    if save_total_limit is None or save_total_limit <= 0:
        return deletions
    kept = [c for c in valid if c.name in keep_always]
    others = sorted((c for c in valid if c.name not in keep_always), key=lambda c: c.step, reverse=True)
    room = max(save_total_limit - len(kept), 0)
    deletions += others[room:]
    return sorted(deletions, key=lambda c: c.step)


def counting_only_complete_everywhere(checkpoints: list[CheckpointInfo], complete_everywhere: set[int]
                                      ) -> list[CheckpointInfo]:
    """With a disk per node: a checkpoint counts as valid for rotation only once every node holds its part complete,
    so `checkpoints_to_delete` deletes a step only when every node has a newer complete one."""
    import dataclasses

    return [c if not c.valid or c.step in complete_everywhere
            else dataclasses.replace(c, valid=False, reason="not complete on every node") for c in checkpoints]
