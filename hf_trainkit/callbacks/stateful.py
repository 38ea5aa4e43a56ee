"""A base for callbacks whose state travels in checkpoints, safe when the callback list changes between runs."""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


class StatefulCallback(TrainerCallback, ExportableState):
    """`TrainerCallback` + `ExportableState` that also survives a resume from a run that did not have it.

    transformers' `_save_checkpoint` looks each stateful callback up in `state.stateful_callbacks` by class name and
    raises `KeyError` when the checkpoint being resumed was written without that callback (for example a first run
    with `--no-diagnostics`, a second without): the first save after the resume crashes. Registering our entry at
    each step begin (a dict lookup) closes that gap.
    """

    def on_step_begin(self, args, state, control, **kwargs):
        if state.stateful_callbacks is not None:
            state.stateful_callbacks.setdefault(type(self).__name__, self.state())
