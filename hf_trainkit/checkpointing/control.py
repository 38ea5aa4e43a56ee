"""Deprecated: live control moved to hf_trainkit.control, and the checkpoint tables to checkpointing.discover
(see hf_trainkit/_moved.py); this alias goes in the next release. It re-exports both (the old module held both),
so it is a module of its own rather than the new package itself."""

import warnings

from ..control import *  # noqa: F401,F403
from ..control import __all__ as _control_names
from .discover import checkpoint_names, checkpoint_table  # noqa: F401

warnings.warn("hf_trainkit.checkpointing.control has moved to hf_trainkit.control (checkpoint_names and "
              "checkpoint_table to hf_trainkit.checkpointing.discover); the old name works until the next release.",
              DeprecationWarning, stacklevel=2)
__all__ = [*_control_names, "checkpoint_names", "checkpoint_table"]
