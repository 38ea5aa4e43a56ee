"""scripts/train_grpo.py on the tiny VLM, recording on every rank, at every policy update, the trainer's loss and
TRL's own loss on a batch built from the kept samples alone (tests/rl/test_vision_rows.py's plain construction):
OUTPUT_DIR/loss_records/rank_<i>.json. The reward makes the ranks keep different samples (the even ones on rank 0,
the odd ones on rank 1) in equal numbers: TRL's loss gathers per-sequence metrics across ranks, so its reference
needs the same row count on every rank (zero-weight padding, which evens out unequal counts, is tested on one
process in tests/rl/test_vision_rows.py)."""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from hf_trainkit.commands.train_grpo import main  # noqa: E402
from hf_trainkit.rl.filtered_grpo_trainer import FilteredGRPOTrainer  # noqa: E402
from tests.rl.test_vision_rows import kept_samples_batch  # noqa: E402


RECORDS = []


def rank_reward(completions, **kwargs):
    """Rank 0: the even completions right; rank 1: the odd ones. NSR keeps 8 of 16 on each, not the same rows."""
    right = int(os.environ.get("RANK", "0")) % 2
    return [float(i % 2 != right) for i in range(len(completions))]


_compute_loss = FilteredGRPOTrainer._compute_loss


FORWARDED = []


def record_batch_size(module, args, kwargs):
    FORWARDED.append(kwargs["input_ids"].shape[0])


def recording_compute_loss(self, model, inputs):
    if not getattr(self, "_recording", False):
        self._recording = True
        self.model.register_forward_pre_hook(record_batch_size, with_kwargs=True)
    loss = _compute_loss(self, model, inputs)
    forwarded = FORWARDED[-1]
    keep = inputs.get("keep")
    if keep is not None:  # every rank keeps 8 (see rank_reward): the reference forward runs on all ranks
        with torch.no_grad():
            reference = GRPOTrainer._compute_loss(self, model, kept_samples_batch(inputs, keep.cpu()))
        RECORDS.append({"step": self.state.global_step, "kept": keep.nonzero().flatten().tolist(),
                        "forwarded": forwarded, "ours": loss.item(), "reference": reference.item()})
    return loss


class DumpRecords(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / "loss_records"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank_{args.process_index}.json").write_text(json.dumps(RECORDS))


if __name__ == "__main__":
    FilteredGRPOTrainer._compute_loss = recording_compute_loss
    sys.exit(main(callbacks=[DumpRecords()]))
