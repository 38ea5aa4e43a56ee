"""The training time a checkpoint save costs, synchronous against `async_save=True`, in one run.

A plain transformers `Trainer` (causal LM built from a config, random tokens, AdamW) with
`CheckpointManagerCallback`, saving every `--save-every` steps, three times over the same steps:

- **none**: no saves (the baseline step time);
- **sync**: today's saves (the Trainer writes; the marker once every file is there);
- **async**: `async_save=True` (the training thread stages a host copy; a writer thread writes, fsyncs, marks).

For each it prints the stall of one save (the gap between a save step's end and the next step's start, minus that
gap on steps without a save), the steady-state step time with saves, and the time lost per save over the whole run
(its wall time minus the baseline's, per save: what the writer thread's competition for the CPU costs included).
The ratio async stall / sync stall is the figure issue 33 sets (target <= 10 %). Then the same state (weights and
optimizer) through torch.distributed.checkpoint's `async_save`, for comparison: the time until it hands back its
future (its stall) and until the write is done.

    python benchmarks/checkpoint_stall.py                 # ~1.9 GB of state (160 M parameters + Adam), ~5 min
    python benchmarks/checkpoint_stall.py --hidden 512    # a smaller model, quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(hidden: int, layers: int, vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                         num_key_value_heads=max(hidden // 64, 1), max_position_embeddings=64,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config)


class StepGaps:
    """The time from each step's end to the next step's start (where logging and saving happen)."""

    def __init__(self):
        from transformers import TrainerCallback

        gaps, ends = {}, {}

        class Recorder(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step in ends:
                    gaps[state.global_step] = time.perf_counter() - ends[state.global_step]

            def on_step_end(self, args, state, control, **kwargs):
                ends[state.global_step] = time.perf_counter()

            def on_train_end(self, args, state, control, **kwargs):
                self.end = time.perf_counter()

        self.gaps, self.ends, self.callback = gaps, ends, Recorder()


def train(mode: str, hidden: int, layers: int, vocab: int, steps: int, save_every: int, root: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from hf_trainkit.callbacks import CheckpointManagerCallback

    model = build(hidden, layers, vocab)
    generator = torch.Generator().manual_seed(1)
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(vocab, (steps * 2, 16), generator=generator)
            .tolist()]
    out = root / mode
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=2,
                             learning_rate=1e-4, logging_steps=1000, report_to=[], use_cpu=True, seed=0,
                             save_strategy="no" if mode == "none" else "steps", save_steps=save_every,
                             disable_tqdm=True, dataloader_num_workers=0)
    gaps = StepGaps()
    manager = CheckpointManagerCallback(async_save=mode == "async")
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      callbacks=[gaps.callback] + ([manager] if mode != "none" else []))
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    step_times = [gaps.ends[s + 1] - gaps.ends[s] for s in range(2, steps) if s + 1 in gaps.ends]
    saves = [s for s in gaps.gaps if s % save_every == 0]
    plain = [g for s, g in gaps.gaps.items() if s % save_every and s > 1]
    state_bytes = sum(f.stat().st_size for f in out.glob(f"checkpoint-{save_every}/*") if f.is_file()) \
        if mode != "none" else 0
    result = {"wall": wall, "saves": len(saves), "stall": statistics.median(gaps.gaps[s] for s in saves) -
              statistics.median(plain) if saves else 0.0, "step": statistics.median(step_times),
              "mean_step": statistics.mean(step_times), "bytes": state_bytes,
              "pool": manager._writer.pool.nbytes if manager._writer else 0}
    del trainer, model
    shutil.rmtree(out, ignore_errors=True)
    return result


def dcp_async(hidden: int, layers: int, vocab: int, root: Path) -> dict | None:
    """torch.distributed.checkpoint.async_save on the same state (weights + Adam after one step)."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    model = build(hidden, layers, vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randint(vocab, (2, 16)), labels=torch.randint(vocab, (2, 16))).loss.backward()
    optimizer.step()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29731")
        dist.init_process_group("gloo", rank=0, world_size=1)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    times = {}
    for attempt in ("first", "second"):  # the second reuses nothing either, but warms the file system
        target = root / f"dcp-{attempt}"
        start = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=str(target))
        times[f"{attempt}_stall"] = time.perf_counter() - start
        future.result()
        times[f"{attempt}_done"] = time.perf_counter() - start
        shutil.rmtree(target, ignore_errors=True)
    start = time.perf_counter()
    dcp.save(state, checkpoint_id=str(root / "dcp-sync"))
    times["sync"] = time.perf_counter() - start
    shutil.rmtree(root / "dcp-sync", ignore_errors=True)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--save-every", type=int, default=6)
    parser.add_argument("--dir", default=None, help="where the checkpoints go (default: a temporary folder)")
    options = parser.parse_args(argv)
    from transformers.utils import logging

    logging.set_verbosity_error()
    root = Path(options.dir or tempfile.mkdtemp(prefix="checkpoint-stall-"))
    root.mkdir(parents=True, exist_ok=True)
    params = sum(p.numel() for p in build(options.hidden, options.layers, options.vocab).parameters())
    print(f"model: {params / 1e6:.0f} M parameters (fp32), AdamW; {options.steps} steps, a save every "
          f"{options.save_every}; checkpoints in {root}", flush=True)
    results = {}
    for mode in ("none", "sync", "async"):
        results[mode] = train(mode, options.hidden, options.layers, options.vocab, options.steps,
                              options.save_every, root)
        print(f"  {mode}: done ({results[mode]['wall']:.1f} s)", flush=True)
    base, sync, asynchronous = results["none"], results["sync"], results["async"]
    gib = 1024 ** 3
    print(f"\ncheckpoint size: {sync['bytes'] / gib:.2f} GiB; async host copy kept: {asynchronous['pool'] / gib:.2f} "
          "GiB\n")
    print(f"{'':8} {'stall of one save':>18} {'step time (median)':>19} {'mean step':>10} {'lost per save':>14}")
    for mode, result in results.items():
        lost = (result["wall"] - base["wall"]) / result["saves"] if result["saves"] else 0.0
        print(f"{mode:8} {result['stall']:>16.3f} s {result['step']:>17.3f} s {result['mean_step']:>8.3f} s "
              f"{lost:>12.3f} s")
    ratio = asynchronous["stall"] / sync["stall"] if sync["stall"] > 0 else float("nan")
    lost_ratio = ((asynchronous["wall"] - base["wall"]) / max(sync["wall"] - base["wall"], 1e-9))
    print(f"\nasync stall / sync stall: {ratio:.3f} (target <= 0.10); whole-run time lost, async / sync: "
          f"{lost_ratio:.3f}")
    try:
        dcp = dcp_async(options.hidden, options.layers, options.vocab, root)
    except Exception as error:  # noqa: BLE001 (a comparison, not the measurement)
        print(f"torch DCP async_save: not measured ({type(error).__name__}: {error})")
    else:
        print(f"torch DCP on the same state (weights + AdamW): async_save returns after {dcp['second_stall']:.3f} s "
              f"(first call {dcp['first_stall']:.3f} s), written after {dcp['second_done']:.3f} s; dcp.save "
              f"{dcp['sync']:.3f} s; its stall / our sync stall: {dcp['second_stall'] / sync['stall']:.3f}")
    if options.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
