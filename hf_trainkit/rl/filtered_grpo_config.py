from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from ..distributed import adjust_for_cpu_launch
from .advantages import MODES, canonical_mode


@dataclass
class FilteredGRPOConfig(GRPOConfig):
    r"""
    Configuration class for the [`FilteredGRPOTrainer`].

    It inherits every parameter from [`~trl.GRPOConfig`]; only the reward-filtering parameters are documented here.

    Parameters:
        > Parameters that control the reward filter

        mode (`str`, *optional*, defaults to `"grpo"`):
            Training mode: `"grpo"` (TRL's GRPO, unchanged), `"psr"` (positive samples only, advantage +1), `"nsr"`
            (negative samples only, advantage -`negative_weight`) or `"w-reinforce"` (all samples, +`positive_weight`
            for positives, -`negative_weight` for negatives). `"w_reinforce"` is accepted.
        reward_threshold (`float`, *optional*, defaults to `0.5`):
            A completion is positive when its total reward is `> reward_threshold`, negative otherwise.
        positive_weight (`float`, *optional*, defaults to `0.1`):
            λ of W-REINFORCE: the advantage of a positive sample. Must be >= 0.
        negative_weight (`float`, *optional*, defaults to `1.0`):
            Magnitude of the advantage of a negative sample in NSR and W-REINFORCE. Must be >= 0.
        starvation_warning_steps (`int`, *optional*, defaults to `5`):
            Warn when the filter keeps nothing (PSR: no positive, NSR: no negative, W-REINFORCE: no positive) for
            this many generation batches in a row. `0` disables the warning.
        log_mode_summary (`bool`, *optional*, defaults to `True`):
            Print one console line per generation batch, e.g. `PSR [Step 3]: 5/8 positive samples | Avg reward: …`.

        > Parameters that control groups that teach nothing

        drop_zero_variance_groups (`bool`, *optional*, defaults to `True`):
            Mode `"grpo"`: completions whose advantage is exactly 0 (every completion of a group with equal
            rewards) never reach the model, and the loss keeps TRL's full-batch normaliser, so the loss, the
            gradient and the weights are `GRPOTrainer`'s. Only where such rows add nothing to the loss: with
            `beta != 0`, an entropy bonus, an aux loss or `top_entropy_quantile < 1` they are kept (one warning).
        dynamic_sampling (`bool`, *optional*, defaults to `False`):
            DAPO's dynamic sampling, per mode: a group that gives the mode nothing to learn from (grpo: all rewards
            equal; psr: no positive; nsr: no negative; w-reinforce: nothing scorable) is replaced by an informative
            group generated for fresh prompts of the training set, for up to `dynamic_sampling_max_rounds` extra
            generation rounds per batch. Changes the algorithm (and the data seen); off by default.
        dynamic_sampling_max_rounds (`int`, *optional*, defaults to `3`):
            Extra generation rounds per batch at most (each draws a whole generation batch of fresh prompts).

    > [!NOTE]
    > In the filtered modes, dropped samples are removed from the batch before the forward pass: they cost no
    > compute and count in no loss denominator. `scale_rewards` only matters in `"grpo"` mode.
    """

    mode: str = field(
        default="grpo",
        metadata={
            "help": "Training mode: 'grpo', 'psr', 'nsr' or 'w-reinforce' ('w_reinforce' accepted).",
            "choices": [*MODES, "w_reinforce"],
        },
    )
    reward_threshold: float = field(
        default=0.5,
        metadata={"help": "A completion is positive when its total reward is > reward_threshold, negative otherwise."},
    )
    positive_weight: float = field(
        default=0.1,
        metadata={"help": "Lambda of W-REINFORCE: the advantage of a positive sample. Must be >= 0."},
    )
    negative_weight: float = field(
        default=1.0,
        metadata={"help": "Magnitude of the advantage of a negative sample in NSR and W-REINFORCE. Must be >= 0."},
    )
    starvation_warning_steps: int = field(
        default=5,
        metadata={
            "help": "Warn when the filter keeps nothing for this many generation batches in a row (0 disables)."
        },
    )
    log_mode_summary: bool = field(
        default=True,
        metadata={"help": "Print one console line per generation batch with the mode's sample counts and reward."},
    )

    drop_zero_variance_groups: bool = field(
        default=True,
        metadata={
            "help": "Mode 'grpo': completions with advantage exactly 0 (groups with equal rewards) never reach the "
            "model; the loss, gradient and weights stay GRPOTrainer's (kept when beta != 0 or an entropy/aux term "
            "reads them)."
        },
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "Replace groups that teach the mode nothing (grpo: equal rewards; psr: no positive; nsr: no "
            "negative) by informative groups for fresh prompts, up to dynamic_sampling_max_rounds extra rounds."
        },
    )
    dynamic_sampling_max_rounds: int = field(
        default=3,
        metadata={"help": "Extra generation rounds per batch at most for dynamic_sampling."},
    )

    def __post_init__(self):
        if self.bf16 is None and not self.fp16:
            from transformers.utils import is_torch_bf16_gpu_available

            # TRL turns bf16 on by default, which fails at once on a machine without a bf16 GPU (a CPU-only host).
            self.bf16 = bool(is_torch_bf16_gpu_available())
        # Several processes on a host without a GPU (tests, CPU-only users): see adjust_for_cpu_launch.
        adjust_for_cpu_launch(self)
        super().__post_init__()
        self.mode = canonical_mode(self.mode)
        name = type(self).__name__
        if math.isnan(self.reward_threshold):
            raise ValueError(f"{name}: reward_threshold=nan can never be crossed; set a number such as 0.5.")
        for field_name in ("positive_weight", "negative_weight"):
            value = getattr(self, field_name)
            if math.isnan(value) or value < 0:
                raise ValueError(
                    f"{name}: {field_name}={value!r} must be >= 0 (the sign of the advantage is set by the mode)."
                )
        if self.starvation_warning_steps < 0:
            raise ValueError(f"{name}: starvation_warning_steps={self.starvation_warning_steps!r} must be >= 0.")
        if self.dynamic_sampling_max_rounds < 0:
            raise ValueError(
                f"{name}: dynamic_sampling_max_rounds={self.dynamic_sampling_max_rounds!r} must be >= 0 (extra "
                "generation rounds per batch)."
            )
        if self.mode == "w-reinforce" and self.positive_weight == 0:
            raise ValueError(
                f"{name}: mode='w-reinforce' with positive_weight=0 is NSR; use mode='nsr' or set positive_weight > 0."
            )
