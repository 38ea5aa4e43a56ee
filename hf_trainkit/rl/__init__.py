"""Reward-filtered GRPO (GRPO / PSR / NSR / W-REINFORCE): the pure advantage math and the TRL trainer subclass."""

from .advantages import MODES, ModeAdvantages, canonical_mode, compute_mode_advantages, format_mode_line, metric_prefix


_LAZY = {
    "FilteredGRPOConfig": ".filtered_grpo_config",
    "FilteredGRPOTrainer": ".filtered_grpo_trainer",
}

__all__ = [
    "MODES",
    "ModeAdvantages",
    "canonical_mode",
    "compute_mode_advantages",
    "format_mode_line",
    "metric_prefix",
    *_LAZY,
]


def __getattr__(name):
    # The config and trainer import TRL (and with it transformers' Trainer): only load them when asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
