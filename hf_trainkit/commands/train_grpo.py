"""`scripts/train_grpo.py` / `hf-trainkit train-grpo`: train with GRPO, PSR, NSR or W-REINFORCE from the command line.

With no `--model` and no `--dataset` it trains a tiny model on the built-in digit-rule task (see
`hf_trainkit.tasks.digit`), on the CPU, in about a minute: the demo, and the path the tests take. Parsing and exit
codes live here; the run itself is `hf_trainkit.training.run`."""

from __future__ import annotations

import argparse
import os
import re
import sys

from ..argparsing import OneLineArgumentParser, UsageError, flag, non_negative_float, positive_int, run_command
from ..rl.advantages import MODES
from ..training.options import (CHART_TASK_DEFAULTS, MODEL_DEFAULTS, TASK_DEFAULTS, TINY_VLM_DEFAULTS,
                                TOY_MODEL_DEFAULTS, TOY_TASK_DEFAULTS, toy_warmup_default)


PROG = "train_grpo.py"


def _min_delta(text: str) -> tuple[float, bool]:
    """'0.01' (absolute) or '1%' (relative): (value, relative)."""
    relative = text.strip().endswith("%")
    value = float(text.strip().rstrip("%"))
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return (value / 100, True) if relative else (value, False)


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _rounds(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _mode(text: str) -> str:
    from ..rl.advantages import canonical_mode

    try:
        return canonical_mode(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _value(value) -> str:
    """3e-4, not 0.0003: a learning rate as the README and papers write it."""
    if isinstance(value, float) and 0 < abs(value) < 0.01:
        return f"{value:.0e}".replace("e-0", "e-")
    return f"{value:g}"


def _by_task(key: str) -> str:
    """The defaults of `key` as --help states them, from the tables `resolve_defaults` applies (never retyped)."""
    values = [_value(v) for v in (TOY_TASK_DEFAULTS[key], CHART_TASK_DEFAULTS[key], TASK_DEFAULTS[key])]
    return "%s for the toy task, %s for the chart task, else %s (a --dataset)" % tuple(values)


def _by_model(key: str) -> str:
    values = [_value(v) for v in (TOY_MODEL_DEFAULTS[key], TINY_VLM_DEFAULTS[key], MODEL_DEFAULTS[key])]
    if len(set(values)) == 1:
        return values[0]
    return "%s for the built-in model, %s for the chart task's built-in VLM, else %s (a --model)" % tuple(values)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" at the end of a flag's help, only where the help does not state its default in
    words already (a default that follows the task or the model) and there is one to state (not None, not the False
    of an on/off flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if re.search(r"\bdefault\b", text) or action.default in (None, argparse.SUPPRESS, []) or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def train_grpo_command_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=prog,
        allow_abbrev=False,  # a typo (--num-generation) is an error with a "did you mean", never another flag
        description="Reward-filtered GRPO training (GRPO, PSR, NSR, W-REINFORCE). Without --model/--dataset it "
        "trains a tiny built-in model on a toy task on the CPU.",
        formatter_class=DefaultsHelpFormatter,
    )
    task = parser.add_argument_group("mode and task")
    flag(task, "mode", type=_mode, default="grpo", metavar="MODE", help=f"one of {', '.join(MODES)}")
    flag(task, "model", default=None, metavar="NAME_OR_PATH",
          help="model id or local directory (default: a tiny Llama built from a config, for the toy task)")
    flag(task, "dataset", default=None, metavar="NAME_OR_PATH",
          help="dataset id, a saved dataset directory, or a .json/.jsonl/.csv/.parquet file with a 'prompt' column "
          "(default: the built-in digit-rule task)")
    flag(task, "task", choices=["digit", "chart"], default=None,
          help="built-in task when no --dataset is given: 'digit' (the digit-rule text task, a tiny Llama) or "
          "'chart' (chart question answering on images drawn locally, a tiny Qwen2.5-VL) (default: digit)")
    flag(task, "image-column", default=None, metavar="COLUMN",
          help="column holding each prompt's image(s): PIL images, paths (relative to the data file) or bytes "
          "(default: 'image' or 'images' when present); needs a vision-language --model")
    flag(task, "dataset-config", default=None, metavar="NAME", help="dataset configuration name")
    flag(task, "dataset-split", default="train", metavar="SPLIT", help="dataset split to train on")
    flag(task, "prompt-column", default="prompt", metavar="COLUMN", help="column holding the prompts")
    flag(task, "reward-func", action="append", default=None, metavar="NAME_OR_IMPORT",
          help="reward function: a built-in (digit_rule, chart_answer, exact_answer) or 'module:function'; "
          "repeatable (default: digit_rule / chart_answer for the built-in tasks, exact_answer otherwise)")

    rl = parser.add_argument_group("reward filter")
    flag(rl, "reward-threshold", type=float, default=0.5, metavar="R",
          help="a completion is positive when reward > R")
    flag(rl, "positive-weight", type=non_negative_float, default=0.1, metavar="LAMBDA",
          help="W-REINFORCE advantage of a positive sample")
    flag(rl, "negative-weight", type=non_negative_float, default=1.0, metavar="W",
          help="NSR/W-REINFORCE advantage magnitude of a negative sample")
    flag(rl, "loss-type", default=None, metavar="TYPE", help="TRL loss_type (default: TRL's)")
    flag(rl, "beta", type=non_negative_float, default=0.0, metavar="BETA", help="KL coefficient")
    flag(rl, "keep-zero-variance-groups", action="store_true",
          help="mode grpo: run the completions of groups with equal rewards (advantage 0) through the forward pass "
          "too (default: skipped; the loss and the weights are the same either way)")
    flag(rl, "dynamic-sampling", nargs="?", type=_rounds, const=3, default=None, metavar="ROUNDS",
          help="replace the groups that teach the mode nothing (grpo: equal rewards; psr: no positive; nsr: no "
          "negative) by informative groups for fresh prompts, up to ROUNDS extra generation rounds per batch "
          "(3 without a value; default: off)")

    train = parser.add_argument_group("training")
    flag(train, "output-dir", default=None, metavar="DIR", help="where checkpoints and logs go (default: runs/MODE-SEED)")
    flag(train, "seed", type=int, default=42, metavar="N", help="random seed")
    flag(train, "max-steps", type=int, default=None, metavar="N",
          help="optimizer steps; -1 trains for --num-train-epochs (default: %s)" % _by_task("max_steps"))
    flag(train, "num-train-epochs", type=float, default=1.0, metavar="N", help="epochs when --max-steps is -1")
    flag(train, "learning-rate", type=float, default=None, metavar="LR",
          help="peak learning rate (default: %s)" % _by_model("learning_rate"))
    flag(train, "per-device-train-batch-size", type=positive_int, default=None, metavar="N",
          help="completions per device per step (default: %s)" % _by_model("per_device_train_batch_size"))
    flag(train, "gradient-accumulation-steps", type=positive_int, default=1, metavar="N", help="accumulation steps")
    flag(train, "num-generations", type=positive_int, default=None, metavar="G",
          help="completions per prompt (default: %s)" % _by_model("num_generations"))
    flag(train, "max-completion-length", type=positive_int, default=None, metavar="N",
          help="max new tokens per completion (default: %s)" % _by_task("max_completion_length"))
    flag(train, "temperature", type=float, default=1.0, metavar="T", help="sampling temperature")
    flag(train, "max-grad-norm", type=non_negative_float, default=None, metavar="X",
          help="gradient clipping norm (0: no clipping; default: TRL's GRPOConfig, 1.0)")
    flag(train, "warmup-steps", type=non_negative_float, default=None, metavar="N",
          help="learning-rate warm-up: a number of steps, or a fraction of all steps if below 1 (default: TRL's)")
    flag(train, "lr-scheduler-type", default=None, metavar="TYPE",
          help="learning-rate schedule: linear, cosine, constant, constant_with_warmup, ... (default: TRL's)")
    flag(train, "weight-decay", type=non_negative_float, default=None, metavar="W",
          help="AdamW weight decay (default: TRL's, 0)")
    flag(train, "set", action="append", default=[], metavar="FIELD=VALUE", dest="config_overrides",
          help="any other field of FilteredGRPOConfig (TRL's GRPOConfig, transformers' TrainingArguments), e.g. "
          "--set gradient_checkpointing=true --set optim=adamw_torch_fused --set adam_beta2=0.99; repeatable")
    flag(train, "logging-steps", type=positive_int, default=1, metavar="N", help="log every N steps")
    flag(train, "log-completions", action="store_true", help="print a sample of completions at each log")

    vllm = parser.add_argument_group("generation with vLLM (TRL's use_vllm)")
    flag(vllm, "use-vllm", nargs="?", choices=("colocate", "server"), const="colocate", default=None, metavar="MODE",
          help="generate the completions with vLLM: 'colocate' (an engine inside each training process; the "
          "default without a value) or 'server' (a `trl vllm-serve` server, on other GPUs) (default: off, "
          "transformers' generate)")
    flag(vllm, "vllm-server-url", default=None, metavar="URL",
          help="--use-vllm server: the server's base URL (default: TRL's, http://0.0.0.0:8000)")
    flag(vllm, "vllm-server-timeout", type=positive_float, default=None, metavar="SECONDS",
          help="--use-vllm server: how long to wait for the server to answer before giving up (default: TRL's, "
          "240)")
    flag(vllm, "vllm-gpu-memory-utilization", type=float, default=None, metavar="F",
          help="--use-vllm colocate: fraction of each GPU's memory vLLM may take, in (0, 1] (default: TRL's, 0.3)")
    flag(vllm, "vllm-max-model-length", type=positive_int, default=None, metavar="N",
          help="--use-vllm colocate: vLLM's context window, prompt + completion tokens (default: the model's)")

    lora = parser.add_argument_group("LoRA (peft)")
    flag(lora, "lora", action="store_true", help="train a LoRA adapter instead of all weights")
    flag(lora, "lora-r", type=positive_int, default=16, metavar="R", help="LoRA rank")
    flag(lora, "lora-alpha", type=positive_int, default=32, metavar="A", help="LoRA alpha")
    flag(lora, "lora-dropout", type=non_negative_float, default=0.05, metavar="P", help="LoRA dropout")
    flag(lora, "lora-target-modules", nargs="+", default=["all-linear"], metavar="MODULE",
          help="modules to adapt")
    flag(lora, "lora-vision", action="store_true",
          help="on a vision-language model, adapt the vision tower too (default: the language model only)")

    save = parser.add_argument_group("checkpoints")
    flag(save, "save-steps", type=positive_int, default=50, metavar="N", help="save a checkpoint every N steps")
    flag(save, "save-total-limit", type=positive_int, default=None, metavar="N", help="keep at most N checkpoints")
    flag(save, "no-save-checkpoints", action="store_true", help="write no checkpoint directory during training")
    flag(save, "resume-from-checkpoint", default=None, metavar="CKPT",
          help="checkpoint directory or checkpoint name to resume from; 'latest' resumes from the newest valid one "
          "even after the run finished (default: the newest valid checkpoint in --output-dir, if any: re-running "
          "the same command resumes)")
    flag(save, "checkpoint-mirror", default=None, metavar="URL",
          help="also keep the checkpoints at this fsspec URL or path (a mounted drive, s3://..., gs://...): copied "
          "in the background, same --save-total-limit, and pulled on start when newer than the local ones")
    flag(save, "save-on-each-node", action="store_true",
          help="several machines, each with its own disk at --output-dir: every node writes its part of each "
          "checkpoint there (its ranks' shards, the trainer state, weights) and a resume takes the newest step "
          "complete on every node (a shared --output-dir: leave it out; a wrong choice is an error at start)")
    flag(save, "async-save", action="store_true",
          help="save checkpoints in the background: training waits only for a host copy of the state (about one "
          "checkpoint's share of each process in RAM), the write, fsync, marker, mirror and rotation follow while "
          "it trains; one save in flight, the end and a stop wait for it")
    flag(save, "no-resume", action="store_true",
          help="start from scratch even if --output-dir holds checkpoints or a finished run")

    policy = parser.add_argument_group("checkpoint policy (which checkpoints exist)")
    flag(policy, "checkpoint-metric", default=None, metavar="KEY",
          help="logged key ranking checkpoints, e.g. reward, nsr/avg_reward, eval_loss (for --save-top-k and "
          "--save-on-improvement)")
    flag(policy, "checkpoint-mode", choices=("min", "max"), default=None,
          help="min or max (default: max for rewards/accuracies/scores, else min)")
    flag(policy, "save-top-k", type=positive_int, default=None, metavar="N",
          help="keep the N best checkpoints by --checkpoint-metric, plus the newest and named ones")
    flag(policy, "save-on-improvement", action="store_true",
          help="also save whenever --checkpoint-metric improves (interval saves: --save-steps)")
    flag(policy, "save-min-delta", type=_min_delta, default=(0.0, False), metavar="D|P%",
          help="an improvement must exceed D (absolute) or P%% of the best value (default: 0: any improvement)")
    flag(policy, "checkpoint-smoothing", type=float, default=None, metavar="W",
          help="EMA weight in [0, 1) on the metric before comparing (default: 0.9 for training-log metrics, which "
          "are noisy per batch; 0 for eval_* metrics)")
    flag(policy, "control-port", type=int, default=None, metavar="PORT",
          help="also take control requests over HTTP on this port (0: any free port), token in OUTPUT_DIR/"
          "control_token; `hf-trainkit control` works without it")
    flag(policy, "control-host", default="127.0.0.1", metavar="HOST",
          help="interface of the control endpoint (127.0.0.1: this machine only)")
    flag(policy, "no-live-control", action="store_true",
          help="do not watch OUTPUT_DIR/control for `hf-trainkit control` requests")

    evaluation = parser.add_argument_group("pass@k evaluation (held-out prompts)")
    flag(evaluation, "eval-every", type=int, default=None, metavar="N",
          help="sample --eval-n completions per evaluation prompt before training, every N steps and at the end; "
          "log eval/pass@K, eval/entropy, eval/coverage (default: 50 on the toy task's held-out prompts, else "
          "off; 0: off)")
    flag(evaluation, "eval-n", type=positive_int, default=64, metavar="N", help="samples per evaluation prompt")
    flag(evaluation, "eval-k", type=positive_int, nargs="+", default=[1, 4, 16, 64], metavar="K",
          help="the k of the logged pass@k")
    flag(evaluation, "eval-dataset", default=None, metavar="NAME_OR_PATH",
          help="evaluation prompts, loaded like --dataset (default: the toy task's held-out prompts)")
    flag(evaluation, "eval-split", default="test", metavar="SPLIT", help="split of --eval-dataset")
    flag(task, "toy-warmup-steps", type=int, default=None, metavar="N",
          help="supervised warm-up steps that give the built-in model its prior over the toy task (0: a random "
          "model; default: %d)" % toy_warmup_default())

    logging_group = parser.add_argument_group("reporting")
    flag(logging_group, "report-to", nargs="+", default=["none"], metavar="BACKEND",
          help="integrations to report to (e.g. wandb, tensorboard, none)")
    flag(logging_group, "wandb-project", default=None, metavar="NAME", help="W&B project (sets WANDB_PROJECT)")
    flag(logging_group, "wandb-group", default=None, metavar="NAME", help="W&B run group (or WANDB_RUN_GROUP)")
    flag(logging_group, "wandb-tags", nargs="+", default=None, metavar="TAG", help="W&B tags (or WANDB_TAGS)")
    flag(logging_group, "log-every", type=positive_int, default=None, metavar="N",
          help="send every tracker of --report-to (tensorboard, trackio, mlflow, wandb) one record every N steps: "
          "the mean of the window (the console and trainer_state.json keep every step)")
    flag(logging_group, "wandb-every", type=positive_int, default=None, metavar="N",
          help="--log-every N that also implies --report-to wandb (the older flag; --log-every wins when both "
          "are given)")
    flag(logging_group, "run-name", default=None, metavar="NAME", help="run name for the integrations")
    flag(logging_group, "dashboard", nargs="?", type=int, const=6150, default=None, metavar="PORT",
          help="serve the live dashboard (hf-trainkit dashboard) on 127.0.0.1:PORT beside the training, in its own "
          "process (port 6150 without a value; 0 picks a free one); it prints a URL with its token")
    flag(logging_group, "quiet", action="store_true", help="do not print the per-step mode line")
    flag(logging_group, "no-run-log", action="store_true",
          help="do not copy the console into OUTPUT_DIR/logs/train.log")
    flag(logging_group, "no-loss-curve", action="store_true",
          help="do not write img/loss_curve.png, img/reward_curve.png and training_stats.json at the end")
    flag(logging_group, "no-diagnostics", action="store_true",
          help="do not print live diagnostics (non-finite values, spikes, plateau, overfitting, starved filter)")

    stop = parser.add_argument_group("early stopping (any logged metric)")
    flag(stop, "early-stopping-metric", default=None, metavar="KEY",
          help="logged key to watch, e.g. reward, nsr/avg_reward, eval_loss (default: no early stopping)")
    flag(stop, "early-stopping-mode", choices=("min", "max"), default=None,
          help="min or max (default: max for rewards, accuracies, scores and pass@k, else min)")
    flag(stop, "early-stopping-patience", type=positive_int, default=3, metavar="N",
          help="checks without improvement before stopping")
    flag(stop, "early-stopping-min-delta", type=non_negative_float, default=0.0, metavar="D",
          help="smallest absolute change that counts as an improvement")
    flag(stop, "early-stopping-smoothing", type=float, default=0.0, metavar="W",
          help="EMA weight in [0, 1) applied to the metric before comparing (for noisy rewards)")
    flag(stop, "divergence-threshold", type=float, default=None, metavar="X",
          help="stop at once when the metric is worse than X")
    flag(stop, "stopping-threshold", type=float, default=None, metavar="X",
          help="stop at once when the metric is at least as good as X")
    return parser


def parse_options(argv: list[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    """The options of a run from command-line arguments (`sys.argv[1:]` when None); a mistake exits 2."""
    return train_grpo_command_parser(prog).parse_args(argv)


def train_grpo_options(**settings) -> argparse.Namespace:
    """The options of a run from keywords named like the flags (`output_dir="runs/x", mode="nsr", max_steps=50`),
    the other flags at their defaults: the programmatic form of the command line, for `hf_trainkit.training.run`."""
    options = parse_options([])
    for key, value in settings.items():
        if not hasattr(options, key):
            raise TypeError(f"train_grpo_options: unknown option {key!r} (the flags of {PROG}, in snake_case).")
        setattr(options, key, value)
    return options


def train_grpo_command(options: argparse.Namespace, callbacks: list | None = None) -> int:
    """Train, and turn how it ended into an exit code: 0 done, 128+N stopped by signal N after a save, 130 Ctrl-C
    before training, and a `UsageError` (one line) for a user mistake or a full disk."""
    from ..checkpointing.resume import disk_full_message
    from ..training.run import run, stopping_callback

    try:
        trainer = run(options, callbacks=callbacks)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before training started; nothing was saved.", file=sys.stderr)
        return 130
    except UsageError:
        raise
    except Exception as error:
        message = disk_full_message(error, options.output_dir) if options.output_dir else None
        if message is None or os.environ.get("HF_TRAINKIT_DEBUG"):
            raise
        print(file=sys.stderr)  # ends the progress bar's line: the error gets a line of its own
        raise UsageError(message, exit_code=1) from None
    stopper = stopping_callback(trainer) if trainer is not None else None
    if stopper is None:
        return 0
    import signal

    name = stopper.stop_signal or "SIGTERM"
    if stopper.saved_on_stop:
        print(f"Stopped by {name} after saving step {trainer.state.global_step} ({stopper.saved_on_stop}). Run "
              "the same command again (on this or another machine, with the output dir) to resume.", flush=True)
    else:
        print(f"Stopped by {name} at step {trainer.state.global_step}; no checkpoint was saved "
              "(--no-save-checkpoints).", flush=True)
    return 128 + getattr(signal, name, signal.SIGTERM)  # "terminated", as a scheduler expects, after a clean save


def main(argv: list[str] | None = None, prog: str = PROG, callbacks: list | None = None) -> int:
    options = parse_options(argv, prog)
    return run_command(prog, train_grpo_command, options, callbacks=callbacks)
