"""The callbacks a run gets from its options: the checkpoint policy, live control, W&B, curves, diagnostics,
early stopping."""

from __future__ import annotations

import argparse
import re

from ..argparsing import UsageError


def _as_flags(message: str) -> str:
    """A callback's argument error, in the script's flag names."""
    names = {"monitor": "--checkpoint-metric", "save_top_k": "--save-top-k", "save_total_limit": "--save-total-limit",
             "save_on_improvement": "--save-on-improvement", "min_delta": "--save-min-delta",
             "smoothing": "--checkpoint-smoothing", "mode": "--checkpoint-mode"}
    message = message.split(": ", 1)[-1]
    for name, flag in sorted(names.items(), key=lambda item: -len(item[0])):
        message = re.sub(rf"\b{name}\b", flag, message)
    return message


def log_every(options: argparse.Namespace) -> int | None:
    """Steps per tracker record: `--log-every N`, for which `--wandb-every N` is an alias; None: every log."""
    return getattr(options, "log_every", None) or options.wandb_every


def windowed_trackers(options: argparse.Namespace) -> list[str]:
    """The trackers of `--report-to` other than W&B (which `WandbEveryNCallback` owns) that get one record every
    `log_every` steps through `EveryNStepsCallback`; none without `--log-every`/`--wandb-every`."""
    if not log_every(options):
        return []
    return [name for name in options.report_to if name not in ("none", "wandb")]


def build_callbacks(options: argparse.Namespace, node_layout=None) -> list:
    """The callbacks `options` ask for; `node_layout` (a multi-node job) gives a disk per node its own mirror."""
    from ..callbacks import (CheckpointPolicyCallback, LiveControlCallback, LiveLogCallback, LossCurveCallback,
                             MetricEarlyStoppingCallback, TrainingDiagnosticsCallback, WandbEveryNCallback)
    from ..metric_rules import default_mode

    mirror = None
    if options.checkpoint_mirror and not options.no_save_checkpoints:
        from ..checkpointing.mirror import CheckpointMirror

        try:
            mirror = CheckpointMirror(options.checkpoint_mirror, save_total_limit=options.save_total_limit)
        except (ImportError, ValueError, OSError) as error:
            raise UsageError(f"--checkpoint-mirror {options.checkpoint_mirror}: {error}") from None
        if node_layout is not None and node_layout.views_differ:
            mirror = mirror.for_node(node_layout.node)
    min_delta, relative_delta = options.save_min_delta
    try:
        callbacks = [CheckpointPolicyCallback(
            monitor=options.checkpoint_metric, mode=options.checkpoint_mode, save_top_k=options.save_top_k,
            save_on_improvement=options.save_on_improvement, min_delta=min_delta, relative_delta=relative_delta,
            smoothing=options.checkpoint_smoothing, save_total_limit=options.save_total_limit, mirror=mirror,
            handle_signals=False, node_layout=node_layout, async_save=getattr(options, "async_save", False))]  # the LiveControlCallback below handles them, in the same all-reduce as requests
    except ValueError as error:
        raise UsageError(_as_flags(str(error))) from None
    if options.control_port is not None and not 0 <= options.control_port <= 65535:
        raise UsageError(f"--control-port {options.control_port}: use 0-65535 (0 picks a free port).")
    callbacks.append(LiveControlCallback(port=options.control_port, host=options.control_host,
                                         watch_requests=not options.no_live_control))
    callbacks.append(LiveLogCallback())  # logs/log_history.jsonl: what the dashboard and the monitor watch live
    every = log_every(options)
    if options.wandb_every is not None or "wandb" in options.report_to:
        try:
            callbacks.append(WandbEveryNCallback(every or 1, project=options.wandb_project,
                                                 run_name=options.run_name, group=options.wandb_group,
                                                 tags=options.wandb_tags))
        except ImportError as error:
            raise UsageError(f"--wandb-every/--report-to wandb: {error}") from None
    windowed = windowed_trackers(options)
    if windowed:  # the same window for TensorBoard, Trackio, MLflow ... (they are kept out of report_to)
        from ..callbacks import EveryNStepsCallback

        try:
            callbacks.append(EveryNStepsCallback(windowed, every_n_steps=every))
        except (ImportError, RuntimeError, ValueError) as error:
            raise UsageError(f"--report-to {' '.join(windowed)}: {error}") from None
    if not options.no_loss_curve:
        callbacks.append(LossCurveCallback())
    if not options.no_diagnostics:
        callbacks.append(TrainingDiagnosticsCallback())
    if options.early_stopping_metric:
        key = options.early_stopping_metric
        mode = options.early_stopping_mode or default_mode(key)
        try:
            callbacks.append(MetricEarlyStoppingCallback(
                key, mode=mode, patience=options.early_stopping_patience, min_delta=options.early_stopping_min_delta,
                smoothing=options.early_stopping_smoothing, divergence_threshold=options.divergence_threshold,
                stopping_threshold=options.stopping_threshold))
        except ValueError as error:
            raise UsageError(str(error)) from None
    return callbacks
