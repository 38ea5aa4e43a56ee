"""Where a run starts: already finished, the newest valid checkpoint (the mirror's, when newer), a named one, or the
next older one when loading a checkpoint failed."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from ..argparsing import UsageError
from ..constants import TRAINING_COMPLETE


def resume_point(options: argparse.Namespace, config, steps=None) -> tuple[bool, str | None]:
    """(already finished, checkpoint to resume from) for `options.output_dir`; `steps`: resume only from one of
    these (the steps complete on every node, when each node has its own disk).

    Raises `SetAsideError` (one line) when a checkpoint folder newer than the starting point cannot be moved aside:
    a save of this run would collide with it, so the run stops before training rather than at that save.
    """
    finished, checkpoint = _resume_point(options, config, steps)
    if not finished and options.output_dir:
        from .save_request import saving_enabled
        from .set_aside import check_nothing_in_the_way

        start = step_of(checkpoint) if checkpoint else 0
        if saving_enabled(config) and (checkpoint is None or start > 0):  # else the step is known only once loaded
            check_nothing_in_the_way(options.output_dir, start)
    return finished, checkpoint


def _resume_point(options: argparse.Namespace, config, steps=None) -> tuple[bool, str | None]:
    from . import find_resume_checkpoint, read_training_complete
    from .discover import checkpoint_names

    if options.no_resume:
        return False, None
    if options.resume_from_checkpoint == "latest":
        return False, find_resume_checkpoint(options.output_dir, steps=steps)
    if options.resume_from_checkpoint is not None:
        named = checkpoint_names(options.output_dir).get(options.resume_from_checkpoint) \
            if os.sep not in options.resume_from_checkpoint else None
        if named:
            return False, os.path.join(options.output_dir, named)
        if not os.path.isdir(options.resume_from_checkpoint):
            raise UsageError(f"--resume-from-checkpoint {options.resume_from_checkpoint}: no such directory or "
                             f"checkpoint name in {options.output_dir}.")
        return False, options.resume_from_checkpoint
    record = read_training_complete(options.output_dir)
    if record and record_matches(options.output_dir, record, config):
        return finished_or_finish(options.output_dir, record, steps)
    checkpoint = find_resume_checkpoint(options.output_dir, steps=steps)
    end = _last_step_state(checkpoint, config) if checkpoint else None
    if end is not None:
        # Killed after the checkpoint of the last step, before the final save: nothing is left to train (and a
        # Trainer resumed at its last step would train one step more), only the final files to write.
        said = (f"{checkpoint} is the last step of this run ({end['global_step']} of {end['max_steps']}), but the "
                f"run ended before its final weights and state were written")
        fields = {"global_step": end["global_step"], "max_steps": end["max_steps"],
                  "num_train_epochs": config.num_train_epochs}
        if _finish_from(options.output_dir, checkpoint, said, fields):
            return True, None
    return False, checkpoint


def _last_step_state(checkpoint: str, config) -> dict | None:
    """The checkpoint's trainer state when it is at the last step of the run `config` describes, else None."""
    import json

    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_bytes())
        step, max_steps = state["global_step"], state["max_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(step, int) or not isinstance(max_steps, int) or max_steps <= 0 or step < max_steps:
        return None
    if config.max_steps > 0:
        return state if max_steps == config.max_steps else None
    return state if _covers_epochs(state.get("epoch"), config.num_train_epochs) else None


def _covers_epochs(epoch, num_train_epochs: float) -> bool:
    """Whether a run at `epoch` (trainer_state.json's, a float) has trained `num_train_epochs`: the Trainer stops an
    epoch-mode run at ceil(epochs x steps per epoch) steps, so its last epoch value is at least that."""
    return isinstance(epoch, (int, float)) and not isinstance(epoch, bool) and epoch >= num_train_epochs - 1e-6


def record_matches(output_dir: str, record: dict, config) -> bool:
    """Whether `record` (a parsed training_complete.json) is of the run `config` asks for: the same --max-steps;
    in epoch mode (max_steps=-1, the default for a user's data set) the same --num-train-epochs, and a run that
    trained them or was stopped before its end (a stop request, early stopping). The record's `max_steps` is the
    Trainer's count of steps, never -1, so an epoch-mode run is known by its epochs; a run cut short by an earlier
    --max-steps is not taken for it (its epoch is short of the epochs asked for, and it reached its own end)."""
    if config.max_steps > 0:
        return record.get("max_steps") == config.max_steps
    if record.get("num_train_epochs") != config.num_train_epochs:
        return False
    step, max_steps = record.get("global_step"), record.get("max_steps")
    if isinstance(step, int) and isinstance(max_steps, int) and step < max_steps:
        return True  # stopped before its end: finished as the user decided, said so with the step (run.py)
    epoch = _final_epoch(output_dir, step)
    return epoch is None or _covers_epochs(epoch, config.num_train_epochs)


def _final_epoch(output_dir: str, step) -> float | None:
    """The epoch of the final trainer_state.json (else of the checkpoint of the final step); None when neither
    can be read (what the record vouches for is then checked, and repaired, by `finished_or_finish`)."""
    import json

    from ..constants import checkpoint_dir

    candidates = [Path(output_dir)] + ([Path(checkpoint_dir(output_dir, step))] if isinstance(step, int) else [])
    for folder in candidates:
        try:
            state = json.loads((folder / "trainer_state.json").read_bytes())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(state, dict) and state.get("global_step") == step and \
                isinstance(state.get("epoch"), (int, float)):
            return float(state["epoch"])
    return None


def _finish_from(output_dir: str, checkpoint: str, said: str, fields: dict) -> bool:
    """Write the final files of a run from the checkpoint of its last step, then the completion record; False
    when the checkpoint has no weights of its own to copy, or weights that do not load (the caller resumes from it,
    whose load then fails over to an older checkpoint)."""
    from .finished import finish_from_checkpoint, weights_load_problem, write_training_complete

    if weights_load_problem(checkpoint):  # resuming from it finds out at the load, and falls back to an older one
        return False
    written = finish_from_checkpoint(output_dir, checkpoint)
    if written is None:
        return False
    write_training_complete(output_dir, {**fields, "finished_from": os.path.basename(checkpoint)})
    print(f"{said}: wrote the final weights and state from {checkpoint}, the checkpoint of that step "
          f"({', '.join(written)}); no step was trained again.", flush=True)
    return True


def finished_or_finish(output_dir: str, record: dict, steps=None) -> tuple[bool, str | None]:
    """(True, None) when what the completion record vouches for (the final state and weights) is there and intact.
    Otherwise the job is finished, saying how: the final weights and state written from the checkpoint of the
    final step (no training), or a resume from the newest valid checkpoint that trains the missing steps, or
    (no valid checkpoint left) a start from scratch."""
    from . import find_resume_checkpoint
    from .finished import final_outputs_problem

    problem = final_outputs_problem(output_dir, record)
    if not problem:
        return True, None
    final_step = record.get("global_step")
    said = (f"{os.path.join(output_dir, TRAINING_COMPLETE)} says the run finished at step {final_step}, but "
            f"{problem}")
    checkpoint = find_resume_checkpoint(output_dir, steps=steps)
    if checkpoint and step_of(checkpoint) == final_step:
        fields = {key: record[key] for key in ("global_step", "max_steps", "num_train_epochs") if key in record}
        if _finish_from(output_dir, checkpoint, said, fields):
            return True, None
        print(f"{said}: resuming from {checkpoint}, the checkpoint of that step, to write them.", flush=True)
        return False, checkpoint
    if checkpoint:
        start = step_of(checkpoint)
        print(f"{said}: resuming from {checkpoint}, the newest valid checkpoint, to train steps {start + 1}-"
              f"{final_step} again and write them.", flush=True)
        return False, checkpoint
    print(f"{said}, and no valid checkpoint is left: training again from the start.", flush=True)
    return False, None

def finished_run_message(output_dir: str) -> str:
    """What a re-run of a finished run says: the step it ended at, how (its end, a stop request, early stopping) and
    the flag that does what the user may want instead."""
    from . import find_resume_checkpoint, read_training_complete
    from ..constants import checkpoint_dir
    from .marker import read_marker

    record = read_training_complete(output_dir) or {}
    step, max_steps = record.get("global_step"), record.get("max_steps")
    where = f"{output_dir} ({TRAINING_COMPLETE})"
    if not (isinstance(step, int) and isinstance(max_steps, int) and step < max_steps):
        at = f" at step {step} of {max_steps}" if isinstance(step, int) and isinstance(max_steps, int) else ""
        return (f"{where} already holds a finished run{at}: nothing to train. To train longer: a larger "
                "--max-steps (or --num-train-epochs), which resumes from its last checkpoint; to train again from "
                "scratch: --no-resume.")
    stopped_by = read_marker(checkpoint_dir(output_dir, step)).get("stopped_by")
    how = {"control request": " by a stop request (hf-trainkit control stop)",
           "early stopping": " by early stopping"}.get(stopped_by, "")
    said = f"{where} holds a run stopped at step {step} of {max_steps}{how}: nothing to train."
    latest = find_resume_checkpoint(output_dir, warn=False)
    if latest is None:
        return f"{said} No checkpoint of it is left to continue from; to train again from scratch: --no-resume."
    return (f"{said} To continue from {os.path.basename(latest)} to step {max_steps}: the same command with "
            "--resume-from-checkpoint latest; to train again from scratch: --no-resume.")


def agreed_resume_point(options: argparse.Namespace, config, layout=None, mirror=None) -> tuple[bool, str | None]:
    """`resume_point` decided by the main process and broadcast, so every rank resumes from the same checkpoint
    (or all stop) even if their views of the disk differ. With a disk per node (`layout.views_differ`), the
    checkpoint is the newest step complete on every node (`nodes.agreed_resume_step`), a node first pulling its
    part from `mirror` where it lacks it."""
    if config.world_size == 1:
        return resume_point(options, config)
    from accelerate.utils import broadcast_object_list

    steps = None
    if layout is not None and layout.views_differ and not options.no_resume \
            and options.resume_from_checkpoint in (None, "latest"):
        steps = steps_complete_on_every_node(options.output_dir, config, layout, mirror)
    decision = [None]
    if config.process_index == 0:
        try:
            decision = [("ok", resume_point(options, config, steps))]
        except UsageError as error:
            decision = [("error", str(error))]
    broadcast_object_list(decision, from_process=0)
    status, value = decision[0]
    if status == "error":
        raise UsageError(value)
    return value


def steps_complete_on_every_node(output_dir: str, config, layout, mirror=None) -> set[int]:
    """{the newest step every node can resume from} (empty: none, start from scratch). Collective.

    Each node's writing process reports its view (and its mirror's complete steps); the agreed step's part is
    pulled from the mirror where a node lacks it, then verified byte for byte on every node; a part that fails is
    taken out of that node's view and the next step is agreed. Raises `UsageError` when some node holds a
    complete checkpoint but no step is complete on every node (a silent restart from scratch would throw it away):
    each node prints what it has and lacks.
    """
    from ..distributed import barrier
    from ..constants import checkpoint_dir
    from .nodes import agreed_resume_step, gather_node_views, node_view
    from .validate import inspect_checkpoint

    writes = config.should_save
    failed: dict[int, str] = {}
    while True:
        report = None
        if writes:
            mirrored = set()
            if mirror is not None:
                try:
                    mirrored = set(mirror.complete_steps())
                except OSError as error:
                    print(f"Node {layout.node}: checkpoint mirror {mirror.url} unreachable ({error}); using the "
                          "local checkpoints only.", flush=True)
            report = ({**node_view(output_dir), **failed}, mirrored - set(failed))
        views = gather_node_views(report, layout, writes)
        agreement = agreed_resume_step([v[0] for v in views], [v[1] for v in views])
        if agreement.missing:
            if writes:
                print(f"Cannot resume {output_dir}: {agreement.missing[layout.node]}.", file=sys.stderr, flush=True)
            barrier()
            raise UsageError(f"no checkpoint of {output_dir} is complete on every node ({len(views)} nodes; each "
                             "said above what it lacks): restore the missing parts, or pass --no-resume to train "
                             "from scratch.")
        if agreement.step is None:
            return set()
        checkpoint = checkpoint_dir(output_dir, agreement.step)
        problem = None
        if writes:
            try:
                if layout.node in agreement.pull:
                    mirror.pull(agreement.step, output_dir)
                    print(f"Node {layout.node}: pulled its part of {checkpoint.name} from {mirror.url}.", flush=True)
                problem = inspect_checkpoint(checkpoint, verify=True).reason
            except OSError as error:
                problem = f"pulling it from the mirror failed ({error})"
        problems = gather_node_views(problem, layout, writes)
        if not any(problems):
            if config.process_index == 0:
                for line in agreement.skipped:
                    print(f"Skipping {line}: resuming from {checkpoint.name}, the newest step complete on every "
                          "node.", flush=True)
            return {agreement.step}
        if problems[layout.node]:
            failed[agreement.step] = problems[layout.node]


def pull_from_mirror(options: argparse.Namespace, config, callbacks: list):
    """Bring the mirror's newest complete checkpoint into --output-dir when it is newer than the local ones."""
    from .mirror import newest_local_step

    mirror = checkpoint_mirror(callbacks)
    if mirror is None or options.no_resume:
        return
    with config.main_process_first(local=False, desc="pull from the checkpoint mirror"):
        if config.process_index == 0:
            try:
                remote = mirror.complete_steps()
            except OSError as error:
                print(f"Checkpoint mirror {mirror.url} unreachable ({error}); using local checkpoints only.")
                return
            if remote and remote[-1] > newest_local_step(options.output_dir):
                local = mirror.pull(remote[-1], options.output_dir)
                print(f"Pulled {local.name} from {mirror.url} (newer than any local checkpoint).")


def checkpoint_mirror(callbacks: list):
    """The `CheckpointMirror` the callbacks copy to (None without one)."""
    return next((cb.mirror for cb in callbacks if getattr(cb, "mirror", None) is not None), None)


NO_FALLBACK = object()


# Functions of transformers/accelerate/DeepSpeed that read a checkpoint: an error raised inside one of them means
# the checkpoint could not be loaded, not that training itself failed.
LOADERS = {"_load_from_checkpoint", "load_from_json", "_load_optimizer_and_scheduler", "_load_rng_state",
            "_load_scaler", "_load_callback_state", "load_checkpoint", "load_state_dict", "load_file",
            "deepspeed_load_checkpoint", "_load_checkpoint"}


def fallback_after_failed_load(error: BaseException, trainer, checkpoint: str | None, config, options):
    """The next older valid checkpoint (or None: from scratch) when loading `checkpoint` failed, else NO_FALLBACK.

    Only in one process: with several, the ranks would have to agree that the load failed everywhere, and a rank
    that loaded fine is already waiting in a collective.
    """
    import traceback

    from . import find_resume_checkpoint
    from .marker import mark_unloadable

    if checkpoint is None or config.world_size > 1 or trainer.state.global_step > step_of(checkpoint):
        return NO_FALLBACK
    frames = {frame.name for frame in traceback.extract_tb(error.__traceback__)}
    if not frames & LOADERS:
        return NO_FALLBACK
    reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
    mark_unloadable(checkpoint, reason)
    older = find_resume_checkpoint(options.output_dir, warn=False)  # the one warning is below
    print(f"Warning: could not load {checkpoint} ({reason}); resuming from "
          f"{older or 'scratch (no older valid checkpoint)'} instead. {checkpoint} stays on disk, marked unloadable.",
          file=sys.stderr, flush=True)
    return older


def step_of(checkpoint: str) -> int:
    match = re.search(r"checkpoint-(\d+)$", os.path.normpath(checkpoint))
    return int(match.group(1)) if match else 0


def disk_full_message(error: BaseException, output_dir: str) -> str | None:
    """A one-line explanation when `error` comes from a full disk. torch does not always say so: a cut-short
    `torch.save` reports "unexpected pos" or "file write failed", so an error raised while saving counts as a full
    disk when less room is left than the newest checkpoint takes (and at least 256 MiB)."""
    import errno
    import shutil
    import traceback

    from . import find_resume_checkpoint

    chain, seen = [], error
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    full = any(getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) for e in chain)
    latest = find_resume_checkpoint(output_dir, warn=False, verify=False)
    if not full:
        saving = any(frame.name in ("_save_checkpoint", "save_model", "save_state") for e in chain
                     for frame in traceback.extract_tb(e.__traceback__))
        needed = 256 << 20
        if latest:
            needed = max(needed, sum(f.stat().st_size for f in Path(latest).rglob("*") if f.is_file()))
        try:
            full = saving and shutil.disk_usage(output_dir).free < needed
        except OSError:
            full = False
    if not full:
        return None
    return (f"no space left on device while writing to {output_dir}. Free some space (or lower --save-total-limit, "
            f"or point --output-dir at a larger disk), then run the same command again: it resumes from "
            f"{latest or 'the start (no complete checkpoint yet)'}; the cut-short checkpoint is skipped.")
