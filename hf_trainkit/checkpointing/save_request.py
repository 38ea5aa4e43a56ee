"""Why a checkpoint is being saved: the note a callback attaches to `TrainerControl` when it asks for a save.

`TrainerControl` is the object every callback already shares with the `Trainer` to ask for a save
(`control.should_save`); `request_save` sets that flag and records the reason, an optional name and whether to pin
the checkpoint, which the checkpoint manager (`CheckpointManagerCallback`) writes into the completion marker.
Your own callbacks can use it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# Strongest first: when several callbacks ask for a save at the same step, the marker's `reason` is the strongest.
REASONS = ("manual", "preempt", "improved", "final", "interval")
_ATTRIBUTE = "_hf_trainkit_save_request"
_PREEMPTED = "_hf_trainkit_preempted"


@dataclass
class SaveRequest:
    step: int
    reasons: list[str] = field(default_factory=list)
    name: str | None = None
    pinned: bool = False
    extra: dict = field(default_factory=dict)


def request_save(control, state, reason: str, *, name: str | None = None, pinned: bool = False,
                 **extra) -> SaveRequest:
    """Ask the Trainer to save at the end of this step, saying why. Several requests at one step merge."""
    if reason not in REASONS:
        raise ValueError(f"reason={reason!r} must be one of {', '.join(REASONS)}")
    request = pending_save_request(control, state)
    if request is None:
        request = SaveRequest(step=state.global_step)
        setattr(control, _ATTRIBUTE, request)
    if reason not in request.reasons:
        request.reasons.append(reason)
    request.name = name or request.name
    request.pinned = request.pinned or pinned
    request.extra.update(extra)
    control.should_save = True
    return request


def pending_save_request(control, state) -> SaveRequest | None:
    """The request for this step, if any (a request left from an earlier step, whose save never came, is stale)."""
    request = getattr(control, _ATTRIBUTE, None)
    return request if request is not None and request.step == state.global_step else None


def pop_save_request(control, state) -> SaveRequest | None:
    request = pending_save_request(control, state)
    if hasattr(control, _ATTRIBUTE):
        delattr(control, _ATTRIBUTE)
    return request


def saving_enabled(args) -> bool:
    """False when the run was told to write no checkpoint (`save_strategy="no"`, `--no-save-checkpoints`)."""
    return str(getattr(args.save_strategy, "value", args.save_strategy)) != "no"


def mark_preempted(control):
    """Say on `TrainerControl` that training stops because of a signal, not because it is done: the checkpoint
    manager then writes no `training_complete.json`, so the same command resumes."""
    setattr(control, _PREEMPTED, True)


def was_preempted(control) -> bool:
    return bool(getattr(control, _PREEMPTED, False))
