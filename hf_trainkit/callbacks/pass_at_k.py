"""pass@k, entropy and coverage on held-out prompts during training: what RL did to the model, not only its reward."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from ..distributed import gather_lists, rank_and_world


logger = logging.get_logger(__name__)

PREFIX = "eval/"


class PassAtKCallback(TrainerCallback):
    """Every `every_n_steps` steps, at the last step and before the first (the base model), sample `n` completions
    per evaluation prompt with the trainer's generation settings and log ``eval/pass@k`` for each k,
    ``eval/mean_reward``, ``eval/entropy`` (of the first answer token) and ``eval/coverage`` (when the reward can
    list the correct answers, see `hf_trainkit.eval.sampling.evaluate`).

    The values go through `Trainer.log`, so they land in `trainer_state.json`, reach W&B and can be monitored by
    `CheckpointPolicyCallback(monitor="eval/pass@1")` or `MetricEarlyStoppingCallback`. Like TRL's
    `WinRateCallback` it holds the trainer, which owns the model, the tokenizer and the generation settings:

    ```python
    trainer = FilteredGRPOTrainer(...)
    trainer.add_callback(PassAtKCallback(trainer, build_toy_dataset(split="heldout"), n=64, ks=(1, 4, 16, 64)))
    ```

    With several processes each rank samples its share of the prompts (under ZeRO-3 with the parameters gathered,
    as TRL's generation does) and the records are gathered, so every rank logs the same values at the same step and
    any decision taken on them agrees. Sampling draws from its own seeded RNG: training continues exactly as it
    would have without the callback. An evaluation that fails logs a warning and training goes on.

    Args:
        trainer: a `GRPOTrainer` (or `FilteredGRPOTrainer`); its `generation_config` and reward functions are used.
        eval_dataset: rows with a ``prompt`` and the columns the reward functions read.
        n (`int`, defaults to 64): samples per prompt; pass@k is logged for the `ks` up to `n`.
        ks (sequence of `int`, defaults to `(1, 4, 16, 64)`).
        every_n_steps (`int`, defaults to 50).
        reward_funcs (list of callables, *optional*): defaults to the trainer's (callable ones only).
        reward_threshold (`float`, *optional*): a sample is correct when its summed reward exceeds it (default: the
            trainer's `reward_threshold` when it has one, else 0.5).
        at_start (`bool`, defaults to `True`): evaluate the base model before the first step (not when resuming).
        batch_size (`int`, defaults to 256): sequences per `generate` call.
    """

    def __init__(self, trainer: Trainer, eval_dataset, *, n: int = 64, ks: Sequence[int] = (1, 4, 16, 64),
                 every_n_steps: int = 50, reward_funcs: list[Callable] | None = None,
                 reward_threshold: float | None = None, at_start: bool = True, batch_size: int = 256):
        if n < 1 or every_n_steps < 1 or batch_size < 1:
            raise ValueError(f"PassAtKCallback: n={n}, every_n_steps={every_n_steps} and batch_size={batch_size} "
                             "must be >= 1.")
        self.ks = sorted({int(k) for k in ks if 1 <= int(k) <= n})
        if not self.ks:
            raise ValueError(f"PassAtKCallback: no k in {list(ks)} is between 1 and n={n}.")
        self.trainer = trainer
        self.rows = [dict(row) for row in eval_dataset]
        if not self.rows or "prompt" not in self.rows[0]:
            raise ValueError("PassAtKCallback: eval_dataset must hold rows with a 'prompt' column.")
        self.n, self.every_n_steps, self.at_start, self.batch_size = n, every_n_steps, at_start, batch_size
        self.reward_funcs = reward_funcs or [f for f in getattr(trainer, "reward_funcs", []) if callable(f)
                                             and not hasattr(f, "forward")]
        if not self.reward_funcs:
            raise ValueError("PassAtKCallback: the trainer has no reward function that is a plain callable; pass "
                             "reward_funcs=.")
        if reward_threshold is None:
            reward_threshold = getattr(trainer.args, "reward_threshold", 0.5)
        self.reward_threshold = reward_threshold
        self.last_evaluated_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._base_pending = self.at_start

    def on_step_begin(self, args, state, control, **kwargs):
        # Not in on_train_begin: transformers 4.x loads a resumed run's state after it (5.x before), so only here
        # does step 0 surely mean "the base model, before any update", not "a resumed model, step not loaded yet".
        if getattr(self, "_base_pending", False):
            self._base_pending = False
            if state.global_step == 0:
                self._evaluate_and_log(args, state, control)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps == 0 or state.global_step >= state.max_steps:
            self._evaluate_and_log(args, state, control)

    def evaluate(self, seed: int = 0) -> dict[str, float]:
        """The metrics of the trainer's model now. Every rank must call it (it gathers); if any rank fails, every
        rank raises the same RuntimeError."""
        from ..eval import summarize

        try:
            local = ("ok", self._local_records(seed))
        except Exception as error:
            local = ("error", f"{type(error).__name__}: {error}")
        parts = gather_lists([local])  # reached by every rank, whether its share failed or not
        errors = [value for status, value in parts if status == "error"]
        if errors:
            raise RuntimeError(errors[0])
        return summarize([record for _, records in parts for record in records], self.n, self.ks)

    def _local_records(self, seed: int) -> list[dict]:
        from trl.models.utils import unwrap_model_for_generation

        from ..eval import evaluate

        rank, world = rank_and_world()
        trainer = self.trainer
        gather = getattr(trainer.args, "ds3_gather_for_generation", True)
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gather_deepspeed3_params=gather) as model:
            return evaluate(model, trainer.processing_class, self.rows[rank::world], self.reward_funcs, n=self.n,
                            generation_config=generation_config_of(trainer), reward_threshold=self.reward_threshold,
                            batch_size=self.batch_size, seed=seed + rank)

    def _evaluate_and_log(self, args, state, control):
        if self.last_evaluated_step == state.global_step:
            return
        self.last_evaluated_step = state.global_step
        try:
            metrics = self.evaluate(seed=args.seed * 1_000_003 + state.global_step)
        except Exception as error:  # an evaluation must never stop training
            logger.warning(f"PassAtKCallback: skipped the evaluation at step {state.global_step} "
                           f"({type(error).__name__}: {error}).")
            return
        # Trainer.log, not the GRPOTrainer's: that one would take (and clear) the training metrics of the steps
        # since the last log, which the next training log needs. And on_log clears `should_log`: the training log
        # this step was due must still happen.
        should_log = control.should_log
        Trainer.log(self.trainer, {f"{PREFIX}{key}": value for key, value in metrics.items()})
        control.should_log = should_log


def generation_config_of(trainer):
    """The sampling settings the trainer generates with (TRL's `generation_config`), or ones built from its args."""
    config = getattr(trainer, "generation_config", None)
    if config is not None:
        return config
    from ..eval.sampling import sampling_config

    args = trainer.args
    return sampling_config(trainer.processing_class, getattr(args, "max_completion_length", 256),
                           temperature=getattr(args, "temperature", 1.0), top_p=getattr(args, "top_p", 1.0),
                           top_k=getattr(args, "top_k", None) or 0)
