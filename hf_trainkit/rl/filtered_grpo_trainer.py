from __future__ import annotations

import json
import math
import os

import torch
from transformers.utils import logging
from trl import GRPOTrainer

from .advantages import compute_mode_advantages, format_mode_line, informative_groups, metric_prefix, teaching_rows
from .dynamic_sampling import REFILL_STATE_NAME, RefillSampler, assign_refills, concat_rows, group_keys, take_rows
from .filtered_grpo_config import FilteredGRPOConfig
from .rows import mask_rows, select_rows


logger = logging.get_logger(__name__)

# Stats of `compute_mode_advantages` that go into the logs, as `<mode prefix>/<name>`.
LOGGED_STATS = (
    "positive_samples",
    "negative_samples",
    "kept_samples",
    "positive_ratio",
    "negative_ratio",
    "kept_ratio",
    "avg_reward",
    "pos_neg_ratio",
)
# Loss types whose denominator counts rows: padding rows (see select_rows) must be scaled back out.
_ROW_MEAN_LOSSES = ("grpo", "sapo", "luspo", "dr_grpo")
# Which samples must exist for each filtered mode to have anything to learn from.
_STARVED_WHEN_NO = {"psr": "positive", "nsr": "negative", "w-reinforce": "positive"}


class FilteredGRPOTrainer(GRPOTrainer):
    """
    [`~trl.GRPOTrainer`] with the reward-filtered modes of Zhu et al. (2025): GRPO, PSR, NSR and W-REINFORCE.

    It takes the same arguments as [`~trl.GRPOTrainer`], with a [`FilteredGRPOConfig`] as `args`. Two hooks change:

    - `_generate_and_score_completions`: after TRL has scored the completions, the advantages are replaced by the
      mode's advantages ([`compute_mode_advantages`] on the rewards of the whole, all-process batch), the kept rows
      are marked, and the mode metrics (`psr/positive_samples`, `nsr/kept_ratio`, ...) are recorded.
    - `_compute_loss`: dropped rows are removed before the forward pass (with their images, in a vision-language
      batch: see [`hf_trainkit.rl.rows`]), and `num_items_in_batch` counts only kept tokens, so the loss is TRL's
      loss on the kept samples alone, for every `loss_type`.

    In mode `"grpo"` the advantages and the loss are TRL's own; only unscorable completions (every reward function
    returned `None`, advantage 0 in TRL) are left out of the loss instead of diluting its denominator. Rows of
    advantage exactly 0 (zero-variance groups) are left out of the forward pass with TRL's normaliser kept
    (`drop_zero_variance_groups`), so the loss and the gradient stay TRL's.

    With `dynamic_sampling=True`, `_generate_and_score_completions` also runs the refill rounds (see
    [`hf_trainkit.rl.dynamic_sampling`]), and `_save_rng_state` / `_load_rng_state` save and restore the refill
    sampler beside the RNG states of each checkpoint.

    Example:

    ```python
    >>> from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer
    >>> args = FilteredGRPOConfig(output_dir="runs/nsr", mode="nsr", num_generations=8)
    >>> trainer = FilteredGRPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=my_reward, args=args,
    ...                               train_dataset=dataset)
    >>> trainer.train()
    ```
    """

    _tag_names = ["trl", "grpo", "hf_trainkit", "filtered-grpo"]
    _name = "FilteredGRPO"

    def __init__(self, model, reward_funcs=None, args: FilteredGRPOConfig | None = None, *pargs, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = FilteredGRPOConfig(f"{str(model_name).split('/')[-1] or 'model'}-FilteredGRPO")
        elif not isinstance(args, FilteredGRPOConfig):
            raise TypeError(
                f"FilteredGRPOTrainer: args must be a FilteredGRPOConfig, got {type(args).__name__}; "
                "build one with FilteredGRPOConfig(mode=..., **your_grpo_config_kwargs)."
            )
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        if args.log_mode_summary:  # the mode line per step, then a short metrics line per log (not a 35-key dict)
            from ..callbacks.console import use_compact_console

            use_compact_console(self.callback_handler)
        self._last_rewards_per_func: torch.Tensor | None = None
        self._starved_batches = 0
        self._warned_non_row_aligned = False
        self._warned_padding = False
        self._refill_sampler = self._build_refill_sampler() if args.dynamic_sampling else None
        self._skip_zero_advantage_rows = args.mode == "grpo" and args.drop_zero_variance_groups
        if self._skip_zero_advantage_rows:
            reasons = self._zero_advantage_rows_cost()
            if reasons:
                self._skip_zero_advantage_rows = False
                logger.warning(
                    "FilteredGRPOTrainer: completions of zero-variance groups (advantage 0) still run their forward "
                    f"and backward passes: with {' and '.join(reasons)} they are part of the loss. Set beta=0 (and no "
                    "entropy/aux term) to skip them, or drop_zero_variance_groups=False to silence this."
                )

    # --- scoring: the mode's advantages and kept rows -------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # already gathered over all processes
        return rewards_per_func

    def _total_rewards(self) -> torch.Tensor:
        """Weighted sum of the reward functions per completion (TRL's `reward`), NaN where all returned `None`."""
        per_func = self._last_rewards_per_func
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        return rewards

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        rewards = self._total_rewards()
        if mode == "train" and self._refill_sampler is not None:
            output, rewards = self._refill_uninformative_groups(output, rewards, len(inputs))
        return self._filter_batch(output, rewards, mode)

    # --- dynamic sampling: groups that teach nothing replaced by groups for fresh prompts --------------------------

    def _informative_groups(self, output, rewards: torch.Tensor) -> torch.Tensor:
        """One bool per group of the all-process batch: does it teach the mode anything (see `informative_groups`)?"""
        args = self.args
        if args.mode == "grpo":  # TRL's own advantages: nonzero exactly where a group's rewards differ
            advantages = self.accelerator.gather(output["advantages"].contiguous()).detach().float().cpu()
            keep = ~torch.isnan(rewards.detach().float().cpu())
        else:
            result = compute_mode_advantages(
                rewards.detach().float().cpu(), args.mode, threshold=args.reward_threshold,
                positive_weight=args.positive_weight, negative_weight=args.negative_weight,
                num_generations=self.num_generations, scale_rewards=self.scale_rewards)
            advantages, keep = result.advantages, result.keep
        return informative_groups(advantages, keep, self.num_generations)

    def _refill_uninformative_groups(self, output, rewards: torch.Tensor, local_size: int):
        """DAPO's dynamic sampling: up to `dynamic_sampling_max_rounds` extra generation rounds, each for a whole
        generation batch of fresh prompts (every rank its usual share, so all run the same collectives); their
        informative groups take the slots of the uninformative ones. Every decision comes from all-process values,
        so every rank takes it alike."""
        num_generations, rank = self.num_generations, self.accelerator.process_index
        informative = self._informative_groups(output, rewards)
        num_groups = informative.numel()
        before = informative.float().mean().item()
        keys = group_keys(num_groups, num_generations, local_size)
        rows = torch.arange(num_generations)
        rounds = drawn = 0
        while not bool(informative.all()) and rounds < self.args.dynamic_sampling_max_rounds:
            prompts = self._refill_sampler.draw(num_groups)
            drawn += len(prompts)
            rounds += 1
            repeated = [int(i) for i in prompts for _ in range(num_generations)]
            refill_inputs = [self.train_dataset[i] for i in repeated[rank * local_size:(rank + 1) * local_size]]
            refill = super()._generate_and_score_completions(refill_inputs)
            refill_rewards = self._total_rewards()
            assignment = assign_refills(~informative, self._informative_groups(refill, refill_rewards), keys)
            if not assignment:
                continue
            total = rewards.numel()
            source = torch.arange(total)  # global rows of [this batch, the refill batch]
            for slot, group in assignment.items():
                source[slot * num_generations:(slot + 1) * num_generations] = total + group * num_generations + rows
            rewards = torch.cat([rewards, refill_rewards.to(rewards.device)])[source.to(rewards.device)]
            local = source[rank * local_size:(rank + 1) * local_size]
            offset = rank * local_size
            local = torch.where(local < total, local - offset, local - total - offset + local_size)
            output = take_rows(concat_rows(output, refill, self._tokenizer.pad_token_id), local)
            informative[list(assignment)] = True
        if rounds:  # the batch changed: TRL's token count of it too (a collective, on every rank alike)
            loss_mask = output["completion_mask"]
            if output.get("tool_mask") is not None:
                loss_mask = loss_mask * output["tool_mask"]
            output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/rounds"].append(float(rounds))
        metrics["dynamic_sampling/prompts_drawn"].append(float(drawn))
        metrics["dynamic_sampling/informative_ratio_before"].append(before)
        metrics["dynamic_sampling/informative_ratio_after"].append(informative.float().mean().item())
        return output, rewards

    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        if self._refill_sampler is not None and self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            with open(os.path.join(output_dir, REFILL_STATE_NAME), "w") as handle:
                json.dump(self._refill_sampler.state_dict(), handle)

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)
        if self._refill_sampler is None or checkpoint is None:
            return
        path = os.path.join(checkpoint, REFILL_STATE_NAME)
        if os.path.isfile(path):
            with open(path) as handle:
                self._refill_sampler.load_state_dict(json.load(handle))
        else:
            logger.warning(f"FilteredGRPOTrainer: {checkpoint} has no {REFILL_STATE_NAME} (saved without "
                           "dynamic_sampling): the refill prompts start again from the first of their order.")

    def _filter_batch(self, output, rewards: torch.Tensor, mode: str):
        """The mode's advantages, the rows that reach the model (`keep`) and those the loss normaliser counts
        (`counted`, only where it differs from `keep`), and the mode metrics. `rewards` are the all-process total
        rewards of the batch, so every rank takes every decision below alike."""
        args = self.args
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        result = compute_mode_advantages(
            rewards.detach().float().cpu(),
            args.mode,
            threshold=args.reward_threshold,
            positive_weight=args.positive_weight,
            negative_weight=args.negative_weight,
            num_generations=num_generations,
            scale_rewards=self.scale_rewards,
        )
        local_size = output["completion_ids"].shape[0]
        process_slice = slice(
            self.accelerator.process_index * local_size, (self.accelerator.process_index + 1) * local_size
        )
        device = output["advantages"].device
        keep_all, counted_all = result.keep, None
        if args.mode != "grpo":
            output["advantages"] = result.advantages[process_slice].to(device=device, dtype=output["advantages"].dtype)
            self._replace_logged_advantages(result.advantages)
        elif self._skip_zero_advantage_rows:
            # TRL's own advantages of every process: a row is left out only where it is exactly 0, so what the
            # model is not shown adds exactly nothing. The normaliser still counts it (`counted`).
            all_advantages = self.accelerator.gather(output["advantages"].contiguous()).detach().float().cpu()
            teaching = teaching_rows(all_advantages, keep_all)
            if not torch.equal(teaching, keep_all):
                keep_all, counted_all = teaching, keep_all
                kept = int(teaching.sum())
                total = result.stats["total_samples"]
                result.stats.update(kept_samples=float(kept), kept_ratio=kept / total if total else math.nan)
        # `keep_all` and `counted_all` come from all-process values, so this branch is taken on every rank or on
        # none: the gather inside it is a collective.
        if not bool(keep_all.all()):
            keep = keep_all[process_slice].to(device)
            counted = keep if counted_all is None else counted_all[process_slice].to(device)
            if counted_all is None or not bool(counted_all.all()):
                loss_mask = output["completion_mask"]
                if output.get("tool_mask") is not None:
                    loss_mask = loss_mask * output["tool_mask"]
                counted_tokens = (loss_mask * counted.unsqueeze(1).to(loss_mask.dtype)).sum()
                output["num_items_in_batch"] = self.accelerator.gather(counted_tokens).sum()
            output["keep"] = keep
            if counted_all is not None:
                output["counted"] = counted

        prefix = metric_prefix(args.mode)
        for name in LOGGED_STATS:
            if name in result.stats:
                self._metrics[mode][f"{prefix}/{name}"].append(result.stats[name])
        if mode == "train":
            if args.log_mode_summary and self.accelerator.is_main_process:
                print(format_mode_line(args.mode, self.state.global_step, result.stats,
                                       positive_weight=args.positive_weight, negative_weight=args.negative_weight),
                      flush=True)
            self._check_starvation(result.stats, rewards)
        return output

    def _build_refill_sampler(self) -> RefillSampler:
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise ValueError("FilteredGRPOTrainer: dynamic_sampling=True needs a map-style train_dataset (one with a "
                             "length, to draw refill prompts from); pass a datasets.Dataset or set "
                             "dynamic_sampling=False.")
        columns = set(getattr(dataset, "column_names", None) or [])
        if columns & {"image", "images"}:
            raise ValueError("FilteredGRPOTrainer: dynamic_sampling=True does not support image data sets yet (the "
                             "refill would have to join image batches); set dynamic_sampling=False.")
        return RefillSampler(len(dataset), self.args.seed)

    def _zero_advantage_rows_cost(self) -> list[str]:
        """What in the loss reads rows of advantage 0 (so that leaving them out would change it); empty if nothing."""
        reasons = []
        if self.beta != 0.0:
            reasons.append(f"beta={self.beta} (the KL term)")
        if self._entropy_bonus_enabled:
            reasons.append("an entropy bonus (entropy_coef)")
        if self.aux_loss_enabled:
            reasons.append("the router aux loss")
        if self.top_entropy_quantile < 1.0:
            reasons.append(f"top_entropy_quantile={self.top_entropy_quantile} (a quantile over the whole batch)")
        return reasons

    def _replace_logged_advantages(self, advantages: torch.Tensor):
        # TRL's completions table (log_completions) shows the advantages it computed; show the ones we train on.
        logged = self._logs["advantages"]
        if len(logged) >= advantages.numel():
            for _ in range(advantages.numel()):
                logged.pop()
            logged.extend(advantages.tolist())

    def _check_starvation(self, stats: dict[str, float], rewards: torch.Tensor):
        kind = _STARVED_WHEN_NO.get(self.args.mode)
        patience = self.args.starvation_warning_steps
        if kind is None or not patience:
            return
        if stats[f"{kind}_samples"] > 0:
            self._starved_batches = 0
            return
        self._starved_batches += 1
        if self._starved_batches != patience or not self.accelerator.is_main_process:
            return
        scorable = rewards[~torch.isnan(rewards)]
        seen = f"[{scorable.min().item():.3g}, {scorable.max().item():.3g}]" if scorable.numel() else "all unscorable"
        direction = "lower" if kind == "positive" else "raise"
        relation = ">" if kind == "positive" else "<="
        logger.warning(
            f"{self.args.mode.upper()}: 0/{int(stats['total_samples'])} {kind} samples (reward {relation} "
            f"reward_threshold={self.args.reward_threshold}) for {patience} generation batches in a row, so nothing "
            f"is trained on; rewards seen: {seen}. {direction.capitalize()} --reward-threshold, raise "
            f"--num-generations, or check the reward function."
        )

    # --- loss: only the kept rows reach the model ------------------------------------------------------------------

    def _rows_per_rank(self, kept: int, device) -> int:
        """The largest kept count over all ranks: every rank must hand TRL the same number of rows, since TRL
        all_gathers per-sequence metrics (one small collective per micro-batch)."""
        if self.accelerator.num_processes == 1:
            return kept
        return int(self.accelerator.gather(torch.tensor([kept], device=device)).max())

    def _compute_loss(self, model, inputs):
        keep = inputs.get("keep")
        if keep is None:
            return super()._compute_loss(model, inputs)
        # `counted`: the rows the loss normaliser counts. Without it, the kept rows (PSR/NSR: the loss of the kept
        # samples alone); in mode grpo, every scorable row, flat ones included (TRL's normaliser).
        counted = inputs.get("counted", keep)
        kept = int(keep.sum())
        size = self._rows_per_rank(kept, keep.device)
        selected = select_rows(inputs, keep, size)
        if selected is None:
            if not self._warned_non_row_aligned:
                self._warned_non_row_aligned = True
                logger.warning(
                    "FilteredGRPOTrainer: the image inputs of this batch cannot be split per sample (no `num_images`, "
                    "or a layout TRL does not split), so dropped samples are masked (zero weight) instead of removed: "
                    "they still cost their forward and backward passes."
                )
            # Masked rows weigh like padding rows: the row-mean rescaling below takes them out of the mean.
            selected, size = mask_rows(inputs, keep), keep.shape[0]
        loss = super()._compute_loss(model, selected)
        if kept == 0:
            return loss
        rows = int(counted.sum())
        if self.loss_type in _ROW_MEAN_LOSSES and size != rows:
            # TRL averaged over the `size` rows it was given (kept + zero-weight padding); the mean is over `rows`.
            if self._entropy_bonus_enabled or self.aux_loss_enabled:
                if not self._warned_padding:
                    self._warned_padding = True
                    logger.warning("FilteredGRPOTrainer: with an entropy bonus or an aux loss, the per-row mean of "
                                   f"loss_type={self.loss_type!r} counts the zero-weight rows that even out the "
                                   "kept counts across processes.")
            else:
                loss = loss * (size / rows)
        elif self.loss_type == "bnpo" and "counted" in inputs:
            # TRL's bnpo divides by the micro-batch's tokens: those of every counted row, not only the kept ones.
            loss_mask = inputs["completion_mask"] if inputs.get("tool_mask") is None else (
                inputs["completion_mask"] * inputs["tool_mask"])
            kept_tokens = loss_mask[keep].sum().float().clamp(min=1.0)
            counted_tokens = loss_mask[counted].sum().float().clamp(min=1.0)
            loss = loss * (kept_tokens / counted_tokens)
        return loss

    # --- resume: weights saved under other names than the model's -----------------------------------------------

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        # transformers saves several vision-language models (Qwen2-VL, Qwen2.5-VL, LLaVA, ...) under their
        # checkpoint-format names (`model.layers.0...`, `visual...`) while the model's own are `model.language_model.*`
        # and `model.visual.*`; Trainer's resume calls `load_state_dict(strict=False)` on the file, which then loads
        # nothing and trains on from the *initial* weights. `from_pretrained` knows the renaming: use it there.
        model = model if model is not None else self.model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from ..checkpointing.integrity import saved_weight_names

        saved = saved_weight_names(resume_from_checkpoint)
        if saved is None or saved <= set(model.state_dict()):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        reloaded = type(model).from_pretrained(resume_from_checkpoint, dtype=next(model.parameters()).dtype)
        model.load_state_dict(reloaded.state_dict(), strict=True)
        del reloaded

    # --- saves on every node -------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None):
        # transformers 5 writes a model's weights only on global rank 0 once torch.distributed is up, whatever
        # `is_main_process` says, so with `save_on_each_node` the other nodes' checkpoints and final folders lacked
        # the weights and config: let each node's first process write them, as the flag promises.
        if not self.args.save_on_each_node or not self.args.should_save:
            return super()._save(output_dir, state_dict)
        from ..distributed import saving_from_this_rank

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        with saving_from_this_rank(model, getattr(model, "base_model", None), getattr(model, "model", None)):
            return super()._save(output_dir, state_dict)
