"""`TrainerCallback`s for any transformers `Trainer` (and so for TRL trainers and `FilteredGRPOTrainer`)."""

from .checkpoint_policy import CheckpointPolicyCallback
from .diagnostics import TrainingDiagnosticsCallback
from .early_stopping import MetricEarlyStoppingCallback, MonitorNotLoggedError, StoppingCheck
from .live_control import LiveControlCallback
from .loss_curve import LossCurveCallback, curve_stats
from .pass_at_k import PassAtKCallback
from .resumable import ResumableCheckpointsCallback
from .wandb_logging import WandbEveryNCallback, aggregate_window, wandb_key


__all__ = [
    "CheckpointPolicyCallback",
    "LiveControlCallback",
    "LossCurveCallback",
    "MetricEarlyStoppingCallback",
    "MonitorNotLoggedError",
    "PassAtKCallback",
    "ResumableCheckpointsCallback",
    "StoppingCheck",
    "TrainingDiagnosticsCallback",
    "WandbEveryNCallback",
    "aggregate_window",
    "curve_stats",
    "wandb_key",
]
