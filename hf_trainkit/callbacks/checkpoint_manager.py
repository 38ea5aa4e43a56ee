"""The checkpoint manager: a completion marker on every save, checksums, safe rotation, the mirror, and the
training-complete record."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback
from transformers.utils import logging

from ..checkpointing.discover import list_checkpoints
from ..checkpointing.finished import write_training_complete
from ..checkpointing.marker import (BackgroundChecksums, IncompleteCheckpointError, invalidate_marker, read_marker,
                                    write_complete_marker, write_deepspeed_latest, write_json_atomically)
from ..checkpointing.policy import pinned_names
from ..checkpointing.rotate import checkpoints_to_delete, counting_only_complete_everywhere
from ..checkpointing.save_request import REASONS, SaveRequest, pop_save_request, saving_enabled, was_preempted
from ..constants import COMPLETE_MARKER, STALE_MARKER, TRAINING_COMPLETE, WRITING_MARKER, checkpoint_dir
from ..distributed import barrier


logger = logging.get_logger(__name__)

# checkpoints (valid ones, by step), protected names -> the checkpoints to delete.
KeepRule = Callable[[list, set], list]


def _has_config(model) -> bool:
    """Whether saving `model` writes a config.json (a transformers model, or a PEFT model around one)."""
    model = getattr(model, "module", model)  # DDP / DeepSpeed wrappers
    return hasattr(model, "config") and hasattr(model, "save_pretrained")


def _calling_trainer():
    """The `Trainer` whose method is calling (the training loop calls `on_train_begin`), or None."""
    from transformers import Trainer

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


class CheckpointManagerCallback(TrainerCallback):
    """Make every checkpoint safe to resume from and keep the right ones.

    - `on_save`: once every rank has finished its part of the save (barrier), the main process writes the
      completion marker (`hf_trainkit_complete.json`: every file with its size, the files a resume needs, step,
      world size, total batch size, why it was saved, the metrics at that step). A checkpoint without it is
      recognisably incomplete. A worker thread then adds an xxh3-128 checksum of every file (about 0.1 s per GB),
      which a resume verifies: same-size corruption is found too.
    - Rotation: takes over `save_total_limit` from the `Trainer` (whose rotation sorts by mtime and can delete the
      newest checkpoint): counts valid checkpoints by step, never deletes the newest valid one, the best one or a
      `protected` one, and runs only after the new save is complete. A policy replaces the rule with `keep_rule`.
    - A save into a folder that already exists first takes its marker away, so a kill halfway through never leaves
      it "complete" with files of two saves; the marker is put back when no save came.
    - `on_train_end`: writes `training_complete.json` when training reached its end (not when a signal stopped it),
      so a re-run of the same command does not train again. With `defer_training_complete = True` (what
      `hf_trainkit.training.run` sets) it only notes that the run finished: the record is written by
      `write_training_complete()`, called once the final state and weights are on disk, which it then vouches for
      (a kill before that leaves no record, and the re-run finishes the job).

    Args:
        save_total_limit (`int`, *optional*): keep at most this many valid checkpoints (default: the Trainer's
            `save_total_limit`, which is then switched off in the Trainer).
        protected (`list[str]`, *optional*): checkpoint folder names never deleted.
        mirror ([`CheckpointMirror`], *optional*): copy each complete checkpoint there in the background (the
            main process only); training waits for the copies at its end.
        keep_rule (*optional*): `keep_rule(checkpoints, protected) -> checkpoints to delete`, instead of the
            newest-`save_total_limit` rule (a policy's best-N).
        marker_fields (*optional*): `marker_fields(args, state) -> dict` added to every marker (a policy's
            monitored value, so that a resume restores it).
        node_layout ([`NodeLayout`], *optional*): the nodes of a multi-node job; found out at the start of training
            when `args.save_on_each_node` is set and not given. With a disk per node, each node writes and marks its
            own part of every checkpoint (the marker says whose), and rotation deletes a step only when every node
            holds a newer complete one. Give such a job a mirror per node (`CheckpointMirror.for_node`).
        async_save (`bool`, *optional*, defaults to `False`): save in the background. A save waits only for a host
            copy of the large files (weights, optimizer, scheduler, RNG states; under ZeRO-3 each rank's shards);
            one writer thread then writes and fsyncs them, and once every rank's files are on disk writes the
            marker, the checksums, the mirror copy and the rotation, while training goes on. One save in flight: a
            save that comes while the previous one writes waits for it (and says how long). The end of training,
            a signal's stop and `control stop` wait for the write in flight; a write that fails is reported at once
            and the next save is written synchronously. Costs about one checkpoint's share of each process in host
            memory (kept from the first save on); training refuses to start when that does not fit. The Trainer is
            found at `on_train_begin` (or give it with `attach(trainer)`).
    """

    def __init__(self, save_total_limit: int | None = None, protected: list[str] | None = None, mirror=None,
                 keep_rule: KeepRule | None = None, marker_fields: Callable[..., dict] | None = None,
                 node_layout=None, async_save: bool = False):
        self.mirror = mirror
        self.async_save = bool(async_save)
        self._writer = None  # the background writer (async_save), made at the start of training
        self._staged = None  # what the Trainer's save just staged, for on_save to hand to the writer
        self._attached_to = None
        self.node_layout = node_layout
        self.save_total_limit = save_total_limit
        self.protected = set(protected or [])
        self.keep_rule = keep_rule
        self.marker_fields = marker_fields
        self._invalidated: dict[str, dict] = {}  # checkpoint folder -> its marker, taken away before a re-save
        self._checksums = BackgroundChecksums()
        self._runtime_before, self._segments_before, self._segment_start = 0.0, 0, time.time()
        self._read_resumed_marker = True
        self.defer_training_complete = False
        self._finished: dict | None = None  # what training_complete.json records, once training reached its end

    def on_init_end(self, args, state, control, **kwargs):
        if self.save_total_limit is None:
            self.save_total_limit = args.save_total_limit
        args.save_total_limit = None  # rotation is ours from now on (see the class docstring)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.node_layout is None:
            from ..checkpointing.nodes import NodeLayout, current_layout

            per_node = bool(getattr(args, "save_on_each_node", False))
            self.node_layout = current_layout(per_node) if per_node and args.world_size > 1 else NodeLayout()
        self._segment_start = time.time()
        self._runtime_before, self._segments_before = 0.0, 0
        self._read_resumed_marker = False
        if self.async_save and saving_enabled(args):
            self._start_async_saves(args, kwargs.get("model"))

    # --- background saves (async_save) ------------------------------------------------------------------------------

    def _start_async_saves(self, args, model):
        from ..checkpointing.async_save import (CheckpointWriter, HostBufferPool, available_host_memory,
                                                estimate_host_copy_bytes, host_copy_problem)
        from ..distributed import new_cpu_group

        if self._attached_to is None:
            trainer = _calling_trainer()
            if trainer is None:
                raise RuntimeError("CheckpointManagerCallback(async_save=True): no Trainer called on_train_begin; "
                                   "call attach(trainer) before train().")
            self.attach(trainer)
        if model is not None:
            from transformers.integrations import is_deepspeed_zero3_enabled

            world_size = max(getattr(args, "world_size", 1), 1)
            per_process = estimate_host_copy_bytes(model, world_size=world_size, zero3=is_deepspeed_zero3_enabled())
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            available = int(os.environ.get("HF_TRAINKIT_HOST_MEMORY_AVAILABLE") or available_host_memory())
            problem = host_copy_problem(per_process, local, available)
            if problem:
                from ..argparsing import UsageError

                raise UsageError(problem)
        if self._writer is None:
            self._writer = CheckpointWriter(HostBufferPool(), self._background_write_failed, group=new_cpu_group())

    def attach(self, trainer):
        """Save `trainer`'s checkpoints in the background (`async_save`): its `_save_checkpoint` waits for the write
        in flight, then runs as always with its large writes staged (`checkpointing.async_save.staging`)."""
        if self._attached_to is trainer:
            return
        from ..checkpointing.async_save import staging

        save_checkpoint, manager = trainer._save_checkpoint, self

        def save_checkpoint_staged(*args, **kwargs):
            writer = manager._writer
            if writer is None:  # no async saves in this run (saves off, or before train())
                return save_checkpoint(*args, **kwargs)
            manager._wait_for_write_in_flight(trainer, f"before saving step {trainer.state.global_step}")
            if writer.failed:  # the same on every rank: the ranks agreed on the outcome of the last write
                if trainer.is_world_process_zero():
                    print(f"Saving step {trainer.state.global_step} synchronously: the last background write "
                          f"failed ({writer.failed}).", file=sys.stderr, flush=True)
                writer.clear_failure()
                return save_checkpoint(*args, **kwargs)
            if trainer.args.should_save:  # first into the folder: incomplete until the writer's marker
                folder = checkpoint_dir(trainer.args.output_dir, trainer.state.global_step)
                folder.mkdir(parents=True, exist_ok=True)
                write_json_atomically(folder / WRITING_MARKER, {"step": trainer.state.global_step,
                                                                "started_at": time.time()})
            with staging(writer.pool) as staged:
                save_checkpoint(*args, **kwargs)
            manager._staged = staged

        trainer._save_checkpoint = save_checkpoint_staged
        self._attached_to = trainer

    def _wait_for_write_in_flight(self, trainer, why: str) -> float:
        """Wait for the write in flight (one at a time): how long, on the console, when there was one."""
        writer = self._writer
        in_flight = writer.in_flight if writer is not None else None
        waited = writer.wait() if writer is not None else 0.0
        if in_flight is not None and trainer.is_world_process_zero():
            print(f"Waited {waited:.2f} s for the background write of {in_flight.name} ({why}).", flush=True)
        return waited

    def wait_for_background_write(self, why: str = "before exiting") -> float:
        """Block until the background write in flight (if any) is complete, saying so on the main process."""
        writer = self._writer
        if writer is None or writer.in_flight is None:
            return writer.wait() if writer is not None else 0.0
        from ..distributed import rank_and_world

        main = rank_and_world()[0] == 0
        if main:
            print(f"Waiting for the background write of {writer.in_flight.name} to finish ({why}) ...", flush=True)
        waited = writer.wait()
        if main:
            print(f"Background write finished ({waited:.1f} s).", flush=True)
        return waited

    def _background_write_failed(self, checkpoint: Path, error: BaseException):
        print(f"Error: the background write of {checkpoint} failed ({type(error).__name__}: {error}); it is not "
              "marked complete, and the next save is written synchronously.", file=sys.stderr, flush=True)

    def _hand_over_to_writer(self, args, state, request, checkpoint: Path, needs_config: bool):
        """on_save of a staged save: what the marker will say is decided now, on the training thread; the files,
        the marker and what follows it are the writer's."""
        staged, self._staged = self._staged, None
        metadata = self._metadata(args, state, request, checkpoint) if args.should_save else None
        self._invalidated.pop(checkpoint.name, None)  # the save came: its old marker must not be put back
        best, step = state.best_model_checkpoint, state.global_step  # the state moves on while the writer works

        def finish(ok_everywhere: bool):
            marked = ok_everywhere and self._mark_complete(args, checkpoint, metadata, needs_config, fsync=True)
            layout = self.node_layout
            complete_everywhere = self._complete_on_every_node(args, step, self._writer.group) \
                if layout and layout.views_differ else None
            if marked:
                self._after_marker(args, checkpoint, best, complete_everywhere)

        from ..checkpointing.async_save import WriteJob

        self._writer.submit(WriteJob(checkpoint, staged, finish))
        if request is not None and "manual" in request.reasons:
            # A requested save (`hf-trainkit control save`, the dashboard, SIGUSR1) is answered at the next step by
            # whether its marker exists: finish it first. Every rank has the request (live control agrees on it).
            self._writer.wait()

    def on_step_begin(self, args, state, control, **kwargs):
        if self._invalidated:
            self._restore_untouched_markers(args)
        # The Trainer loads a checkpoint's state after on_train_begin: the first step is where a resume is visible.
        if self._read_resumed_marker:
            return
        self._read_resumed_marker = True
        if state.global_step > 0:  # resumed: the training time of the segments before, as the checkpoint recorded it
            saved = read_marker(checkpoint_dir(args.output_dir, state.global_step))
            if isinstance(saved.get("train_runtime_so_far"), (int, float)):
                self._runtime_before = float(saved["train_runtime_so_far"])
                self._segments_before = int(saved.get("segments") or 1)

    def on_step_end(self, args, state, control, **kwargs):
        self._take_marker_before_resave(args, state)

    # --- saves ------------------------------------------------------------------------------------------------------

    def _take_marker_before_resave(self, args, state):
        """A folder for this step already exists (a save at this step is about to write into it): its marker goes
        first. Put back at the next step when no save came."""
        checkpoint = checkpoint_dir(args.output_dir, state.global_step)
        if args.should_save and checkpoint.is_dir() and checkpoint.name not in self._invalidated:
            try:
                self._invalidated[checkpoint.name] = invalidate_marker(checkpoint)
            except OSError as error:
                logger.warning(f"CheckpointManagerCallback: could not invalidate {checkpoint} ({error}).")

    def _restore_untouched_markers(self, args):
        for name in list(self._invalidated):  # still here: no save came at that step
            previous = self._invalidated.pop(name)
            stale = Path(args.output_dir) / name / STALE_MARKER
            if previous and stale.is_file():
                os.replace(stale, stale.with_name(COMPLETE_MARKER))

    def on_save(self, args, state, control, **kwargs):
        checkpoint = checkpoint_dir(args.output_dir, state.global_step)
        if self._staged is not None:  # async_save: the Trainer's save was staged
            request = pop_save_request(control, state)
            self._hand_over_to_writer(args, state, request, checkpoint, _has_config(kwargs.get("model")))
            return
        barrier()  # every rank has written its shards before the marker says "complete"
        request = pop_save_request(control, state)
        metadata = self._metadata(args, state, request, checkpoint) if args.should_save else None
        marked = self._mark_complete(args, checkpoint, metadata, _has_config(kwargs.get("model")))
        layout = self.node_layout
        complete_everywhere = self._complete_on_every_node(args, state.global_step) \
            if layout and layout.views_differ else None
        if marked:
            self._after_marker(args, checkpoint, state.best_model_checkpoint, complete_everywhere)
        barrier()  # no rank goes on (or exits) before the marker and the rotation are done

    def _mark_complete(self, args, checkpoint: Path, metadata: dict | None, needs_config: bool,
                       fsync: bool = False) -> bool:
        """Write the completion marker of `checkpoint` (the processes that write into it). `fsync`: every file of
        the folder first (background saves). Whether it was written."""
        layout = self.node_layout
        if not (args.should_save and checkpoint.is_dir()):
            return False
        world_size = max(getattr(args, "world_size", 1), 1)
        try:
            if layout is not None and layout.per_node_disks:
                write_deepspeed_latest(checkpoint)
            if fsync:
                from ..checkpointing.async_save import fsync_tree

                fsync_tree(checkpoint)
                (checkpoint / WRITING_MARKER).unlink(missing_ok=True)
            marker = write_complete_marker(
                checkpoint, metadata, world_size=world_size,
                save_only_model=bool(getattr(args, "save_only_model", False)),
                needs_config=needs_config, checksum=False,
                ranks=list(layout.ranks_here) if layout is not None and layout.per_node_disks else None)
            self._invalidated.pop(checkpoint.name, None)
            if marker.get("name"):
                logger.warning(f"Saved {checkpoint} as {marker['name']!r} ({marker['reason']}, pinned).")
            return True
        except IncompleteCheckpointError as error:
            logger.warning(f"CheckpointManagerCallback: {error}; it is not marked complete and a resume will "
                           "skip it.")
        except OSError as error:
            logger.warning(f"CheckpointManagerCallback: could not finish {checkpoint} ({error}).")
        return False

    def _after_marker(self, args, checkpoint: Path, best_model_checkpoint, complete_everywhere):
        try:
            # Checksums in the background (training goes on), then the mirror copy, which carries them.
            self._checksums.submit(checkpoint, then=self.mirror.push_in_background if self.mirror else None)
            self._rotate(args, best_model_checkpoint, complete_everywhere)
        except OSError as error:
            logger.warning(f"CheckpointManagerCallback: could not finish {checkpoint} ({error}).")

    def _complete_on_every_node(self, args, step: int, group=None) -> set[int]:
        """The steps whose part is complete on every node (one gather), recorded in this step's checkpoint on each
        node (`hf_trainkit_nodes.json`, which `hf-trainkit checkpoints list` shows)."""
        from ..checkpointing.nodes import complete_on_every_node, gather_node_views, node_view, write_nodes_record

        layout = self.node_layout
        views = gather_node_views(node_view(args.output_dir) if args.should_save else None, layout,
                                  args.should_save, group=group)
        views = [view or {} for view in views]
        if args.should_save:
            write_nodes_record(checkpoint_dir(args.output_dir, step), views, step)
        return complete_on_every_node(views)

    def _metadata(self, args, state, request: SaveRequest | None, checkpoint: Path) -> dict:
        world_size = max(getattr(args, "world_size", 1), 1)
        metrics = {}
        for entry in state.log_history:  # every log of this step: train metrics and evaluation alike
            if entry.get("step") == state.global_step:
                metrics.update({k: v for k, v in entry.items() if isinstance(v, (int, float)) and k != "step"})
        if not metrics:  # not a logging step: the latest training log
            last = next((e for e in reversed(state.log_history) if "loss" in e or "reward" in e), {})
            metrics = {k: v for k, v in last.items() if isinstance(v, (int, float)) and k != "step"}
        reasons = list(request.reasons) if request else []
        if state.global_step >= state.max_steps > 0 and "final" not in reasons:
            reasons.append("final")
        reasons = reasons or ["interval"]
        metadata = {
            "step": state.global_step,
            "epoch": state.epoch,
            "reason": min(reasons, key=REASONS.index),
            "reasons": reasons,
            "world_size": world_size,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "total_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
            "metrics": metrics,
            # Training time up to this save over every segment (a resumed run's own train_runtime counts only its
            # last segment): the next segment continues from it.
            "train_runtime_so_far": self._runtime_before + time.time() - self._segment_start,
            "segments": self._segments_before + 1,
        }
        # Saved again at the same step (a named save right after an interval save): keep its name and pin.
        previous = self._invalidated.get(checkpoint.name) or {}
        name = (request.name if request else None) or previous.get("name")
        if name:
            metadata["name"] = name
        if (request and request.pinned) or previous.get("pinned"):
            metadata["pinned"] = True
        if request:
            metadata.update(request.extra)
        if self.marker_fields is not None:
            metadata.update(self.marker_fields(args, state))
        if self.node_layout is not None:
            metadata.update(self.node_layout.marker_fields())
        return metadata

    def _rotate(self, args, best_model_checkpoint: str | None, complete_everywhere: set[int] | None = None):
        checkpoints = list_checkpoints(args.output_dir)
        if complete_everywhere is not None:
            checkpoints = counting_only_complete_everywhere(checkpoints, complete_everywhere)
        protected = set(self.protected) | pinned_names(checkpoints) | set(self._checksums.pending)
        if self.mirror is not None:
            protected |= set(self.mirror.pending)
        if best_model_checkpoint:
            protected.add(os.path.basename(os.path.normpath(best_model_checkpoint)))
        if self.keep_rule is not None:
            deletions = self.keep_rule(checkpoints, protected)
        else:
            deletions = checkpoints_to_delete(checkpoints, self.save_total_limit, protected)
        for info in deletions:
            shutil.rmtree(info.path, ignore_errors=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The end-of-training summary: add the time of every segment (transformers' train_runtime is this call's).
        if logs and isinstance(logs.get("train_runtime"), (int, float)) and state.log_history \
                and state.log_history[-1].get("train_runtime") == logs["train_runtime"]:
            state.log_history[-1]["total_train_runtime"] = round(self._runtime_before + logs["train_runtime"], 4)
            state.log_history[-1]["train_segments"] = self._segments_before + 1

    # --- the end ----------------------------------------------------------------------------------------------------

    def on_train_end(self, args, state, control, **kwargs):
        # Before anything reads this run's checkpoints (the stop's "saved step N", the final files, the record).
        self.wait_for_background_write("the end of training" if not was_preempted(control) else "the stop")
        if self._invalidated:
            self._restore_untouched_markers(args)
        self._checksums.wait()
        if self.mirror is not None and args.should_save:
            if self.mirror.pending:
                logger.warning(f"Waiting for the checkpoint copies to {self.mirror.url} ...")
            self.mirror.wait()
        if was_preempted(control) or not args.should_save:
            self._finished = None
            return
        self._finished = {"global_step": state.global_step, "max_steps": state.max_steps,
                          "num_train_epochs": args.num_train_epochs}
        if not self.defer_training_complete:
            self._write_training_complete(args.output_dir, vouch=False)

    def write_training_complete(self, output_dir: str) -> bool:
        """Write `training_complete.json` (deferred: see the class docstring), vouching for the final files now at
        the top of `output_dir`; only when training reached its end, on the main process. Whether it was written."""
        return self._finished is not None and self._write_training_complete(output_dir, vouch=True)

    def _write_training_complete(self, output_dir: str, vouch: bool) -> bool:
        try:
            write_training_complete(output_dir, self._finished, vouch=vouch)
            return True
        except OSError as error:
            logger.warning(f"CheckpointManagerCallback: could not write {TRAINING_COMPLETE} ({error}).")
            return False
