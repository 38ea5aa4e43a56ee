"""The settings of a training run beyond what the user gave: defaults that follow the task or the model, checks
that need several flags at once, and the `FilteredGRPOConfig` they become."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..argparsing import UsageError


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


# The built-in chart task: the answer is one word, and the tiny VLM needs a higher rate than the tiny Llama to move
# in a short run.
CHART_TASK_DEFAULTS = {
    "max_steps": 100,
    "max_completion_length": 2,
}


TINY_VLM_DEFAULTS = {
    "learning_rate": 1e-3,
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


def toy_warmup_default() -> int:
    from ..tasks.digit import WARMUP_STEPS

    return WARMUP_STEPS


def resolve_defaults(options: argparse.Namespace) -> argparse.Namespace:
    # Task defaults follow --dataset and model defaults follow --model: `--model X` on the toy task keeps the toy
    # task's answer length and run length, `--dataset Y` on the tiny model keeps its learning rate.
    if options.task is not None and options.dataset is not None:
        raise UsageError(f"--task {options.task} picks a built-in task: drop it, or drop --dataset.")
    options.task = options.task or ("digit" if options.dataset is None else None)
    chart = options.task == "chart"
    if options.image_column is not None and options.dataset is None:
        raise UsageError("--image-column names a column of --dataset: pass --dataset too (the chart task has its own).")
    task_defaults = TASK_DEFAULTS if options.dataset is not None else CHART_TASK_DEFAULTS if chart else TOY_TASK_DEFAULTS
    model_defaults = MODEL_DEFAULTS if options.model is not None else TINY_VLM_DEFAULTS if chart else TOY_MODEL_DEFAULTS
    options.defaults_used = {}
    for defaults in (task_defaults, model_defaults):
        for key, value in defaults.items():
            if getattr(options, key) is None:
                setattr(options, key, value)
                options.defaults_used[key] = value
    if options.toy_warmup_steps is None:
        options.toy_warmup_steps = toy_warmup_default()
    elif options.model is not None:
        raise UsageError("--toy-warmup-steps applies to the built-in model only: drop it or --model.")
    elif options.toy_warmup_steps < 0:
        raise UsageError(f"--toy-warmup-steps {options.toy_warmup_steps}: use 0 (a random model) or more.")
    if options.eval_every is None:
        options.eval_every = 50 if options.dataset is None or options.eval_dataset else 0
    if options.eval_every and options.dataset is not None and not options.eval_dataset:
        raise UsageError("--eval-every with --dataset needs --eval-dataset (the prompts to measure pass@k on).")
    if options.eval_every and max(options.eval_k) > options.eval_n:
        raise UsageError(f"--eval-k {max(options.eval_k)} is larger than --eval-n {options.eval_n}: pass@k needs k <= n.")
    if options.reward_func is None:
        options.reward_func = [{"digit": "digit_rule", "chart": "chart_answer"}.get(options.task, "exact_answer")]
    if options.output_dir is None:
        options.output_dir = os.path.join("runs", f"{options.mode}-{options.seed}")
    for flag, value in (("--model", options.model), ("--dataset", options.dataset)):
        if value and looks_like_path(value) and not Path(value).expanduser().exists():
            raise UsageError(f"{flag} {value}: no such file or directory.")
    if options.max_steps == 0 or options.max_steps < -1:
        raise UsageError(f"--max-steps {options.max_steps}: use a positive number of steps, or -1 for whole epochs.")
    if options.model is not None and options.task == "digit" and "digit_rule" not in options.reward_func:
        raise UsageError("--model without --dataset trains on the toy task, which needs --reward-func digit_rule.")
    if options.no_save_checkpoints:
        clash = [flag for flag, value in (("--save-top-k", options.save_top_k), ("--save-on-improvement",
                                          options.save_on_improvement), ("--save-total-limit", options.save_total_limit))
                 if value]
        if clash:
            raise UsageError(f"--no-save-checkpoints writes no checkpoint: drop {', '.join(clash)}.")
    check_vllm_options(options)
    global_batch = options.per_device_train_batch_size * options.gradient_accumulation_steps
    if global_batch % options.num_generations:
        raise UsageError(
            f"--per-device-train-batch-size {options.per_device_train_batch_size} x --gradient-accumulation-steps "
            f"{options.gradient_accumulation_steps} must be a multiple of --num-generations {options.num_generations}."
        )
    return options


# The vLLM flags, their GRPOConfig fields, and the --use-vllm mode each applies to (TRL reads the colocate ones only
# when it starts the engine itself; a server takes its own from `trl vllm-serve`).
VLLM_FLAGS = {
    "vllm_server_url": ("vllm_server_base_url", "server"),
    "vllm_server_timeout": ("vllm_server_timeout", "server"),
    "vllm_gpu_memory_utilization": ("vllm_gpu_memory_utilization", "colocate"),
    "vllm_max_model_length": ("vllm_max_model_length", "colocate"),
}
_SERVER_SIDE_FLAG = {"vllm_gpu_memory_utilization": "--gpu-memory-utilization",
                     "vllm_max_model_length": "--max-model-len"}
DEFAULT_VLLM_SERVER_URL = "http://0.0.0.0:8000"  # TRL's vllm_server_host:vllm_server_port defaults
DEFAULT_VLLM_SERVER_TIMEOUT = 240.0  # TRL's vllm_server_timeout


def check_vllm_options(options: argparse.Namespace) -> None:
    """--use-vllm and its flags: each flag with the mode it applies to, vLLM importable, and a server that answers
    (within --vllm-server-timeout) before any model is loaded."""
    mode = getattr(options, "use_vllm", None)
    for name, (_, applies_to) in VLLM_FLAGS.items():
        value = getattr(options, name, None)
        if value is None or mode == applies_to:
            continue
        flag_name = "--" + name.replace("_", "-")
        if mode is None:
            raise UsageError(f"{flag_name} applies to --use-vllm {applies_to}: pass --use-vllm {applies_to} too, "
                             "or drop it.")
        if applies_to == "colocate":
            raise UsageError(f"{flag_name} applies to --use-vllm colocate: a server sets its own (`trl vllm-serve "
                             f"{_SERVER_SIDE_FLAG[name]} ...`); drop it.")
        raise UsageError(f"{flag_name} applies to --use-vllm server: drop it, or use --use-vllm server.")
    if mode is None:
        return
    utilization = getattr(options, "vllm_gpu_memory_utilization", None)
    if utilization is not None and not 0 < utilization <= 1:
        raise UsageError(f"--vllm-gpu-memory-utilization {utilization}: use a fraction in (0, 1], e.g. 0.3.")
    if not vllm_installed():
        raise UsageError(f"--use-vllm {mode}: vLLM is not installed in this environment (GPU machines: pip install "
                         "'hf_trainkit[vllm]'; vLLM's CPU build, for the tests: scripts/make_vllm_venv.sh).")
    if mode == "server":
        url = (options.vllm_server_url or DEFAULT_VLLM_SERVER_URL).rstrip("/")
        timeout = options.vllm_server_timeout or DEFAULT_VLLM_SERVER_TIMEOUT
        if not vllm_server_answers(url, timeout):
            raise UsageError(f"--use-vllm server: no vLLM server answered at {url} within {timeout:g} s; start one "
                             f"first (`trl vllm-serve --model MODEL --port PORT`, on GPUs the training does not use), "
                             f"or pass its address with --vllm-server-url / more time with --vllm-server-timeout.")


def vllm_installed() -> bool:
    """Whether vLLM can be imported and TRL sees it (TRL asks the package metadata for a distribution named vllm)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    from trl.import_utils import is_vllm_available

    return bool(is_vllm_available())


def vllm_server_answers(url: str, timeout: float) -> bool:
    """Whether `url`/health (what TRL's client polls; vLLM's server, which `trl vllm-serve` runs, serves it) answers
    200 within `timeout`."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=max(0.1, min(5.0, left))) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() + 1.0 > deadline:
            return False
        time.sleep(1.0)


def vllm_settings(options: argparse.Namespace) -> dict:
    """The GRPOConfig fields of the vLLM flags: use_vllm always (so `--set use_vllm=...` points at the flag)."""
    mode = getattr(options, "use_vllm", None)
    settings = {"use_vllm": mode is not None}
    if mode is not None:
        settings["vllm_mode"] = mode
        for name, (field, _) in VLLM_FLAGS.items():
            if getattr(options, name, None) is not None:
                settings[field] = getattr(options, name)
    return settings


def describe_defaults(options: argparse.Namespace) -> str:
    """One line naming the defaults a run took, and what they follow (the task or the model)."""
    parts = []
    task = {"digit": "toy", "chart": "chart"}.get(options.task, options.dataset)
    for owner, keys in ((f"task {task}", TASK_DEFAULTS),
                        (f"model {'built-in' if options.model is None else options.model}", MODEL_DEFAULTS)):
        taken = [f"{key}={options.defaults_used[key]}" for key in keys if key in options.defaults_used]
        if taken:
            parts.append(f"{', '.join(taken)} (for the {owner})")
    return "Defaults: " + "; ".join(parts)


def looks_like_path(value: str) -> bool:
    """Whether a --model/--dataset value can only be a local path (a hub id is `name` or `org/name`): such a value
    that does not exist is reported at once instead of after the hub's retries."""
    return value.startswith(("/", "./", "../", "~", ".\\")) or value.count("/") > 1 or "\\" in value \
        or value in (".", "..")


def build_config(options: argparse.Namespace):
    from ..rl.filtered_grpo_config import FilteredGRPOConfig

    extra = {}
    if options.loss_type is not None:
        extra["loss_type"] = options.loss_type
    if options.no_save_checkpoints:
        extra["save_strategy"] = "no"
    else:
        # The limit is applied by CheckpointManagerCallback (by step, valid checkpoints only), not the Trainer.
        extra.update(save_strategy="steps", save_steps=options.save_steps)
    settings = dict(
        output_dir=options.output_dir,
        mode=options.mode,
        reward_threshold=options.reward_threshold,
        positive_weight=options.positive_weight,
        negative_weight=options.negative_weight,
        seed=options.seed,
        max_steps=options.max_steps,
        num_train_epochs=options.num_train_epochs,
        learning_rate=options.learning_rate,
        per_device_train_batch_size=options.per_device_train_batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        num_generations=options.num_generations,
        max_completion_length=options.max_completion_length,
        temperature=options.temperature,
        beta=options.beta,
        drop_zero_variance_groups=not options.keep_zero_variance_groups,
        dynamic_sampling=options.dynamic_sampling is not None,
        dynamic_sampling_max_rounds=3 if options.dynamic_sampling is None else options.dynamic_sampling,
        logging_steps=options.logging_steps,
        log_completions=options.log_completions,
        # W&B is owned by WandbEveryNCallback (see build_callbacks): keeping "wandb" out of report_to stops both
        # transformers' per-step WandbCallback and TRL's per-call profiling records.
        # With --log-every/--wandb-every, EveryNStepsCallback owns the other trackers too (the same window).
        report_to=[r for r in options.report_to if r not in ("none", "wandb", *windowed_trackers(options))],
        restore_callback_states_from_checkpoint=True,
        run_name=options.run_name,
        save_on_each_node=options.save_on_each_node,
        log_mode_summary=not options.quiet,
        **extra,
        **vllm_settings(options),
    )
    for name in ("max_grad_norm", "warmup_steps", "lr_scheduler_type", "weight_decay"):
        if getattr(options, name) is not None:
            settings[name] = getattr(options, name)
    settings.update(config_overrides(options.config_overrides, set(settings)))
    return FilteredGRPOConfig(**settings)


def windowed_trackers(options: argparse.Namespace) -> list[str]:
    from .callbacks import windowed_trackers as trackers

    return trackers(options)


def config_overrides(pairs: list[str], taken: set[str]) -> dict:
    """`--set FIELD=VALUE` pairs as config fields; VALUE is read as JSON (true, 3, 0.5, ["a"]) or else as text."""
    import dataclasses
    import difflib
    import json

    from ..rl.filtered_grpo_config import FilteredGRPOConfig

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
