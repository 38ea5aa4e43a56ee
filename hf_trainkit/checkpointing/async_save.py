"""Background saves: a checkpoint's large files are copied to host memory while training waits (*staging*), then
written, fsynced and marked complete by one writer thread while training goes on (*writing*).

Staging does not change what a checkpoint holds or how it is made: the `Trainer` saves exactly as it does without
async saves, and `staging()` only redirects the large writes it makes on the training thread (`torch.save`,
safetensors' `save_file`, as transformers, PEFT and DeepSpeed's torch checkpoint engine call them) into host copies
of their tensors. Everything else (configs, `trainer_state.json`, tokenizer files, DeepSpeed's `latest`) is written
at once, as before. A write nothing redirects is simply written at once: it costs time, never correctness.

The writer (`CheckpointWriter`) keeps one save in flight: `submit` a staged checkpoint with the work that follows
its files (the marker, checksums, mirror, rotation), `wait()` before the next one. The completion marker stays
the one signal that a checkpoint is complete: it is written only after every file of every rank is on disk and
fsynced (an all-reduce over a gloo group of its own, so the writer never shares a collective with training).

Why not `torch.distributed.checkpoint.async_save`: it writes DCP's own format (`.distcp` shards and a `.metadata`
file), which neither the `Trainer`'s resume nor DeepSpeed loads, so a run saved with it could not resume as before.
Its shape is kept: one worker thread, a staged copy, "one in flight", wait at teardown.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


# --- host copies ----------------------------------------------------------------------------------------------------

SMALL_FILE_BYTES = 64 << 10  # a torch.save of less tensor data than this (RNG states) is written at once


class HostBufferPool:
    """Host memory for the staged copies, kept from one save to the next: the state has the same sizes at every
    save, so from the second save on staging copies into memory that is already mapped (no page faults), which is
    most of its cost. Holds about one checkpoint's share of this process, from the first save to the end."""

    def __init__(self):
        self._free: dict[int, list] = {}
        self._lock = threading.Lock()

    def take(self, nbytes: int):
        import torch

        with self._lock:
            free = self._free.get(nbytes)
            if free:
                return free.pop()
        return torch.UntypedStorage(nbytes)

    def give_back(self, storages):
        with self._lock:
            for storage in storages:
                self._free.setdefault(storage.nbytes(), []).append(storage)

    @property
    def nbytes(self) -> int:
        return sum(n * len(free) for n, free in self._free.items())


def _host_copy(storage, pool: HostBufferPool, taken: list):
    host = pool.take(storage.nbytes())
    taken.append(host)
    if storage.nbytes():
        host.copy_(storage)
    return host


class _StagingPickler(pickle.Pickler):
    """Pickles an object the way `torch.save` does, but keeps each tensor storage aside as a host copy (once per
    storage, so views that share one still share it) instead of writing its bytes."""

    def __init__(self, file, pool: HostBufferPool, taken: list, protocol: int):
        super().__init__(file, protocol=protocol)
        self.copies: list = []
        self._keys: dict[int, int] = {}
        self._pool, self._taken = pool, taken

    def persistent_id(self, obj):
        import torch

        if isinstance(obj, torch.storage.TypedStorage):
            storage, dtype = obj._untyped_storage, obj.dtype
        elif isinstance(obj, torch.UntypedStorage):
            storage, dtype = obj, None
        else:
            return None
        key = self._keys.get(storage._cdata)
        if key is None:
            key = self._keys[storage._cdata] = len(self.copies)
            self.copies.append(storage if storage.device.type == "meta" else
                               _host_copy(storage, self._pool, self._taken))
        return ("hf_trainkit_staged", key, dtype)


class _StagedUnpickler(pickle.Unpickler):
    def __init__(self, file, copies: list):
        super().__init__(file)
        self._copies = copies

    def persistent_load(self, pid):
        import torch

        _, key, dtype = pid
        storage = self._copies[key]
        return storage if dtype is None else torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype,
                                                                         _internal=True)


@dataclass
class StagedFile:
    """One redirected write: `path`, and how the writer writes it (`torch.save` or safetensors)."""

    path: Path
    kind: str  # "torch" | "safetensors"
    pickled: bytes = b""
    copies: list = field(default_factory=list)
    tensors: dict = field(default_factory=dict)
    metadata: dict | None = None
    save_kwargs: dict = field(default_factory=dict)

    def write(self, torch_save, safetensors_save):
        if self.kind == "torch":
            obj = _StagedUnpickler(io.BytesIO(self.pickled), self.copies).load()
            torch_save(obj, str(self.path), **self.save_kwargs)
        else:
            safetensors_save(self.tensors, str(self.path), metadata=self.metadata)
        _fsync(self.path)


@dataclass
class StagedCheckpoint:
    """What one save redirected on this process: its files, their host memory, and how long staging took."""

    files: list[StagedFile] = field(default_factory=list)
    buffers: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes() for b in self.buffers)


_REAL: dict = {}  # the functions `staging()` replaced, for the writer (which runs while they are replaced)
_ACTIVE: dict = {}  # thread id -> (StagedCheckpoint, pool): the thread whose writes are redirected now
_PATCH_LOCK = threading.Lock()


def _real_torch_save():
    import torch

    return _REAL.get("torch.save", torch.save)


def _real_safetensors_save():
    import safetensors.torch

    return _REAL.get("safetensors", safetensors.torch.save_file)


def _targets() -> list[tuple[object, str, str]]:
    """(module, attribute, kind) of every save function the Trainer's checkpoint reaches on the training thread."""
    import sys

    import safetensors.torch
    import torch

    targets = [(torch, "save", "torch"), (safetensors.torch, "save_file", "safetensors")]
    for name in ("transformers.modeling_utils", "peft.peft_model", "peft.utils.save_and_load"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "safe_save_file"):
            targets.append((module, "safe_save_file", "safetensors"))
    return targets


def _redirecting_torch_save(obj, f, *args, **kwargs):
    active = _ACTIVE.get(threading.get_ident())
    if active is None or args or not isinstance(f, (str, os.PathLike)) or kwargs.keys() - {
            "_use_new_zipfile_serialization", "pickle_protocol"}:
        return _real_torch_save()(obj, f, *args, **kwargs)
    staged, pool = active
    buffer, taken = io.BytesIO(), []
    pickler = _StagingPickler(buffer, pool, taken, protocol=kwargs.get("pickle_protocol", 2))
    pickler.dump(obj)
    if sum(copy.nbytes() for copy in pickler.copies) < SMALL_FILE_BYTES:
        # Small (RNG states, training_args.bin): written at once, byte for byte what a save without staging writes
        # (the round trip through the staged pickle would lose pickle's memo of shared strings: same states, other
        # bytes), and costing the training nothing worth a thread.
        pool.give_back(taken)
        return _real_torch_save()(obj, f, **kwargs)
    staged.buffers.extend(taken)
    staged.files.append(StagedFile(Path(f), "torch", pickled=buffer.getvalue(), copies=pickler.copies,
                                   save_kwargs=kwargs))


def _redirecting_safetensors_save(tensors, filename, metadata=None, *args, **kwargs):
    active = _ACTIVE.get(threading.get_ident())
    if active is None or args or kwargs:
        return _real_safetensors_save()(tensors, filename, metadata, *args, **kwargs)
    import torch

    staged, pool = active
    copies = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        host = _host_copy(tensor.contiguous().untyped_storage(), pool, staged.buffers) if tensor.is_contiguous() \
            and tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == tensor.nbytes else None
        if host is None:  # a view into a larger storage: copy only its elements
            host = pool.take(tensor.nbytes)
            staged.buffers.append(host)
            torch.empty(0, dtype=tensor.dtype).set_(host, 0, tensor.shape).copy_(tensor)
        copies[name] = torch.empty(0, dtype=tensor.dtype).set_(host, 0, tensor.shape)
    staged.files.append(StagedFile(Path(filename), "safetensors", tensors=copies, metadata=metadata))


@contextlib.contextmanager
def staging(pool: HostBufferPool):
    """Within the block, large checkpoint writes made by this thread are staged instead of written (see the module
    docstring); yields the `StagedCheckpoint` that collects them. Other threads write as usual."""
    staged = StagedCheckpoint()
    start = time.perf_counter()
    with _PATCH_LOCK:
        if not _ACTIVE:
            for module, attribute, kind in _targets():
                _REAL.setdefault("torch.save" if kind == "torch" else "safetensors", getattr(module, attribute))
                _REAL[(module.__name__, attribute)] = getattr(module, attribute)
                setattr(module, attribute, _redirecting_torch_save if kind == "torch"
                        else _redirecting_safetensors_save)
        _ACTIVE[threading.get_ident()] = (staged, pool)
    try:
        yield staged
    finally:
        with _PATCH_LOCK:
            _ACTIVE.pop(threading.get_ident(), None)
            if not _ACTIVE:
                import importlib

                for key in [k for k in _REAL if isinstance(k, tuple)]:
                    setattr(importlib.import_module(key[0]), key[1], _REAL[key])
                _REAL.clear()
        staged.seconds = time.perf_counter() - start


def write_staged(staged: StagedCheckpoint):
    """Write every staged file and fsync it (the writer's part of a save). Raises what the writes raise."""
    for staged_file in staged.files:
        staged_file.write(_real_torch_save(), _real_safetensors_save())


def _fsync(path: Path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: str | os.PathLike):
    """fsync every file under `root` and the folders themselves, so that what a marker lists survives a power cut
    (the files written at once by the Trainer included)."""
    root = Path(root)
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            _fsync(path)
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync(folder)


# --- memory ---------------------------------------------------------------------------------------------------------


def estimate_host_copy_bytes(model, *, world_size: int = 1, zero3: bool = False, optimizer_slots: int = 2) -> int:
    """About what one process's host copy of a checkpoint takes: its weights (under ZeRO-3 its share), plus for
    each trainable parameter the optimizer's fp32 state (`optimizer_slots` moments: Adam's two; DeepSpeed also
    keeps an fp32 master copy)."""
    total = 0
    for parameter in model.parameters():
        numel = getattr(parameter, "ds_numel", None) or parameter.numel()
        share = numel / world_size if zero3 else numel
        total += share * parameter.element_size()
        if parameter.requires_grad:
            total += share * 4 * (optimizer_slots + (1 if zero3 else 0))
    return int(total)


def host_copy_problem(per_process: int, processes_here: int, available: int) -> str | None:
    """None when the host copies of the processes on this machine fit in its available memory; else the one line
    that refuses the run. The copies are kept from one save to the next (see `HostBufferPool`)."""
    needed = per_process * processes_here
    if needed <= available:
        return None
    gib = 1024 ** 3
    each = f" ({per_process / gib:.1f} GiB for each of {processes_here} processes)" if processes_here > 1 else ""
    return (f"--async-save: the host copy of a checkpoint needs about {needed / gib:.1f} GiB of memory on this "
            f"machine{each}, but {available / gib:.1f} GiB is available; drop --async-save (saves then stall "
            "training while they write), or free memory.")


def available_host_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


# --- the writer -----------------------------------------------------------------------------------------------------


@dataclass
class WriteJob:
    """One background save: the staged files, then `finish(ok_everywhere)` on the same thread (the marker,
    checksums, mirror, rotation), where `ok_everywhere` says whether every rank wrote its files."""

    checkpoint: Path
    staged: StagedCheckpoint
    finish: Callable[[bool], None]


class CheckpointWriter:
    """One writer thread, at most one save in flight.

    `submit(job)` starts writing a staged checkpoint and returns at once; `wait()` blocks until the write in flight
    (files, fsync, agreement of every rank, marker) is done and returns the seconds it waited. The thread is not a
    daemon, so an interpreter that exits (an exception out of `train`) still waits for it to finish. An error while
    writing goes to `on_error(checkpoint, error)` at once; `failed` then stays set until `clear_failure()`.
    `group`: the process group the ranks agree on (a gloo group of its own; None in one process).
    """

    def __init__(self, pool: HostBufferPool, on_error: Callable[[Path, BaseException], None], group=None):
        self.pool, self._on_error, self.group = pool, on_error, group
        self._thread: threading.Thread | None = None
        self.in_flight: Path | None = None
        self.failed: str | None = None

    def submit(self, job: WriteJob):
        self.wait()
        self.in_flight = job.checkpoint
        self._thread = threading.Thread(target=self._write, args=(job,), name="checkpoint-writer", daemon=False)
        self._thread.start()

    def wait(self) -> float:
        if self._thread is None:
            return 0.0
        start = time.perf_counter()
        self._thread.join()
        self._thread = None
        return time.perf_counter() - start

    def clear_failure(self):
        self.failed = None

    def _write(self, job: WriteJob):
        ok = True
        try:
            write_staged(job.staged)
        except BaseException as error:  # noqa: BLE001 (reported at once; the ranks still agree below)
            ok = False
            self.failed = f"{type(error).__name__}: {error}"
            self._on_error(job.checkpoint, error)
        finally:
            self.pool.give_back(job.staged.buffers)
            job.staged.files.clear()
        try:
            ok_everywhere = self._agree(ok)
            if not ok_everywhere and self.failed is None:
                self.failed = "another rank's write failed"
            job.finish(ok_everywhere)
        except BaseException as error:  # noqa: BLE001
            self.failed = self.failed or f"{type(error).__name__}: {error}"
            self._on_error(job.checkpoint, error)
        finally:
            self.in_flight = None

    def _agree(self, ok: bool) -> bool:
        """Whether every rank wrote its files (one all-reduce on the writer's own group)."""
        if self.group is None:
            return ok
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
        return bool(flag.item())
