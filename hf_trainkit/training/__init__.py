"""A training run of `scripts/train_grpo.py`, programmatically: `run(options, callbacks=...)`.

`options` are the script's flags (`hf_trainkit.commands.train_grpo.train_grpo_options(**flags)` builds them);
`options.py` turns them into defaults and a `FilteredGRPOConfig`, `inputs.py` loads the datasets and builds the model,
`callbacks.py` picks the callbacks, `run.py` trains (and falls back to an older checkpoint when one cannot be loaded).
"""

from .run import run


__all__ = ["run"]
