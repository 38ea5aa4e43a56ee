"""Old module paths kept for one release after the layout moved (issue 32): each old module becomes the new one.

The old path imports the new module and puts it in its own place in `sys.modules`, so `import old` and
`from old import name` give the very same objects (patching one patches the other), with a DeprecationWarning that
names the new path. These aliases are the only modules whose imports may run against the layers (see
tests/test_layout.py); they go in the next release.
"""

from __future__ import annotations

import importlib
import sys
import warnings


# old module -> new module
MOVED = {
    "hf_trainkit.toy": "hf_trainkit.tasks.digit",
    "hf_trainkit.demo": "hf_trainkit.commands.demo",
    "hf_trainkit.checkpointing.control": "hf_trainkit.control",  # re-exports, with checkpointing.discover's tables
    "hf_trainkit.checkpointing.control_server": "hf_trainkit.control.server",
    "hf_trainkit.checkpointing.control_command": "hf_trainkit.commands.control",
    "hf_trainkit.checkpointing.command": "hf_trainkit.commands.checkpoints",
    "hf_trainkit.monitor.command": "hf_trainkit.commands.monitor",
    "hf_trainkit.dashboard.command": "hf_trainkit.commands.dashboard",
    "hf_trainkit.eval.command": "hf_trainkit.commands.eval",
}


def alias(old: str) -> None:
    """Make module `old` (being imported) the module it moved to, with a DeprecationWarning."""
    new = MOVED[old]
    warnings.warn(f"{old} has moved to {new}; the old name works until the next release.", DeprecationWarning,
                  stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
