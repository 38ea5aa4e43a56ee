"""Row selection on a GRPO batch: keep the samples the mode trains on, drop the rest before the forward pass.

Pure functions (batch + keep -> batch). A text batch is one row per completion in every tensor. A vision-language
batch is not: `pixel_values` of Qwen2-VL / Qwen2.5-VL / Qwen3-VL holds one row per image *patch*, `image_grid_thw`
one row per image, `num_images` says how many images each sample has. Such a batch is split per sample with TRL's
own helper (`split_pixel_values_by_grid`, the one `GRPOTrainer._prepare_inputs` uses to shuffle it), selected like
any row-aligned batch, and joined again (`unsplit_pixel_values_by_grid`).
"""

from __future__ import annotations

from typing import Any

import torch


# Batch entries that carry images. Present and not splittable per sample -> the caller falls back to masking.
VISION_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "spatial_shapes",
    "image_sizes",
    "image_position_ids",
    "num_images",
    "num_tiles",
    "token_type_ids",
    "mm_token_type_ids",
)
# Zeroed on padding rows, and on dropped rows when masking: together they take a row out of every loss.
WEIGHT_KEYS = ("completion_mask", "tool_mask", "advantages")


def batch_size_of(inputs: dict[str, Any]) -> int:
    return inputs["completion_ids"].shape[0]


def has_vision_inputs(inputs: dict[str, Any]) -> bool:
    return any(inputs.get(key) is not None for key in VISION_KEYS)


def split_per_sample(inputs: dict[str, Any]) -> dict[str, Any] | None:
    """`inputs` with every image entry as one item per sample (a list, or a tensor with one row per sample), or
    `None` when the layout cannot be split that way (e.g. no `num_images` to say which image is whose)."""
    if not has_vision_inputs(inputs):
        return inputs
    from trl.trainer.utils import split_pixel_values_by_grid

    size = batch_size_of(inputs)
    num_images = inputs.get("num_images")
    if inputs.get("pixel_values") is not None and (num_images is None or len(num_images) != size):
        return None
    try:
        split = split_pixel_values_by_grid(inputs)
    except (ValueError, RuntimeError):  # lengths that do not add up: not a layout TRL knows
        return None
    for key in VISION_KEYS:
        value = split.get(key)
        if value is None:
            continue
        rows = len(value) if isinstance(value, (list, tuple)) else value.shape[0] if value.dim() > 0 else -1
        if rows != size:
            return None
    return split


def join_samples(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inverse of [`split_per_sample`]: per-sample image lists concatenated back into TRL's flat tensors."""
    from trl.trainer.utils import unsplit_pixel_values_by_grid

    return unsplit_pixel_values_by_grid(inputs)


def select_rows(inputs: dict[str, Any], keep: torch.Tensor, size: int | None = None) -> dict[str, Any] | None:
    """The batch restricted to the samples where `keep` is true, padded to `size` rows (scalars and `None` pass
    through); `None` when the batch has image inputs in a layout that cannot be split per sample.

    Padding rows are copies of the first row with their loss mask and advantage zeroed: they add nothing to the
    loss, but let a rank with fewer (or no) kept samples run the same forward/backward passes and per-row
    collectives (`all_gather` of per-sequence metrics) as the others, which ZeRO-3 and gloo/NCCL require. A padding
    row of an image batch carries its sample's images, so it also runs the same vision-tower passes.
    """
    per_sample = split_per_sample(inputs)
    if per_sample is None:
        return None
    batch_size = keep.shape[0]
    index = keep.nonzero(as_tuple=True)[0]
    kept = index.numel()
    size = max(size if size is not None else kept, 1)
    if size > kept:
        index = torch.cat([index, torch.zeros(size - kept, dtype=index.dtype, device=index.device)])
    rows = index.tolist()
    selected = {}
    for key, value in per_sample.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
            selected[key] = value.index_select(0, index)
        elif isinstance(value, list) and len(value) == batch_size:
            selected[key] = [value[i] for i in rows]
        else:
            selected[key] = value
    if size > kept:
        for key in WEIGHT_KEYS:
            if selected.get(key) is not None:
                selected[key] = selected[key].clone()
                selected[key][kept:] = 0
    return join_samples(selected) if per_sample is not inputs else selected


def mask_rows(inputs: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The batch with dropped rows kept in place but weightless (zero advantage and zero loss mask)."""
    masked = dict(inputs)
    for key in WEIGHT_KEYS:
        value = masked.get(key)
        if value is not None:
            row_keep = keep.view(-1, *([1] * (value.dim() - 1)))
            masked[key] = value * row_keep.to(value.dtype)
    return masked
