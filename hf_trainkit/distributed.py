"""The few collectives the callbacks need to take one decision on every rank (no-ops in a single process)."""

from __future__ import annotations


def _distributed():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _device(dist) -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def barrier():
    dist = _distributed()
    if dist is not None:
        dist.barrier()


def agree_on_max(value: int) -> int:
    """The largest `value` over all ranks (one tiny all-reduce); the value itself in a single process."""
    dist = _distributed()
    if dist is None:
        return value
    import torch

    tensor = torch.tensor([value], dtype=torch.int32, device=_device(dist))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


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
