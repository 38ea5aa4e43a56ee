"""What a checkpoint must hold and whether its bytes are still the ones written: the completion marker records the
files a resume needs and a checksum of every file; validation checks both.

Sizes alone miss same-size corruption (a flipped bit in the weights, bytes overwritten in `optimizer.pt`): such a
checkpoint resumes silently with wrong values. xxHash3-128 reads at memory speed (about 4 GB/s a core here) and
releases the GIL, so files are hashed in parallel right after the save, while they are still in the page cache
(`benchmarks/checkpoint_checksum.py` measures the cost against the save itself).
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


CHECKSUM_ALGORITHM = "xxh3_128"

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_DEEPSPEED_OPTIMIZER_SHARD = re.compile(r"(^|/)[^/]*zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt$")
_DEEPSPEED_MODEL_STATES = re.compile(r"(^|/)[^/]*model_states\.pt$")


def file_checksum(path: str | os.PathLike) -> str:
    """xxh3-128 of a file's bytes, as hex: the same digest as `xxh128sum FILE`.

    The file is memory-mapped and hashed in place (no copy into Python buffers: about twice as fast as reading it
    in chunks, from the page cache where a save has just left it).
    """
    import mmap

    import xxhash

    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return xxhash.xxh3_128(b"").hexdigest()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            if hasattr(mapped, "madvise"):
                mapped.madvise(mmap.MADV_SEQUENTIAL)
            return xxhash.xxh3_128(mapped).hexdigest()


def checksums(root: str | os.PathLike, relative_paths: list[str], workers: int | None = None) -> dict[str, str]:
    """relative path -> checksum, the files hashed in parallel (largest first, so no thread waits on one big file)."""
    root = Path(root)
    ordered = sorted(relative_paths, key=lambda name: -(root / name).stat().st_size)
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ordered) or 1))) as pool:
        digests = pool.map(lambda name: file_checksum(root / name), ordered)
        return dict(zip(ordered, digests))


def _weights(files: set[str]) -> list[str]:
    found = [name for name in WEIGHT_FILES if name in files]
    found += [name for name in WEIGHT_INDEXES if name in files]
    found += sorted(name for name in files if _DEEPSPEED_MODEL_STATES.search(name))
    return found


def required_files(root: str | os.PathLike, files: set[str], *, world_size: int = 1, save_only_model: bool = False,
                   needs_config: bool = True, ranks: list[int] | None = None) -> tuple[list[str], list[str]]:
    """(files a resume from this save needs, what is missing) for the relative paths `files` of a checkpoint.

    Needed: `trainer_state.json`; the weights (a full model, an adapter, a sharded index with every shard, or
    DeepSpeed's model states); the model's config next to them (`needs_config`: False for a bare `nn.Module`, which
    has none); unless `save_only_model`: the optimizer and scheduler (DeepSpeed: one optimizer shard per rank)
    and one RNG state per rank. `ranks`: the ranks whose files this folder holds (one node's part, with a disk per
    node); default all `world_size` of them.
    """
    required, missing = ["trainer_state.json"], []
    if "trainer_state.json" not in files:
        missing.append("trainer_state.json")
    weights = _weights(files)
    if not weights:
        missing.append("the model weights (model.safetensors, pytorch_model.bin or an adapter)")
    for index_name in (n for n in WEIGHT_INDEXES if n in files):
        try:
            shards = sorted(set(json.loads((Path(root) / index_name).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            missing.append(f"a readable {index_name}")
            continue
        weights += shards
        missing += [shard for shard in shards if shard not in files]
    required += weights
    if needs_config and any(name.startswith(("model", "pytorch_model")) for name in weights):
        required.append("config.json")
    if any(name.startswith("adapter_model") for name in weights):
        required.append("adapter_config.json")
    if not save_only_model:
        deepspeed = "latest" in files
        if deepspeed:
            shards = sorted(name for name in files if _DEEPSPEED_OPTIMIZER_SHARD.search(name))
            expected = len(ranks) if ranks is not None else world_size
            if len(shards) < expected:
                missing.append(f"DeepSpeed optimizer shards ({len(shards)} of {expected})")
            required += ["latest", *shards]
        else:
            required += ["optimizer.pt", "scheduler.pt"]
        required += ["rng_state.pth"] if world_size == 1 else [
            f"rng_state_{rank}.pth" for rank in (ranks if ranks is not None else range(world_size))]
    missing += [name for name in required if name not in files and name not in missing
                and name != "trainer_state.json"]
    return required, missing


# The torch pickles a resume loads (not `training_args.bin`, a full pickle that is never loaded; DeepSpeed's own files
# are covered by the checksums).
_LOADED_PICKLES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "pytorch_model.bin", "adapter_model.bin")


def load_problem(path: Path) -> str:
    """'' if the torch pickles a resume loads unpickle (memory-mapped: only their metadata is read), else why not.
    Catches what sizes and checksums cannot: a file that was already bad when it was written."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    files = [path / name for name in _LOADED_PICKLES if (path / name).is_file()] + sorted(path.glob("rng_state*.pth"))
    for file in files:
        try:
            with safe_globals():
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # UnpicklingError, RuntimeError from the zip reader, ...
            first_line = (str(error).strip().splitlines() or [""])[0][:160]
            return f"{file.name} cannot be loaded ({type(error).__name__}: {first_line})"
    return ""


def saved_weight_names(checkpoint: str | os.PathLike) -> set[str] | None:
    """The tensor names of a checkpoint's safetensors weights (one file or an index), or None without them."""
    root = Path(checkpoint)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        with open(index) as handle:
            return set(json.load(handle)["weight_map"])
    single = root / "model.safetensors"
    if not single.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as handle:
        return set(handle.keys())
