"""`scripts/train_grpo.py`: train with GRPO, PSR, NSR or W-REINFORCE from the command line.

With no `--model` and no `--dataset` it trains a tiny model built from a config on the built-in digit-rule task
(see `hf_trainkit.toy`), on the CPU, in about a minute: the demo, and the path the tests take.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .advantages import MODES


# Defaults that depend on the task: the built-in toy task's answer is one word, and a short run shows the effect.
TOY_TASK_DEFAULTS = {
    "max_steps": 200,
    "max_completion_length": 4,
}
# Defaults that depend on the model: the tiny built-in model learns at rates a real model would not survive.
# 3e-4 lets the four modes part ways on the toy task's held-out prompts (benchmarks/paper_fidelity.py).
TOY_MODEL_DEFAULTS = {
    "learning_rate": 3e-4,
    "per_device_train_batch_size": 16,
    "num_generations": 8,
}
# Defaults for a real dataset and a real model (TRL's GRPOConfig defaults where it has them).
TASK_DEFAULTS = {
    "max_steps": -1,
    "max_completion_length": 256,
}
MODEL_DEFAULTS = {
    "learning_rate": 1e-6,
    "per_device_train_batch_size": 8,
    "num_generations": 8,
}


class UsageError(Exception):
    """A bad flag or input file: reported in one line, exit code 2."""


def _flag(parser, name: str, **kwargs):
    """Register ``--kebab-case`` with its ``--snake_case`` alias (as HfArgumentParser accepts both)."""
    names = [f"--{name}"]
    if "-" in name:
        names.append(f"--{name.replace('-', '_')}")
    parser.add_argument(*names, **kwargs)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _min_delta(text: str) -> tuple[float, bool]:
    """'0.01' (absolute) or '1%' (relative): (value, relative)."""
    relative = text.strip().endswith("%")
    value = float(text.strip().rstrip("%"))
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return (value / 100, True) if relative else (value, False)


def _mode(text: str) -> str:
    from .advantages import canonical_mode

    try:
        return canonical_mode(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _toy_warmup_default() -> int:
    from ..toy import WARMUP_STEPS

    return WARMUP_STEPS


def build_parser() -> argparse.ArgumentParser:
    from ..argparsing import OneLineArgumentParser

    parser = OneLineArgumentParser(
        prog="train_grpo.py",
        description="Reward-filtered GRPO training (GRPO, PSR, NSR, W-REINFORCE). Without --model/--dataset it "
        "trains a tiny built-in model on a toy task on the CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    task = parser.add_argument_group("mode and task")
    _flag(task, "mode", type=_mode, default="grpo", metavar="MODE", help=f"one of {', '.join(MODES)}")
    _flag(task, "model", default=None, metavar="NAME_OR_PATH",
          help="model id or local directory (default: a tiny Llama built from a config, for the toy task)")
    _flag(task, "dataset", default=None, metavar="NAME_OR_PATH",
          help="dataset id, a saved dataset directory, or a .json/.jsonl/.csv/.parquet file with a 'prompt' column "
          "(default: the built-in digit-rule task)")
    _flag(task, "dataset-config", default=None, metavar="NAME", help="dataset configuration name")
    _flag(task, "dataset-split", default="train", metavar="SPLIT", help="dataset split to train on")
    _flag(task, "prompt-column", default="prompt", metavar="COLUMN", help="column holding the prompts")
    _flag(task, "reward-func", action="append", default=None, metavar="NAME_OR_IMPORT",
          help="reward function: a built-in (digit_rule, exact_answer) or 'module:function'; repeatable "
          "(default: digit_rule for the toy task, exact_answer otherwise)")

    rl = parser.add_argument_group("reward filter")
    _flag(rl, "reward-threshold", type=float, default=0.5, metavar="R",
          help="a completion is positive when reward > R")
    _flag(rl, "positive-weight", type=_non_negative_float, default=0.1, metavar="LAMBDA",
          help="W-REINFORCE advantage of a positive sample")
    _flag(rl, "negative-weight", type=_non_negative_float, default=1.0, metavar="W",
          help="NSR/W-REINFORCE advantage magnitude of a negative sample")
    _flag(rl, "loss-type", default=None, metavar="TYPE", help="TRL loss_type (default: TRL's)")
    _flag(rl, "beta", type=_non_negative_float, default=0.0, metavar="BETA", help="KL coefficient")

    train = parser.add_argument_group("training")
    _flag(train, "output-dir", default=None, metavar="DIR", help="where checkpoints and logs go (default: runs/MODE-SEED)")
    _flag(train, "seed", type=int, default=42, metavar="N", help="random seed")
    _flag(train, "max-steps", type=int, default=None, metavar="N",
          help="optimizer steps; -1 trains for --num-train-epochs (default: 200 for the toy task, else -1)")
    _flag(train, "num-train-epochs", type=float, default=1.0, metavar="N", help="epochs when --max-steps is -1")
    _flag(train, "learning-rate", type=float, default=None, metavar="LR",
          help="peak learning rate (default: 3e-3 for the toy task, else 1e-6)")
    _flag(train, "per-device-train-batch-size", type=_positive_int, default=None, metavar="N",
          help="completions per device per step (default: 16 for the toy task, else 8)")
    _flag(train, "gradient-accumulation-steps", type=_positive_int, default=1, metavar="N", help="accumulation steps")
    _flag(train, "num-generations", type=_positive_int, default=None, metavar="G",
          help="completions per prompt (default: 8)")
    _flag(train, "max-completion-length", type=_positive_int, default=None, metavar="N",
          help="max new tokens per completion (default: 4 for the toy task, else 256)")
    _flag(train, "temperature", type=float, default=1.0, metavar="T", help="sampling temperature")
    _flag(train, "max-grad-norm", type=_non_negative_float, default=None, metavar="X",
          help="gradient clipping norm (0: no clipping; default: TRL's GRPOConfig, 1.0)")
    _flag(train, "warmup-steps", type=_non_negative_float, default=None, metavar="N",
          help="learning-rate warm-up: a number of steps, or a fraction of all steps if below 1 (default: TRL's)")
    _flag(train, "lr-scheduler-type", default=None, metavar="TYPE",
          help="learning-rate schedule: linear, cosine, constant, constant_with_warmup, ... (default: TRL's)")
    _flag(train, "weight-decay", type=_non_negative_float, default=None, metavar="W", help="AdamW weight decay")
    _flag(train, "set", action="append", default=[], metavar="FIELD=VALUE", dest="config_overrides",
          help="any other field of FilteredGRPOConfig (TRL's GRPOConfig, transformers' TrainingArguments), e.g. "
          "--set gradient_checkpointing=true --set optim=adamw_torch_fused --set adam_beta2=0.99; repeatable")
    _flag(train, "logging-steps", type=_positive_int, default=1, metavar="N", help="log every N steps")
    _flag(train, "log-completions", action="store_true", help="print a sample of completions at each log")

    lora = parser.add_argument_group("LoRA (peft)")
    _flag(lora, "lora", action="store_true", help="train a LoRA adapter instead of all weights")
    _flag(lora, "lora-r", type=_positive_int, default=16, metavar="R", help="LoRA rank")
    _flag(lora, "lora-alpha", type=_positive_int, default=32, metavar="A", help="LoRA alpha")
    _flag(lora, "lora-dropout", type=_non_negative_float, default=0.05, metavar="P", help="LoRA dropout")
    _flag(lora, "lora-target-modules", nargs="+", default=["all-linear"], metavar="MODULE",
          help="modules to adapt")

    save = parser.add_argument_group("checkpoints")
    _flag(save, "save-steps", type=_positive_int, default=50, metavar="N", help="save a checkpoint every N steps")
    _flag(save, "save-total-limit", type=_positive_int, default=None, metavar="N", help="keep at most N checkpoints")
    _flag(save, "no-save-checkpoints", action="store_true", help="write no checkpoint directory during training")
    _flag(save, "resume-from-checkpoint", default=None, metavar="CKPT",
          help="checkpoint directory or checkpoint name to resume from; 'latest' resumes from the newest valid one "
          "even after the run finished (default: the newest valid checkpoint in --output-dir, if any: re-running "
          "the same command resumes)")
    _flag(save, "checkpoint-mirror", default=None, metavar="URL",
          help="also keep the checkpoints at this fsspec URL or path (a mounted drive, s3://..., gs://...): copied "
          "in the background, same --save-total-limit, and pulled on start when newer than the local ones")
    _flag(save, "no-resume", action="store_true",
          help="start from scratch even if --output-dir holds checkpoints or a finished run")

    policy = parser.add_argument_group("checkpoint policy (which checkpoints exist)")
    _flag(policy, "checkpoint-metric", default=None, metavar="KEY",
          help="logged key ranking checkpoints, e.g. reward, nsr/avg_reward, eval_loss (for --save-top-k and "
          "--save-on-improvement)")
    _flag(policy, "checkpoint-mode", choices=("min", "max"), default=None,
          help="min or max (default: max for rewards/accuracies/scores, else min)")
    _flag(policy, "save-top-k", type=_positive_int, default=None, metavar="N",
          help="keep the N best checkpoints by --checkpoint-metric, plus the newest and named ones")
    _flag(policy, "save-on-improvement", action="store_true",
          help="also save whenever --checkpoint-metric improves (interval saves: --save-steps)")
    _flag(policy, "save-min-delta", type=_min_delta, default=(0.0, False), metavar="D|P%",
          help="an improvement must exceed D (absolute) or P%% of the best value")
    _flag(policy, "checkpoint-smoothing", type=float, default=None, metavar="W",
          help="EMA weight in [0, 1) on the metric before comparing (default: 0.9 for training-log metrics, which "
          "are noisy per batch; 0 for eval_* metrics)")
    _flag(policy, "control-port", type=int, default=None, metavar="PORT",
          help="also take control requests over HTTP on this port (0: any free port), token in OUTPUT_DIR/"
          "control_token; `hf-trainkit control` works without it")
    _flag(policy, "control-host", default="127.0.0.1", metavar="HOST",
          help="interface of the control endpoint (127.0.0.1: this machine only)")
    _flag(policy, "no-live-control", action="store_true",
          help="do not watch OUTPUT_DIR/control for `hf-trainkit control` requests")

    evaluation = parser.add_argument_group("pass@k evaluation (held-out prompts)")
    _flag(evaluation, "eval-every", type=int, default=None, metavar="N",
          help="sample --eval-n completions per evaluation prompt before training, every N steps and at the end; "
          "log eval/pass@K, eval/entropy, eval/coverage (default: 50 on the toy task's held-out prompts, else "
          "off; 0: off)")
    _flag(evaluation, "eval-n", type=_positive_int, default=64, metavar="N", help="samples per evaluation prompt")
    _flag(evaluation, "eval-k", type=_positive_int, nargs="+", default=[1, 4, 16, 64], metavar="K",
          help="the k of the logged pass@k")
    _flag(evaluation, "eval-dataset", default=None, metavar="NAME_OR_PATH",
          help="evaluation prompts, loaded like --dataset (default: the toy task's held-out prompts)")
    _flag(evaluation, "eval-split", default="test", metavar="SPLIT", help="split of --eval-dataset")
    _flag(task, "toy-warmup-steps", type=int, default=None, metavar="N",
          help="supervised warm-up steps that give the built-in model its prior over the toy task (0: a random "
          "model; default: %d)" % _toy_warmup_default())

    logging_group = parser.add_argument_group("reporting")
    _flag(logging_group, "report-to", nargs="+", default=["none"], metavar="BACKEND",
          help="integrations to report to (e.g. wandb, tensorboard, none)")
    _flag(logging_group, "wandb-project", default=None, metavar="NAME", help="W&B project (sets WANDB_PROJECT)")
    _flag(logging_group, "wandb-group", default=None, metavar="NAME", help="W&B run group (or WANDB_RUN_GROUP)")
    _flag(logging_group, "wandb-tags", nargs="+", default=None, metavar="TAG", help="W&B tags (or WANDB_TAGS)")
    _flag(logging_group, "wandb-every", type=_positive_int, default=None, metavar="N",
          help="send W&B one record every N steps (the mean of the window); implies --report-to wandb "
          "(default with wandb: 1)")
    _flag(logging_group, "run-name", default=None, metavar="NAME", help="run name for the integrations")
    _flag(logging_group, "quiet", action="store_true", help="do not print the per-step mode line")
    _flag(logging_group, "no-run-log", action="store_true",
          help="do not copy the console into OUTPUT_DIR/logs/train.log")
    _flag(logging_group, "no-loss-curve", action="store_true",
          help="do not write img/loss_curve.png, img/reward_curve.png and training_stats.json at the end")
    _flag(logging_group, "no-diagnostics", action="store_true",
          help="do not print live diagnostics (non-finite values, spikes, plateau, overfitting, starved filter)")

    stop = parser.add_argument_group("early stopping (any logged metric)")
    _flag(stop, "early-stopping-metric", default=None, metavar="KEY",
          help="logged key to watch, e.g. reward, nsr/avg_reward, eval_loss (default: no early stopping)")
    _flag(stop, "early-stopping-mode", choices=("min", "max"), default=None,
          help="min or max (default: max for keys containing 'reward' or 'accuracy', else min)")
    _flag(stop, "early-stopping-patience", type=_positive_int, default=3, metavar="N",
          help="checks without improvement before stopping")
    _flag(stop, "early-stopping-min-delta", type=_non_negative_float, default=0.0, metavar="D",
          help="smallest absolute change that counts as an improvement")
    _flag(stop, "early-stopping-smoothing", type=float, default=0.0, metavar="W",
          help="EMA weight in [0, 1) applied to the metric before comparing (for noisy rewards)")
    _flag(stop, "divergence-threshold", type=float, default=None, metavar="X",
          help="stop at once when the metric is worse than X")
    _flag(stop, "stopping-threshold", type=float, default=None, metavar="X",
          help="stop at once when the metric is at least as good as X")
    return parser


def _resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    # Task defaults follow --dataset and model defaults follow --model: `--model X` on the toy task keeps the toy
    # task's answer length and run length, `--dataset Y` on the tiny model keeps its learning rate.
    task_defaults = TOY_TASK_DEFAULTS if args.dataset is None else TASK_DEFAULTS
    model_defaults = TOY_MODEL_DEFAULTS if args.model is None else MODEL_DEFAULTS
    args.defaults_used = {}
    for defaults in (task_defaults, model_defaults):
        for key, value in defaults.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
                args.defaults_used[key] = value
    if args.toy_warmup_steps is None:
        args.toy_warmup_steps = _toy_warmup_default()
    elif args.model is not None:
        raise UsageError("--toy-warmup-steps applies to the built-in model only: drop it or --model.")
    elif args.toy_warmup_steps < 0:
        raise UsageError(f"--toy-warmup-steps {args.toy_warmup_steps}: use 0 (a random model) or more.")
    if args.eval_every is None:
        args.eval_every = 50 if args.dataset is None or args.eval_dataset else 0
    if args.eval_every and args.dataset is not None and not args.eval_dataset:
        raise UsageError("--eval-every with --dataset needs --eval-dataset (the prompts to measure pass@k on).")
    if args.eval_every and max(args.eval_k) > args.eval_n:
        raise UsageError(f"--eval-k {max(args.eval_k)} is larger than --eval-n {args.eval_n}: pass@k needs k <= n.")
    if args.reward_func is None:
        args.reward_func = ["digit_rule" if args.dataset is None else "exact_answer"]
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", f"{args.mode}-{args.seed}")
    for flag, value in (("--model", args.model), ("--dataset", args.dataset)):
        if value and looks_like_path(value) and not Path(value).expanduser().exists():
            raise UsageError(f"{flag} {value}: no such file or directory.")
    if args.max_steps == 0 or args.max_steps < -1:
        raise UsageError(f"--max-steps {args.max_steps}: use a positive number of steps, or -1 for whole epochs.")
    if args.model is not None and args.dataset is None and "digit_rule" not in args.reward_func:
        raise UsageError("--model without --dataset trains on the toy task, which needs --reward-func digit_rule.")
    if args.no_save_checkpoints:
        clash = [flag for flag, value in (("--save-top-k", args.save_top_k), ("--save-on-improvement",
                                          args.save_on_improvement), ("--save-total-limit", args.save_total_limit))
                 if value]
        if clash:
            raise UsageError(f"--no-save-checkpoints writes no checkpoint: drop {', '.join(clash)}.")
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    if global_batch % args.num_generations:
        raise UsageError(
            f"--per-device-train-batch-size {args.per_device_train_batch_size} x --gradient-accumulation-steps "
            f"{args.gradient_accumulation_steps} must be a multiple of --num-generations {args.num_generations}."
        )
    return args


def describe_defaults(args: argparse.Namespace) -> str:
    """One line naming the defaults a run took, and what they follow (the task or the model)."""
    parts = []
    for owner, keys in ((f"task {'toy' if args.dataset is None else args.dataset}", TASK_DEFAULTS),
                        (f"model {'built-in' if args.model is None else args.model}", MODEL_DEFAULTS)):
        taken = [f"{key}={args.defaults_used[key]}" for key in keys if key in args.defaults_used]
        if taken:
            parts.append(f"{', '.join(taken)} (for the {owner})")
    return "Defaults: " + "; ".join(parts)


def looks_like_path(value: str) -> bool:
    """Whether a --model/--dataset value can only be a local path (a hub id is `name` or `org/name`): such a value
    that does not exist is reported at once instead of after the hub's retries."""
    return value.startswith(("/", "./", "../", "~", ".\\")) or value.count("/") > 1 or "\\" in value \
        or value in (".", "..")


def load_train_dataset(args: argparse.Namespace):
    """The toy dataset's training split, or `--dataset` (hub id, saved directory, or data file) with a `prompt`
    column."""
    from ..toy import build_toy_dataset

    if args.dataset is None:
        return build_toy_dataset(num_prompts=4096, seed=args.seed)
    return load_prompt_dataset("--dataset", args.dataset, args.dataset_config, args.dataset_split, args.prompt_column)


def load_eval_dataset(args: argparse.Namespace):
    """The prompts `PassAtKCallback` measures: `--eval-dataset`, else the toy task's held-out prompts."""
    from ..toy import build_toy_dataset

    if args.eval_dataset is None:
        return build_toy_dataset(split="heldout")
    return load_prompt_dataset("--eval-dataset", args.eval_dataset, args.dataset_config, args.eval_split,
                               args.prompt_column)


def load_prompt_dataset(flag: str, spec: str, config_name: str | None, split: str, prompt_column: str):
    """A hub id, a saved dataset directory or a data file, with its `prompt_column` renamed to ``prompt``."""
    import datasets

    path = Path(spec)
    formats = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
    if not path.exists() and (looks_like_path(spec) or path.suffix in formats):
        raise UsageError(f"{flag} {spec}: no such file or directory.")
    try:
        if path.is_file():
            if path.suffix not in formats:
                raise UsageError(f"{flag} {spec}: unsupported file type; use {', '.join(formats)}.")
            dataset = datasets.load_dataset(formats[path.suffix], data_files=str(path), split="train")
        elif path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(spec, config_name, split=split)
    except UsageError:
        raise
    except Exception as error:  # datasets raises many types for a bad name, path or split
        raise UsageError(f"{flag} {spec}: cannot be loaded ({type(error).__name__}: {error}).") from None
    if prompt_column not in dataset.column_names:
        raise UsageError(
            f"{flag} {spec}: no column {prompt_column!r} (columns: {', '.join(dataset.column_names)}); "
            "pass --prompt-column."
        )
    if prompt_column != "prompt":
        dataset = dataset.rename_column(prompt_column, "prompt")
    return dataset


def build_config(args: argparse.Namespace):
    from .filtered_grpo_config import FilteredGRPOConfig

    extra = {}
    if args.loss_type is not None:
        extra["loss_type"] = args.loss_type
    if args.no_save_checkpoints:
        extra["save_strategy"] = "no"
    else:
        # The limit is applied by ResumableCheckpointsCallback (by step, valid checkpoints only), not the Trainer.
        extra.update(save_strategy="steps", save_steps=args.save_steps)
    settings = dict(
        output_dir=args.output_dir,
        mode=args.mode,
        reward_threshold=args.reward_threshold,
        positive_weight=args.positive_weight,
        negative_weight=args.negative_weight,
        seed=args.seed,
        max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        beta=args.beta,
        logging_steps=args.logging_steps,
        log_completions=args.log_completions,
        # W&B is owned by WandbEveryNCallback (see build_callbacks): keeping "wandb" out of report_to stops both
        # transformers' per-step WandbCallback and TRL's per-call profiling records.
        report_to=[r for r in args.report_to if r not in ("none", "wandb")],
        restore_callback_states_from_checkpoint=True,
        run_name=args.run_name,
        log_mode_summary=not args.quiet,
        **extra,
    )
    for name in ("max_grad_norm", "warmup_steps", "lr_scheduler_type", "weight_decay"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    settings.update(config_overrides(args.config_overrides, set(settings)))
    return FilteredGRPOConfig(**settings)


def config_overrides(pairs: list[str], taken: set[str]) -> dict:
    """`--set FIELD=VALUE` pairs as config fields; VALUE is read as JSON (true, 3, 0.5, ["a"]) or else as text."""
    import dataclasses
    import difflib
    import json

    from .filtered_grpo_config import FilteredGRPOConfig

    fields = {f.name for f in dataclasses.fields(FilteredGRPOConfig) if f.init}
    overrides = {}
    for pair in pairs:
        name, separator, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not separator or not name:
            raise UsageError(f"--set {pair}: use FIELD=VALUE, e.g. --set beta=0.04.")
        if name not in fields:
            close = difflib.get_close_matches(name, sorted(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"--set {pair}: FilteredGRPOConfig has no field {name!r}{hint}.")
        if name in taken:
            raise UsageError(f"--set {pair}: {name} has a flag of its own, --{name.replace('_', '-')}.")
        try:
            value = json.loads(text.lower() if text.lower() in ("true", "false", "null") else text)
        except ValueError:
            value = text
        overrides[name] = value
    return overrides


def build_model_and_tokenizer(args: argparse.Namespace):
    """(model or model id, tokenizer). A model id stays a string so that TRL loads it after the config."""
    if args.model is None:
        from ..toy import build_toy_tokenizer

        return toy_base_model_dir(args), build_toy_tokenizer()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {args.model}: cannot load its tokenizer ({error}).") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return args.model, tokenizer


def toy_base_model_dir(args: argparse.Namespace) -> str:
    from ..constants import BASE_MODEL_DIR

    return os.path.join(args.output_dir, BASE_MODEL_DIR)


def prepare_base_model(args: argparse.Namespace, config):
    """Build and save the toy base model (main process, once; the others wait and load it from disk) and record
    what the run is trained from in OUTPUT_DIR/hf_trainkit_run.json, for `hf-trainkit eval`."""
    import json

    from ..constants import RUN_RECORD
    from ..toy import ensure_toy_base_model, toy_base_recipe

    with config.main_process_first(local=False, desc="build the toy base model"):
        if config.process_index != 0:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        if args.model is None:
            ensure_toy_base_model(toy_base_model_dir(args), toy_base_recipe(args.seed, args.toy_warmup_steps))
        record = {
            "base_model": {"name_or_path": args.model, "toy": args.model is None,
                           "lora": bool(args.lora)} if args.model else
            {"name_or_path": None, "toy": True, "directory": os.path.basename(toy_base_model_dir(args)),
             "recipe": toy_base_recipe(args.seed, args.toy_warmup_steps), "lora": bool(args.lora)},
            "mode": args.mode,
            "dataset": args.dataset,
            "eval_dataset": args.eval_dataset,
            "eval_split": args.eval_split,
            "prompt_column": args.prompt_column,
            "reward_funcs": args.reward_func,
            "reward_threshold": args.reward_threshold,
            "generation": {"max_new_tokens": config.max_completion_length, "temperature": config.temperature,
                           "top_p": config.top_p, "top_k": config.top_k},
            "seed": args.seed,
        }
        with open(os.path.join(args.output_dir, RUN_RECORD), "w") as handle:
            json.dump(record, handle, indent=2)


def build_peft_config(args: argparse.Namespace):
    if not args.lora:
        return None
    from transformers.utils import is_peft_available

    if not is_peft_available():
        raise UsageError("--lora needs peft: pip install peft")
    from peft import LoraConfig

    targets = args.lora_target_modules
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets[0] if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )


def _as_flags(message: str) -> str:
    """A callback's argument error, in the script's flag names."""
    names = {"monitor": "--checkpoint-metric", "save_top_k": "--save-top-k", "save_total_limit": "--save-total-limit",
             "save_on_improvement": "--save-on-improvement", "min_delta": "--save-min-delta",
             "smoothing": "--checkpoint-smoothing", "mode": "--checkpoint-mode"}
    message = message.split(": ", 1)[-1]
    for name, flag in sorted(names.items(), key=lambda item: -len(item[0])):
        message = re.sub(rf"\b{name}\b", flag, message)
    return message


def build_callbacks(args: argparse.Namespace) -> list:
    from ..callbacks import (CheckpointPolicyCallback, LiveControlCallback, LossCurveCallback,
                             MetricEarlyStoppingCallback, TrainingDiagnosticsCallback, WandbEveryNCallback)

    mirror = None
    if args.checkpoint_mirror and not args.no_save_checkpoints:
        from ..checkpointing.mirror import CheckpointMirror

        try:
            mirror = CheckpointMirror(args.checkpoint_mirror, save_total_limit=args.save_total_limit)
        except (ImportError, ValueError, OSError) as error:
            raise UsageError(f"--checkpoint-mirror {args.checkpoint_mirror}: {error}") from None
    min_delta, relative_delta = args.save_min_delta
    try:
        callbacks = [CheckpointPolicyCallback(
            monitor=args.checkpoint_metric, mode=args.checkpoint_mode, save_top_k=args.save_top_k,
            save_on_improvement=args.save_on_improvement, min_delta=min_delta, relative_delta=relative_delta,
            smoothing=args.checkpoint_smoothing, save_total_limit=args.save_total_limit, mirror=mirror)]
    except ValueError as error:
        raise UsageError(_as_flags(str(error))) from None
    if not args.no_live_control:
        if args.control_port is not None and not 0 <= args.control_port <= 65535:
            raise UsageError(f"--control-port {args.control_port}: use 0-65535 (0 picks a free port).")
        callbacks.append(LiveControlCallback(port=args.control_port, host=args.control_host))
    if args.wandb_every is not None or "wandb" in args.report_to:
        callbacks.append(WandbEveryNCallback(args.wandb_every or 1, project=args.wandb_project,
                                             run_name=args.run_name, group=args.wandb_group, tags=args.wandb_tags))
    if not args.no_loss_curve:
        callbacks.append(LossCurveCallback())
    if not args.no_diagnostics:
        callbacks.append(TrainingDiagnosticsCallback())
    if args.early_stopping_metric:
        key = args.early_stopping_metric
        mode = args.early_stopping_mode or ("max" if ("reward" in key or "accuracy" in key) else "min")
        try:
            callbacks.append(MetricEarlyStoppingCallback(
                key, mode=mode, patience=args.early_stopping_patience, min_delta=args.early_stopping_min_delta,
                smoothing=args.early_stopping_smoothing, divergence_threshold=args.divergence_threshold,
                stopping_threshold=args.stopping_threshold))
        except ValueError as error:
            raise UsageError(str(error)) from None
    return callbacks


def resume_point(args: argparse.Namespace, config) -> tuple[bool, str | None]:
    """(already finished, checkpoint to resume from) for `args.output_dir`."""
    from ..checkpointing import find_resume_checkpoint, read_training_complete
    from ..checkpointing.control import checkpoint_names

    if args.no_resume:
        return False, None
    if args.resume_from_checkpoint == "latest":
        return False, find_resume_checkpoint(args.output_dir)
    if args.resume_from_checkpoint is not None:
        named = checkpoint_names(args.output_dir).get(args.resume_from_checkpoint) \
            if os.sep not in args.resume_from_checkpoint else None
        if named:
            return False, os.path.join(args.output_dir, named)
        if not os.path.isdir(args.resume_from_checkpoint):
            raise UsageError(f"--resume-from-checkpoint {args.resume_from_checkpoint}: no such directory or "
                             f"checkpoint name in {args.output_dir}.")
        return False, args.resume_from_checkpoint
    record = read_training_complete(args.output_dir)
    if record and record.get("max_steps") == config.max_steps and (
            config.max_steps > 0 or record.get("num_train_epochs") == config.num_train_epochs):
        return True, None
    return False, find_resume_checkpoint(args.output_dir)


def agreed_resume_point(args: argparse.Namespace, config) -> tuple[bool, str | None]:
    """`resume_point` decided by the main process and broadcast, so every rank resumes from the same checkpoint
    (or all stop) even if their views of the disk differ."""
    if config.world_size == 1:
        return resume_point(args, config)
    from accelerate.utils import broadcast_object_list

    decision = [None]
    if config.process_index == 0:
        try:
            decision = [("ok", resume_point(args, config))]
        except UsageError as error:
            decision = [("error", str(error))]
    broadcast_object_list(decision, from_process=0)
    status, value = decision[0]
    if status == "error":
        raise UsageError(value)
    return value


def pull_from_mirror(args: argparse.Namespace, config, callbacks: list):
    """Bring the mirror's newest complete checkpoint into --output-dir when it is newer than the local ones."""
    from ..callbacks import ResumableCheckpointsCallback
    from ..checkpointing.mirror import newest_local_step

    mirror = next((cb.mirror for cb in callbacks if isinstance(cb, ResumableCheckpointsCallback)), None)
    if mirror is None or args.no_resume:
        return
    with config.main_process_first(local=False, desc="pull from the checkpoint mirror"):
        if config.process_index == 0:
            try:
                remote = mirror.complete_steps()
            except OSError as error:
                print(f"Checkpoint mirror {mirror.url} unreachable ({error}); using local checkpoints only.")
                return
            if remote and remote[-1] > newest_local_step(args.output_dir):
                local = mirror.pull(remote[-1], args.output_dir)
                print(f"Pulled {local.name} from {mirror.url} (newer than any local checkpoint).")


def run(args: argparse.Namespace):
    """Train as `args` says and return the trainer (None when the run had already finished)."""
    from .rewards import resolve_reward_func

    args = _resolve_defaults(args)
    if args.wandb_project:
        os.environ["WANDB_PROJECT"] = args.wandb_project
    try:
        reward_funcs = [resolve_reward_func(spec) for spec in args.reward_func]
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        config = build_config(args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if config.process_index == 0 and args.defaults_used:
        print(describe_defaults(args), flush=True)
    callbacks = build_callbacks(args)
    pull_from_mirror(args, config, callbacks)
    finished, checkpoint = agreed_resume_point(args, config)
    if finished:
        print(f"{args.output_dir} already holds a finished run (training_complete.json): nothing to train. "
              "Pass --no-resume to train again from scratch, or a larger --max-steps to continue.")
        return None
    from ..run_log import console_log

    # The main process keeps what it prints from here on in OUTPUT_DIR/logs/train.log.
    with console_log(args.output_dir, enabled=config.process_index == 0 and not args.no_run_log):
        return _train(args, config, reward_funcs, callbacks, checkpoint)


def _train(args: argparse.Namespace, config, reward_funcs: list, callbacks: list, checkpoint: str | None):
    from .filtered_grpo_trainer import FilteredGRPOTrainer

    if checkpoint:
        print(f"Resuming from {checkpoint}")
    dataset = load_train_dataset(args)
    eval_dataset = load_eval_dataset(args) if args.eval_every else None
    prepare_base_model(args, config)
    tried: list[str] = []
    while True:
        # After the config: under DeepSpeed ZeRO-3 the model must be created once the config has set up zero.Init.
        model, tokenizer = build_model_and_tokenizer(args)
        trainer = FilteredGRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=build_peft_config(args),
            callbacks=callbacks,
        )
        if eval_dataset is not None:
            from ..callbacks import PassAtKCallback

            try:
                trainer.add_callback(PassAtKCallback(trainer, eval_dataset, n=args.eval_n, ks=args.eval_k,
                                                     every_n_steps=args.eval_every))
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
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
            break
        except Exception as error:
            older = _fallback_after_failed_load(error, trainer, checkpoint, config, args)
            if older is _NO_FALLBACK:
                raise
            tried.append(checkpoint)
            checkpoint = older
            callbacks = build_callbacks(args)
    trainer.save_state()
    if stopping_callback(trainer) is None:
        # The trained weights (or adapter) at the top of the output dir, as `trainer.save_model()` puts them, even
        # with --no-save-checkpoints: `hf-trainkit eval OUTPUT_DIR` and `from_pretrained(OUTPUT_DIR)` load them.
        trainer.save_model()
    if trainer.args.should_save:
        print(f"Run written to {args.output_dir} (trainer_state.json: {len(trainer.state.log_history)} log entries; "
              "final weights in the same folder).")
    return trainer


_NO_FALLBACK = object()
# Functions of transformers/accelerate/DeepSpeed that read a checkpoint: an error raised inside one of them means
# the checkpoint could not be loaded, not that training itself failed.
_LOADERS = {"_load_from_checkpoint", "load_from_json", "_load_optimizer_and_scheduler", "_load_rng_state",
            "_load_scaler", "_load_callback_state", "load_checkpoint", "load_state_dict", "load_file",
            "deepspeed_load_checkpoint", "_load_checkpoint"}


def _fallback_after_failed_load(error: BaseException, trainer, checkpoint: str | None, config, args):
    """The next older valid checkpoint (or None: from scratch) when loading `checkpoint` failed, else _NO_FALLBACK.

    Only in one process: with several, the ranks would have to agree that the load failed everywhere, and a rank
    that loaded fine is already waiting in a collective.
    """
    import traceback

    from ..checkpointing import find_resume_checkpoint
    from ..checkpointing.marker import mark_unloadable

    if checkpoint is None or config.world_size > 1 or trainer.state.global_step > _step_of(checkpoint):
        return _NO_FALLBACK
    frames = {frame.name for frame in traceback.extract_tb(error.__traceback__)}
    if not frames & _LOADERS:
        return _NO_FALLBACK
    reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
    mark_unloadable(checkpoint, reason)
    older = find_resume_checkpoint(args.output_dir, warn=False)  # the one warning is below
    print(f"Warning: could not load {checkpoint} ({reason}); resuming from "
          f"{older or 'scratch (no older valid checkpoint)'} instead. {checkpoint} stays on disk, marked unloadable.",
          file=sys.stderr, flush=True)
    return older


def _step_of(checkpoint: str) -> int:
    match = re.search(r"checkpoint-(\d+)$", os.path.normpath(checkpoint))
    return int(match.group(1)) if match else 0


def describe_launch(trainer) -> str:
    """'world size N, distributed type ..., ZeRO stage S' as the Trainer's accelerator set it up."""
    state = trainer.accelerator.state
    text = f"world size {state.num_processes}, distributed type {state.distributed_type}"
    plugin = getattr(state, "deepspeed_plugin", None)
    if plugin is not None:
        text += f", ZeRO stage {plugin.zero_stage}"
    return text


def stopping_callback(trainer):
    """The checkpoint manager, when it stopped training on a signal (None otherwise)."""
    from ..callbacks import ResumableCheckpointsCallback

    return next((cb for cb in trainer.callback_handler.callbacks
                 if isinstance(cb, ResumableCheckpointsCallback) and cb.preempted), None)


def disk_full_message(error: BaseException, output_dir: str) -> str | None:
    """A one-line explanation when `error` comes from a full disk. torch does not always say so: a cut-short
    `torch.save` reports "unexpected pos" or "file write failed", so an error raised while saving counts as a full
    disk when less room is left than the newest checkpoint takes (and at least 256 MiB)."""
    import errno
    import shutil
    import traceback

    from ..checkpointing import find_resume_checkpoint

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..callbacks import MonitorNotLoggedError

    try:
        trainer = run(args)
    except (UsageError, MonitorNotLoggedError) as error:
        if os.environ.get("HF_TRAINKIT_DEBUG"):
            raise
        print(f"train_grpo.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train_grpo.py: interrupted before training started; nothing was saved.", file=sys.stderr)
        return 130
    except Exception as error:
        message = disk_full_message(error, args.output_dir) if args.output_dir else None
        if message is None or os.environ.get("HF_TRAINKIT_DEBUG"):
            raise
        print(f"train_grpo.py: error: {message}", file=sys.stderr)
        return 1
    stopper = stopping_callback(trainer) if trainer is not None else None
    if stopper is not None:
        import signal

        name = stopper.stop_signal or "SIGTERM"
        if stopper.saved_on_stop:
            print(f"Stopped by {name} after saving step {trainer.state.global_step} ({stopper.saved_on_stop}). Run "
                  "the same command again (on this or another machine, with the output dir) to resume.", flush=True)
        else:
            print(f"Stopped by {name} at step {trainer.state.global_step}; no checkpoint was saved "
                  "(--no-save-checkpoints).", flush=True)
        return 128 + getattr(signal, name, signal.SIGTERM)  # "terminated", as a scheduler expects, after a clean save
    return 0
