"""hf_trainkit: reward-filtered GRPO, training callbacks, auto-resume and run monitoring for the HF stack.

Importing the package loads neither torch nor TRL; the public names are resolved on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "FilteredGRPOConfig": "hf_trainkit.rl",
    "FilteredGRPOTrainer": "hf_trainkit.rl",
    "compute_mode_advantages": "hf_trainkit.rl",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_trainkit' has no attribute {name!r}")
