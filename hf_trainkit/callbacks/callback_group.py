"""Several small callbacks that work as one: a group forwards every event to its members, in order."""

from __future__ import annotations

from transformers import TrainerCallback


class CallbackGroup(TrainerCallback):
    """A `TrainerCallback` made of others: each event goes to every member in order, and the shared
    `TrainerControl` comes back. Lets a user add one object (`CheckpointPolicyCallback`) while each concern (the
    checkpoint manager, the resume checks, signal handling) stays a callback of its own, testable alone.
    A subclass that handles an event itself calls `super()` to pass it on to the members."""

    def __init__(self, *members: TrainerCallback):
        self.members = [member for member in members if member is not None]

    def find(self, kind: type):
        """The first member (or a member's member) that is a `kind`, else None."""
        for member in self.members:
            if isinstance(member, kind):
                return member
            if isinstance(member, CallbackGroup) and member.find(kind) is not None:
                return member.find(kind)
        return None


def _forward(event: str):
    def handler(self, args, state, control, **kwargs):
        for member in self.members:
            result = getattr(member, event)(args, state, control, **kwargs)
            if result is not None:
                control = result
        return control

    handler.__name__ = event
    handler.__doc__ = f"`{event}` of every member, in order."
    return handler


for _event in [name for name in vars(TrainerCallback) if name.startswith("on_")]:
    setattr(CallbackGroup, _event, _forward(_event))
