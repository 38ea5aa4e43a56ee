"""Library output a user cannot act on, turned off precisely: each warning by its category and message, and the
per-file progress bars of loading and saving weights and of building a data set. Everything else stays.

- transformers 5 deprecates `gradient_checkpointing` in favour of `activation_checkpointing`, and warns from
  inside TRL's own `GRPOConfig` and its generation context (several lines per step), not from anything the user
  wrote;
- DeepSpeed calls torch collectives by names torch 2.13 deprecates, a warning per call;
- torch's DataLoader warns that `pin_memory` does nothing on a machine without an accelerator (transformers sets it);
- "Loading weights", "Writing model shards" (each save) and "Generating train split" bars say nothing about the run.

Hub downloads keep their progress bars: a user waiting for a 3B model wants to see them.
"""

from __future__ import annotations

import warnings


NOISE_WARNINGS = (
    (FutureWarning, r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated and will be removed in v6"),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found"),
    # DeepSpeed's ZeRO-3 calls these torch collectives by their old names on every step
    (FutureWarning, r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"),
)


def filter_library_noise() -> None:
    for category, message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    try:
        import datasets
        from huggingface_hub.utils import enable_progress_bars
        from transformers.utils import logging as transformers_logging

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()  # weights loading/saving bars; not the Trainer's training bar
        enable_progress_bars()  # ... which also turned off the hub's download bars: keep those
    except ImportError:
        pass
