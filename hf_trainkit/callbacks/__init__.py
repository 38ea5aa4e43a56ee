"""`TrainerCallback`s for any transformers `Trainer` (and so for TRL trainers and `FilteredGRPOTrainer`)."""

from .callback_group import CallbackGroup
from .checkpoint_manager import CheckpointManagerCallback
from .checkpoint_policy import CheckpointPolicyCallback
from .diagnostics import TrainingDiagnosticsCallback
from .every_n import EveryNStepsCallback, LogWindow
from .early_stopping import MetricEarlyStoppingCallback, MonitorNotLoggedError, StoppingCheck
from .live_control import LiveControlCallback
from .live_log import LiveLogCallback, reconcile_live_log
from .loss_curve import LossCurveCallback, curve_stats
from .pass_at_k import PassAtKCallback
from .resume_checks import ResumeChecksCallback
from .wandb_logging import WandbEveryNCallback, aggregate_window, wandb_key


__all__ = [
    "CallbackGroup",
    "CheckpointManagerCallback",
    "CheckpointPolicyCallback",
    "EveryNStepsCallback",
    "LiveControlCallback",
    "LiveLogCallback",
    "LogWindow",
    "LossCurveCallback",
    "MetricEarlyStoppingCallback",
    "MonitorNotLoggedError",
    "PassAtKCallback",
    "ResumeChecksCallback",
    "StoppingCheck",
    "TrainingDiagnosticsCallback",
    "WandbEveryNCallback",
    "aggregate_window",
    "curve_stats",
    "reconcile_live_log",
    "wandb_key",
]
