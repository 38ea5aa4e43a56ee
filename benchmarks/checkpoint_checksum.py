#!/usr/bin/env python
"""What the checksums in the completion marker cost: at save time against the save itself, at resume time against
the load itself, on a checkpoint of about 1 GB laid out as the Trainer writes it (model.safetensors with the
weights, optimizer.pt with AdamW's two moments, scheduler/RNG files).

The save is what the Trainer does (safetensors `save_file` + `torch.save`, then fsync as a careful save does);
the marker is `write_complete_marker` (size listing + required files), which is all the training loop waits for;
the xxh3-128 checksums (`add_checksums`: every file memory-mapped and hashed, files in parallel threads) are added
by a worker thread while training goes on, and are measured here on their own. Best of N repeats.
Target: what the save costs more <= 5 %.

    python benchmarks/checkpoint_checksum.py [--gigabytes 1.0] [--repeats 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def fsync_tree(folder: Path):
    for file in folder.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def save_checkpoint(folder: Path, weights, optimizer_state, fsync: bool = True):
    from safetensors.torch import save_file
    import torch

    folder.mkdir(parents=True)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    torch.save(optimizer_state, folder / "optimizer.pt")
    torch.save({"last_epoch": 1, "base_lrs": [1e-3]}, folder / "scheduler.pt")
    torch.save({"python": None, "cpu": torch.random.get_rng_state()}, folder / "rng_state.pth")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1, "log_history": []}))
    if fsync:
        fsync_tree(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: the system's temporary folder)")
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file

    from hf_trainkit.checkpointing.marker import add_checksums, write_complete_marker
    from hf_trainkit.checkpointing.validate import inspect_checkpoint

    total = int(args.gigabytes * (1 << 30))
    per_tensor = 16 << 20  # 16 MiB tensors, as a model's layers
    count = max(1, total // 3 // per_tensor)
    weights = {f"layer.{i}.weight": torch.randn(per_tensor // 4) for i in range(count)}
    optimizer_state = {"state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.randn(per_tensor // 4),
                                     "exp_avg_sq": torch.rand(per_tensor // 4)} for i in range(count)},
                       "param_groups": [{"lr": 1e-3, "params": list(range(count))}]}
    rows = {"save_no_fsync": [], "save": [], "marker": [], "marker_no_checksum": [], "load": [], "verify": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for repeat in range(args.repeats):
            checkpoint = Path(folder) / "checkpoint-1"
            start = time.perf_counter()
            save_checkpoint(checkpoint, weights, optimizer_state, fsync=False)
            rows["save_no_fsync"].append(time.perf_counter() - start)
            shutil.rmtree(checkpoint)
            start = time.perf_counter()
            save_checkpoint(checkpoint, weights, optimizer_state)
            rows["save"].append(time.perf_counter() - start)
            start = time.perf_counter()
            write_complete_marker(checkpoint, {"step": 1}, checksum=False)
            rows["marker_no_checksum"].append(time.perf_counter() - start)
            start = time.perf_counter()
            assert add_checksums(checkpoint)
            rows["marker"].append(time.perf_counter() - start)
            start = time.perf_counter()
            load_file(checkpoint / "model.safetensors")
            torch.load(checkpoint / "optimizer.pt", weights_only=True)
            rows["load"].append(time.perf_counter() - start)
            start = time.perf_counter()
            checked = inspect_checkpoint(checkpoint, verify=True)
            assert checked.valid, checked.reason
            rows["verify"].append(time.perf_counter() - start)
            shutil.rmtree(checkpoint)
    size = sum(t.numel() * 4 for t in weights.values()) * 3
    best = {key: min(values) for key, values in rows.items()}
    print(f"checkpoint: {size / (1 << 30):.2f} GiB ({len(weights)} weight tensors, AdamW moments), "
          f"best of {args.repeats}, {os.cpu_count()} cores")
    print(f"{'what':<50} {'seconds':>8} {'ratio':>8}")
    print(f"{'save (safetensors + torch.save + fsync)':<50} {best['save']:>8.3f} {1.0:>8.3f}")
    print(f"{'save without fsync (page cache only)':<50} {best['save_no_fsync']:>8.3f} "
          f"{best['save_no_fsync'] / best['save']:>8.3f}")
    print(f"{'marker (sizes, required files): training waits':<50} {best['marker_no_checksum']:>8.3f} "
          f"{best['marker_no_checksum'] / best['save']:>8.3f}   "
          f"({best['marker_no_checksum'] / best['save_no_fsync']:.4f} of a save without fsync; target <= 0.05)")
    print(f"{'xxh3-128 of every file (worker thread)':<50} {best['marker']:>8.3f} {best['marker'] / best['save']:>8.3f}"
          f"   ({best['marker'] / best['save_no_fsync']:.3f} of a save without fsync)")
    print(f"{'load at resume (safetensors + torch.load)':<50} {best['load']:>8.3f} {1.0:>8.3f}")
    print(f"{'verify at resume (checksums + pickle probe)':<50} {best['verify']:>8.3f} "
          f"{best['verify'] / best['load']:>8.3f}   (of the load)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
