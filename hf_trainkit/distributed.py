"""The few collectives the callbacks need to take one decision on every rank (no-ops in a single process)."""

from __future__ import annotations

import contextlib


def _distributed():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _device(dist) -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def barrier():
    dist = _distributed()
    if dist is not None:
        dist.barrier()


def broadcast_from_main(obj):
    """The main process's `obj` (any picklable value), on every rank."""
    dist = _distributed()
    if dist is None:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0, device=_device(dist) if _device(dist) == "cuda" else None)
    return holder[0]


def broadcast_float(value: float) -> float:
    """The main process's `value`, on every rank (one tiny broadcast), so that ranks never disagree by a rounding."""
    dist = _distributed()
    if dist is None:
        return value
    import torch

    tensor = torch.tensor([value], dtype=torch.float64, device=_device(dist))
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def launched_world_size() -> int:
    """The process count a launcher (accelerate, torchrun, deepspeed) announced, before anything is initialised."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def cpu_only_launch() -> str | None:
    """'deepspeed' or 'ddp' when several processes were launched on a host without a GPU, else None."""
    import os

    import torch

    if launched_world_size() <= 1 or torch.cuda.is_available():
        return None
    return "deepspeed" if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" else "ddp"


def adjust_for_cpu_launch(training_args) -> str | None:
    """Make `TrainingArguments` (before their `__post_init__`) form one process group on a CPU-only host.

    - DDP (`accelerate launch --multi_gpu` on a host without a GPU): without `use_cpu` every process would train
      alone (world size 1, same output dir) and exit 0; with it, they form one group over gloo.
    - DeepSpeed: accelerate's state would come up with no backend and world size 1 while DeepSpeed has a 2-rank
      group (`train_batch_size is not equal to ... 2 != 2 * 1 * 2`). Creating `PartialState(backend="gloo")` first
      and telling the Trainer to use it (`accelerator_config.use_configured_state`) makes both agree; `use_cpu`
      alone is not reliable under ZeRO-3. (Measured: ../shared/notes/deepspeed-on-cpu.md.)

    Returns which adjustment was applied (None on a GPU host or in a single process: nothing changes).
    """
    kind = cpu_only_launch()
    if kind == "ddp":
        training_args.use_cpu = True
    elif kind == "deepspeed":
        from accelerate import PartialState

        PartialState(backend="gloo")
        config = training_args.accelerator_config
        if config is None:
            training_args.accelerator_config = {"use_configured_state": True}
        elif isinstance(config, dict):
            config["use_configured_state"] = True
        else:
            config.use_configured_state = True
    return kind


def gather_lists(items: list, group=None) -> list:
    """Every rank's `items` concatenated in rank order, on every rank (picklable items); `items` in one process.
    `group`: a process group of its own (the background checkpoint writer's), instead of the default one."""
    dist = _distributed()
    if dist is None:
        return list(items)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items, group=group)
    return [item for part in gathered for item in part]


def new_cpu_group():
    """A gloo group of every rank, for collectives issued off the training thread (None in one process). Collective:
    every rank calls it, at the same point."""
    dist = _distributed()
    return dist.new_group(backend="gloo") if dist is not None else None


def rank_and_world() -> tuple[int, int]:
    dist = _distributed()
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def agree_on_max_each(values: list[int]) -> list[int]:
    """The largest of each position over all ranks, in one all-reduce (several decisions, one round trip)."""
    dist = _distributed()
    if dist is None:
        return list(values)
    import torch

    tensor = torch.tensor(values, dtype=torch.int32, device=_device(dist))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(v) for v in tensor.tolist()]


@contextlib.contextmanager
def saving_from_this_rank(*models):
    """Let `save_pretrained` write from whichever process calls it. transformers 5 writes nothing on a rank other
    than 0 once torch.distributed is up, whatever `is_main_process` says; with a disk per node, each node's first
    process must write its own copy."""
    models = [m for m in models if m is not None and hasattr(m, "should_save_on_this_rank")]
    for model in models:
        model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        yield
    finally:
        for model in models:
            vars(model).pop("should_save_on_this_rank", None)
