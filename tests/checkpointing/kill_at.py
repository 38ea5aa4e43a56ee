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
    mid-background-write:STEP
                     (--async-save) the background write of step STEP cut short once training has gone on to step
                     STEP + 1: the optimizer file (`optimizer.pt`, or under ZeRO-3 the rank's `*optim_states.pt`
                     shard) left at half its bytes, on the rank that KILL_RANK names (0 by default)
    fail-write:STEP  (--async-save) the background write of step STEP fails: `optimizer.pt` of checkpoint-STEP is
                     made a folder before the write (the file cannot be written: a real IsADirectoryError)

Points that do not kill (the process ends as training makes it end):

    sigterm-in-write:STEP
                     (--async-save) the background write of step STEP sends this process a real SIGTERM, then holds
                     its files until training has gone on to step STEP + 1 (so the preemption save there waits for
                     it); every later background write is held 1 s, so that the stop finds it still in flight
    raise-in-write:STEP
                     (--async-save) the background write of step STEP is held until training has gone on to step
                     STEP + 1, where a callback raises `RuntimeError` out of `on_step_end`; the write goes on 1 s
                     after the raise, so that the exception finds it still in flight
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


class TrainingWentOn(TrainerCallback):
    """Lets a background write go on only once training has reached `step`."""

    def __init__(self, step: int):
        import threading

        self.step, self.reached = step, threading.Event()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            self.reached.set()


def cut_background_write_short(step: int) -> TrainerCallback:
    from hf_trainkit.checkpointing import async_save

    went_on, write = TrainingWentOn(step + 1), async_save.StagedFile.write

    def write_then_die(self, torch_save, safetensors_save):
        if f"checkpoint-{step}" in self.path.parts and self.path.name.endswith(("optimizer.pt", "optim_states.pt")) \
                and os.environ.get("RANK", "0") == os.environ.get("KILL_RANK", "0"):
            assert went_on.reached.wait(timeout=120), "training did not go on during the background write"
            write(self, torch_save, safetensors_save)
            data = self.path.read_bytes()
            self.path.write_bytes(data[: len(data) // 2])
            die()
        write(self, torch_save, safetensors_save)

    async_save.StagedFile.write = write_then_die
    return went_on


def hold_background_writes(step: int, on_first_write=None, then_hold: float = 0.0):
    """The writer of checkpoint-`step` runs `on_first_write()` before its first file, then waits until training
    reached step `step` + 1 (and `then_hold` s more); the writer of every later checkpoint waits `then_hold` s
    before its first file."""
    import threading
    import time

    from hf_trainkit.checkpointing import async_save

    went_on, write, started, held = TrainingWentOn(step + 1), async_save.StagedFile.write, threading.Event(), set()

    def held_write(self, torch_save, safetensors_save):
        folder = next((part for part in reversed(self.path.parts) if part.startswith("checkpoint-")), "")
        if folder == f"checkpoint-{step}" and not started.is_set():
            started.set()
            if on_first_write is not None:
                on_first_write()
            assert went_on.reached.wait(timeout=120), "training did not go on during the background write"
            time.sleep(then_hold)
        elif folder and int(folder.split("-")[1]) > step and folder not in held:
            held.add(folder)
            time.sleep(then_hold)
        write(self, torch_save, safetensors_save)

    async_save.StagedFile.write = held_write
    return went_on


class RaiseAt(TrainerCallback):
    """Raises `RuntimeError` out of `on_step_end` at `step` (after `went_on` saw the step: callbacks run in order)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            print(f"kill_at: raising at step {self.step}", flush=True)
            raise RuntimeError(f"kill_at: raised at step {self.step}")


class UnwritableOptimizerFile(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and args.should_save:
            (Path(args.output_dir) / f"checkpoint-{self.step}" / "optimizer.pt").mkdir(parents=True, exist_ok=True)


def main():
    point, argv = sys.argv[1], sys.argv[2:]
    extra = []
    if point.startswith("mid-background-write:"):
        extra.append(cut_background_write_short(int(point.split(":")[1])))
    if point.startswith("sigterm-in-write:"):
        extra.append(hold_background_writes(int(point.split(":")[1]), lambda: os.kill(os.getpid(), signal.SIGTERM),
                                            then_hold=1.0))
    if point.startswith("raise-in-write:"):
        step = int(point.split(":")[1])
        extra += [hold_background_writes(step, then_hold=1.0), RaiseAt(step + 1)]
    if point.startswith("fail-write:"):
        extra.append(UnwritableOptimizerFile(int(point.split(":")[1])))
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

    code = train(argv, callbacks=[KillAt(point), *extra])
    if point == "after-record":
        die()
    sys.exit(code)


if __name__ == "__main__":
    main()
