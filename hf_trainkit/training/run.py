"""Train as the options say: `run(options, callbacks=[...])`, what `scripts/train_grpo.py`, the demo and the tests
call."""

from __future__ import annotations

import argparse
import os

from ..argparsing import UsageError
from ..checkpointing.resume import (NO_FALLBACK, agreed_resume_point, checkpoint_mirror,
                                    fallback_after_failed_load, finished_run_message, pull_from_mirror)
from .callbacks import build_callbacks
from .inputs import (build_model_and_tokenizer, build_peft_config, has_images, load_eval_dataset, load_train_dataset,
                     prepare_base_model)
from .options import build_config, describe_defaults, resolve_defaults


def run(options: argparse.Namespace, callbacks: list | None = None):
    """Train as `options` says and return the trainer (None when the run had already finished).

    `options` are the parsed flags of `scripts/train_grpo.py` (`hf_trainkit.commands.train_grpo.train_grpo_options`
    builds them from keywords); `callbacks` are added to the ones the options ask for. A user mistake raises
    `UsageError` (one line); the command turns it into exit code 2.
    """
    from ..library_noise import filter_library_noise
    from ..rl.rewards import resolve_reward_func

    filter_library_noise()
    extra_callbacks = list(callbacks or [])

    options = resolve_defaults(options)
    if options.wandb_project:
        os.environ["WANDB_PROJECT"] = options.wandb_project
    try:
        reward_funcs = [resolve_reward_func(spec) for spec in options.reward_func]
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        config = build_config(options)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if config.process_index == 0 and options.defaults_used:
        print(describe_defaults(options), flush=True)
    layout = node_layout(options, config)
    callbacks = build_callbacks(options, layout) + extra_callbacks
    if options.dashboard is not None and config.process_index == 0:
        if not 0 <= options.dashboard <= 65535:
            raise UsageError(f"--dashboard {options.dashboard}: use a port 0-65535 (0 picks a free one).")
        from ..dashboard import start_dashboard_in_background

        url = start_dashboard_in_background(options.output_dir, options.dashboard)
        if url:
            print(f"Dashboard: {url}", flush=True)
    if not layout.views_differ:  # with a disk per node, each node pulls its own part in agreed_resume_point
        pull_from_mirror(options, config, callbacks)
    finished, checkpoint = agreed_resume_point(options, config, layout, checkpoint_mirror(callbacks))
    if finished:
        if config.process_index == 0:
            print(finished_run_message(options.output_dir), flush=True)
        return None
    from ..run_log import console_log

    # The main process keeps what it prints from here on in OUTPUT_DIR/logs/train.log.
    with console_log(options.output_dir, enabled=config.process_index == 0 and not options.no_run_log):
        return _train(options, config, reward_funcs, callbacks, checkpoint, extra_callbacks, layout)


def node_layout(options: argparse.Namespace, config):
    """The job's nodes (one collective when several processes run), after checking that `--output-dir` is shared
    between the nodes, or each node's own with --save-on-each-node, as asked."""
    from ..checkpointing.nodes import NodeLayout, check_disk_layout, current_layout

    if config.world_size == 1:
        return NodeLayout(per_node_disks=config.save_on_each_node)
    layout = current_layout(config.save_on_each_node)
    problem = check_disk_layout(options.output_dir, layout, writes_here=config.local_process_index == 0)
    if problem:
        raise UsageError(problem)
    if config.process_index == 0 and layout.num_nodes > 1:
        disks = "a disk per node (--save-on-each-node)" if layout.per_node_disks else "one shared --output-dir"
        print(f"{layout.num_nodes} nodes ({', '.join(str(len(r)) for r in layout.ranks)} processes), {disks}.",
              flush=True)
    return layout


def _train(options: argparse.Namespace, config, reward_funcs: list, callbacks: list, checkpoint: str | None,
           extra_callbacks: list, layout):
    from transformers import PreTrainedTokenizerBase

    from ..rl.filtered_grpo_trainer import FilteredGRPOTrainer

    if checkpoint:
        print(f"Resuming from {checkpoint}")
    dataset = load_train_dataset(options)
    eval_dataset = load_eval_dataset(options) if options.eval_every else None
    check_reward_columns(options, reward_funcs, dataset, eval_dataset, config)
    prepare_base_model(options, config)
    tried: list[str] = []
    while True:
        # After the config: under DeepSpeed ZeRO-3 the model must be created once the config has set up zero.Init.
        model, tokenizer = build_model_and_tokenizer(options, images=has_images(dataset))
        trainer = FilteredGRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=build_peft_config(options, vision=not isinstance(tokenizer, PreTrainedTokenizerBase)),
            callbacks=callbacks,
        )
        from ..callbacks.console import use_compact_console

        # The short metrics line per log, and whole lines on a console that is not a terminal, with --quiet too (the
        # trainer swaps them in only with its mode line on).
        use_compact_console(trainer.callback_handler)
        if eval_dataset is not None:
            from ..callbacks import PassAtKCallback

            try:
                trainer.add_callback(PassAtKCallback(trainer, eval_dataset, n=options.eval_n, ks=options.eval_k,
                                                     every_n_steps=options.eval_every))
            except ValueError as error:
                raise UsageError(str(error)) from None
        if config.process_index == 0 and (config.world_size > 1 or trainer.is_deepspeed_enabled) and not tried:
            print(describe_launch(trainer), flush=True)
        if checkpoint and trainer.is_deepspeed_enabled:
            from ..checkpointing.universal import prepare_deepspeed_resume

            try:
                prepare_deepspeed_resume(trainer, checkpoint)
            except RuntimeError as error:
                raise UsageError(str(error)) from None
        if checkpoint:
            from ..library_noise import expect_tied_weights

            expect_tied_weights(trainer.model)  # a tied weight missing from the checkpoint is no news
        for manager in checkpoint_managers(trainer):
            manager.defer_training_complete = True  # written below, once the final state and weights are on disk
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
            break
        except BaseException as error:
            for manager in checkpoint_managers(trainer):  # a background save in flight is finished, not cut short
                manager.wait_for_background_write(f"training stopped by {type(error).__name__}")
            if not isinstance(error, Exception):
                raise
            older = fallback_after_failed_load(error, trainer, checkpoint, config, options)
            if older is NO_FALLBACK:
                raise
            tried.append(checkpoint)
            checkpoint = older
            layout = node_layout(options, config)
    callbacks = build_callbacks(options, layout) + extra_callbacks
    trainer.save_state()
    if trainer.args.should_save and not trainer.is_world_process_zero():  # a disk per node: each keeps its copy
        trainer.state.save_to_json(os.path.join(options.output_dir, "trainer_state.json"))
    stopper = stopping_callback(trainer)
    if stopper is None:
        # The trained weights (or adapter) at the top of the output dir, as `trainer.save_model()` puts them, even
        # with --no-save-checkpoints: `hf-trainkit eval OUTPUT_DIR` and `from_pretrained(OUTPUT_DIR)` load them.
        trainer.save_model()
        if trainer.args.should_save:  # last: the record that the run is finished vouches for all of the above
            for manager in checkpoint_managers(trainer):
                manager.write_training_complete(options.output_dir)
    if trainer.args.should_save:
        print(end_message(options.output_dir, trainer, stopper), flush=True)
    return trainer


def check_reward_columns(options: argparse.Namespace, reward_funcs: list, dataset, eval_dataset, config):
    """Each reward function against the columns it reads, before the model is loaded: a built-in one that needs a
    column the data set lacks is a `UsageError`; a user's own (`module:function`) a one-line warning (its signature
    may not tell everything: a decorator can supply an argument)."""
    import sys

    from ..rl.rewards import BUILTIN_REWARDS, missing_reward_columns

    sets = [("--dataset", options.dataset, dataset)]
    if eval_dataset is not None and options.eval_dataset:
        sets.append(("--eval-dataset", options.eval_dataset, eval_dataset))
    for spec, func in zip(options.reward_func, reward_funcs):
        for flag, name, data in sets:
            if data is None or name is None:  # a built-in task: its columns are the built-in rewards'
                continue
            problem = missing_reward_columns(spec, func, list(data.column_names), f"{flag} {name}",
                                             options.prompt_column)
            if problem is None:
                continue
            if spec in BUILTIN_REWARDS:
                raise UsageError(problem)
            if config.process_index == 0:
                print(f"Warning: {problem} (read from its signature; TRL raises a TypeError at the first step if it "
                      "is right)", file=sys.stderr, flush=True)


def end_message(output_dir: str, trainer, stopper) -> str:
    """What the run left in `output_dir`, and after a signal also what it did not write."""
    entries = f"{len(trainer.state.log_history)} log entries"
    if stopper is None:
        return f"Run written to {output_dir} (trainer_state.json: {entries}; final weights in the same folder)."
    from ..checkpointing.save_request import saving_enabled
    from ..constants import RUN_RECORD, STATS_FILE

    written = [f"trainer_state.json ({entries})"] + [name for name in (STATS_FILE, RUN_RECORD)
                                                      if os.path.isfile(os.path.join(output_dir, name))]
    if stopper.saved_on_stop:
        where = f"the weights of step {trainer.state.global_step} are in {stopper.saved_on_stop}"
    elif not saving_enabled(trainer.args):
        where = "no checkpoint holds them either (--no-save-checkpoints): a re-run trains from the start"
    else:
        where = "no checkpoint was completed at the stop either"
    return (f"Stopped by {stopper.stop_signal or 'a signal'}: {output_dir} holds {', '.join(written)}; not written: "
            f"the final weights and config at the top (a signal skips the final save); {where}.")


def checkpoint_managers(trainer) -> list:
    """The trainer's `CheckpointManagerCallback`s, also those inside groups (a `CheckpointPolicyCallback`)."""
    from ..callbacks import CallbackGroup, CheckpointManagerCallback

    found, pending = [], list(trainer.callback_handler.callbacks)
    while pending:
        callback = pending.pop(0)
        if isinstance(callback, CallbackGroup):
            pending[:0] = callback.members
        elif isinstance(callback, CheckpointManagerCallback):
            found.append(callback)
    return found


def describe_launch(trainer) -> str:
    """'world size N, distributed type ..., ZeRO stage S' as the Trainer's accelerator set it up."""
    state = trainer.accelerator.state
    text = f"world size {state.num_processes}, distributed type {state.distributed_type}"
    plugin = getattr(state, "deepspeed_plugin", None)
    if plugin is not None:
        text += f", ZeRO stage {plugin.zero_stage}"
    return text


def stopping_callback(trainer):
    """The `LiveControlCallback` that stopped training on a signal (None otherwise), also one inside a group."""
    from ..callbacks import CallbackGroup, LiveControlCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, CallbackGroup):
            callback = callback.find(LiveControlCallback)
        if isinstance(callback, LiveControlCallback) and callback.preempted:
            return callback
    return None
