"""Library output a user cannot act on, turned off precisely: each warning by its category and message, and the
per-file progress bars of loading and saving weights and of building a data set. Everything else stays.

- transformers 5 deprecates `gradient_checkpointing` in favour of `activation_checkpointing`, and warns from
  inside TRL's own `GRPOConfig` and its generation context (several lines per step), not from anything the user
  wrote;
- DeepSpeed calls torch collectives by names torch 2.13 deprecates, a warning per call;
- torch's DataLoader warns that `pin_memory` does nothing on a machine without an accelerator (transformers sets it);
- "Loading weights", "Writing model shards" (each save) and "Generating train split" bars say nothing about the run;
- DeepSpeed's "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it." on
  every run once it is installed, dropped only when torch sees no accelerator either (else it may be news);
- the Trainer's "There were missing keys in the checkpoint model loaded: ['lm_head.weight']." on every resume of a
  model with tied embeddings: the checkpoint stores a tied weight once, and the Trainer ties it again after the
  load. Dropped only when every missing key is tied to a parameter that was loaded (`expect_tied_weights(model)`
  names them); any other missing key is still said.

Hub downloads keep their progress bars: a user waiting for a 3B model wants to see them.
"""

from __future__ import annotations

import ast
import logging
import re
import warnings


NOISE_WARNINGS = (
    (FutureWarning, r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated and will be removed in v6"),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found"),
    # DeepSpeed's ZeRO-3 calls these torch collectives by their old names on every step
    (FutureWarning, r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"),
)


DEEPSPEED_CPU_MESSAGE = ("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to "
                         "detect it.")
MISSING_KEYS = re.compile(r"There were missing keys in the checkpoint model loaded: (\[.*\])\.?$", re.S)

# Parameter name -> the names of the parameters it shares its storage with, for the model being trained.
_tied_weights: dict[str, set[str]] = {}


def tied_weight_groups(model) -> dict[str, set[str]]:
    """{name: the other names of the same parameter} for every parameter of `model` reachable under several names
    (tied embeddings: ``lm_head.weight`` and ``model.embed_tokens.weight``)."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return {name: set(group) - {name} for group in names.values() if len(group) > 1 for name in group}


def expect_tied_weights(model) -> None:
    """Tell the missing-keys filter which parameters of `model` (the one a resume loads into) are tied."""
    _tied_weights.clear()
    _tied_weights.update(tied_weight_groups(model))


def _only_tied_keys_missing(message: str) -> bool:
    match = MISSING_KEYS.match(message)
    if not match:
        return False
    try:
        missing = set(ast.literal_eval(match.group(1)))
    except (ValueError, SyntaxError, TypeError):
        return False
    # Each missing key is tied to one that was loaded: the Trainer's tie_weights() restores it.
    return bool(missing) and all(_tied_weights.get(key, set()) - missing for key in missing)


def _no_accelerator() -> bool:
    try:
        import torch

        accelerator = getattr(torch, "accelerator", None)
        if accelerator is not None:
            return not accelerator.is_available()
        return not torch.cuda.is_available()
    except Exception:  # a broken torch install: keep DeepSpeed's word
        return False


class _DropMessages(logging.Filter):
    """Drops the exact messages above from the loggers they come from; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted is not ours to judge
            return True
        if record.name == "DeepSpeed":
            return not (message == DEEPSPEED_CPU_MESSAGE and _no_accelerator())
        if record.name == "transformers.trainer":
            return not _only_tied_keys_missing(message)
        return True


_FILTER = _DropMessages()


def filter_library_noise() -> None:
    for category, message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("DeepSpeed", "transformers.trainer"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    try:
        import datasets
        from huggingface_hub.utils import enable_progress_bars
        from transformers.utils import logging as transformers_logging

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()  # weights loading/saving bars; not the Trainer's training bar
        enable_progress_bars()  # ... which also turned off the hub's download bars: keep those
    except ImportError:
        pass
