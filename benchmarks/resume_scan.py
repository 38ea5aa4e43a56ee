#!/usr/bin/env python
"""`find_resume_checkpoint` vs transformers' `get_last_checkpoint` on an output dir with many checkpoints.

Builds DIR with N checkpoints (copies of a real tiny checkpoint written by scripts/train_grpo.py, with its
completion marker), damages the newest few (truncated weights, a missing trainer_state.json, an empty folder of
a save that died at once), scrambles every mtime, then times both functions and says whether each picked a valid
checkpoint. Target: under 0.2 s and always valid.

    python benchmarks/resume_scan.py [--checkpoints 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def build(root: Path, count: int) -> Path:
    source = root / "source"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "train_grpo.py"), "--mode", "psr", "--max-steps", "1",
                    "--save-steps", "1", "--output-dir", str(source), "--quiet", "--no-loss-curve",
                    "--no-diagnostics"], check=True, capture_output=True)
    template = source / "checkpoint-1"
    out = root / "run"
    out.mkdir()
    for step in range(1, count + 1):
        target = out / f"checkpoint-{step}"
        target.mkdir()
        for file in template.iterdir():
            # Hard links: 1,000 real-size checkpoints without 1,000 copies of the bytes.
            os.link(file, target / file.name)
        state = json.loads((template / "trainer_state.json").read_text())
        state["global_step"] = step
        (target / "trainer_state.json").unlink()
        (target / "trainer_state.json").write_text(json.dumps(state))
        marker = json.loads((template / "hf_trainkit_complete.json").read_text())
        marker["files"]["trainer_state.json"] = (target / "trainer_state.json").stat().st_size
        if "checksums" in marker:  # the state was rewritten for this step: so is its checksum
            from hf_trainkit.checkpointing.integrity import file_checksum

            marker["checksums"]["trainer_state.json"] = file_checksum(target / "trainer_state.json")
        (target / "hf_trainkit_complete.json").unlink()
        (target / "hf_trainkit_complete.json").write_text(json.dumps(marker))
    newest = out / f"checkpoint-{count}"
    weights = newest / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data[: len(data) // 2])  # a save cut in the middle
    (out / f"checkpoint-{count - 1}" / "trainer_state.json").unlink()
    (out / f"checkpoint-{count + 1}").mkdir()  # a save that died before writing anything
    rng = random.Random(0)
    for path in out.iterdir():
        stamp = rng.uniform(1e9, 2e9)
        os.utime(path, (stamp, stamp))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args(argv)

    from transformers.trainer_utils import get_last_checkpoint

    from hf_trainkit.checkpointing import find_resume_checkpoint, inspect_checkpoint

    with tempfile.TemporaryDirectory() as root:
        out = build(Path(root), options.checkpoints)
        rows = []
        for name, function in (("transformers get_last_checkpoint", get_last_checkpoint),
                               ("hf_trainkit find_resume_checkpoint (sizes only)",
                                lambda d: find_resume_checkpoint(d, warn=False, verify=False)),
                               ("hf_trainkit find_resume_checkpoint (default: + checksums, pickles)",
                                lambda d: find_resume_checkpoint(d, warn=False))):
            times = []
            for _ in range(options.repeats):
                start = time.perf_counter()
                picked = function(str(out))
                times.append(time.perf_counter() - start)
            valid = picked is not None and inspect_checkpoint(picked, verify=True).valid
            rows.append((name, min(times), Path(picked).name if picked else None, valid))
    print(f"# {options.checkpoints} checkpoints (the newest ones damaged), mtimes scrambled; best of "
          f"{options.repeats}")
    print()
    print("| function | seconds | picked | valid |")
    print("|---|---|---|---|")
    for name, seconds, picked, valid in rows:
        print(f"| {name} | {seconds:.4f} | {picked} | {'yes' if valid else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
