"""A built-in base model saved once per run folder, so every rank, every resume and `hf-trainkit eval --base` load
the very same weights."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable


def ensure_saved(directory: str, recipe: dict, save: Callable[[str], None]) -> str:
    """`directory` holding what `save(folder)` writes for `recipe`, written unless it is already there; returns
    `directory`. Written to a temporary folder and renamed, so an interrupted save leaves no half model that a later
    run would take."""
    from ..constants import TOY_BASE_RECIPE

    recipe_file = os.path.join(directory, TOY_BASE_RECIPE)
    try:
        with open(recipe_file) as handle:
            if json.load(handle) == recipe and os.path.isfile(os.path.join(directory, "model.safetensors")):
                return directory
    except (OSError, ValueError):
        pass
    partial = f"{directory}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    save(partial)
    with open(os.path.join(partial, TOY_BASE_RECIPE), "w") as handle:
        json.dump(recipe, handle, indent=2)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(partial, directory)
    return directory



def save_model_here(model, folder: str) -> None:
    """`model.save_pretrained(folder)` from whichever process calls it (see `saving_from_this_rank`)."""
    from ..distributed import saving_from_this_rank

    with saving_from_this_rank(model):
        model.save_pretrained(folder)
