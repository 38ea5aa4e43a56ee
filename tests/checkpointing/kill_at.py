"""`python kill_at.py POINT ARGV...`: `scripts/train_grpo.py ARGV...`, which kills itself with SIGKILL (a real kill:
no handler, no cleanup) at POINT near the end of training, so that a test can land a kill in each window:

    last-step        the last optimizer step is done; its log and checkpoint are not written yet
    last-checkpoint  the checkpoint of the last step is complete (marker written)
    train-end        training has ended (on_train_end ran); nothing written at the top of the output dir yet
    final-save       the final save cut short: trainer_state.json and config written, model.safetensors left at
                     half its bytes, as a kill in the middle of writing it leaves it
    after-record     everything written, training_complete.json last; killed before the process exits
    mid-save:STEP    the save of step STEP cut short on the node that KILL_NODE names (torchrun's GROUP_RANK; the
                     only node by default): its files are written, its completion marker is not
"""

import os
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(TrainerCallback):
    def __init__(self, point: str):
        self.point = point

    def on_step_end(self, args, state, control, **kwargs):
        if self.point == "last-step" and state.global_step >= state.max_steps:
            die()

    def on_save(self, args, state, control, **kwargs):  # after the checkpoint manager's: the marker is written
        if self.point == "last-checkpoint" and state.global_step >= state.max_steps:
            die()

    def on_train_end(self, args, state, control, **kwargs):
        if self.point == "train-end":
            die()


def main():
    point, argv = sys.argv[1], sys.argv[2:]
    if point.startswith("mid-save:"):
        from hf_trainkit.rl.filtered_grpo_trainer import FilteredGRPOTrainer

        step, save_checkpoint = int(point.split(":")[1]), FilteredGRPOTrainer._save_checkpoint

        def killed_after_files(self, *args, **kwargs):
            save_checkpoint(self, *args, **kwargs)
            if self.state.global_step == step and os.environ.get("GROUP_RANK", "0") == os.environ.get("KILL_NODE", "0"):
                die()

        FilteredGRPOTrainer._save_checkpoint = killed_after_files
    if point == "final-save":
        from hf_trainkit.rl.filtered_grpo_trainer import FilteredGRPOTrainer

        save_model = FilteredGRPOTrainer.save_model

        def cut_short(self, output_dir=None, _internal_call=False):
            save_model(self, output_dir, _internal_call)
            if output_dir is None:  # the final save at the top (checkpoints pass their folder)
                weights = Path(self.args.output_dir) / "model.safetensors"
                data = weights.read_bytes()
                weights.write_bytes(data[: len(data) // 2])
                die()

        FilteredGRPOTrainer.save_model = cut_short
    from hf_trainkit.commands.train_grpo import main as train

    code = train(argv, callbacks=[KillAt(point)])
    if point == "after-record":
        die()
    sys.exit(code)


if __name__ == "__main__":
    main()
