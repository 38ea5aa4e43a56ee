"""What a run trains: the datasets, the model and tokenizer (the toy base model, built and saved once per run), the
LoRA config, and the record of the base model that `hf-trainkit eval` reads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..argparsing import UsageError
from .options import looks_like_path


def load_train_dataset(options: argparse.Namespace):
    """The toy dataset's training split, or `--dataset` (hub id, saved directory, or data file) with a `prompt`
    column."""
    from ..toy import build_toy_dataset

    if options.dataset is None:
        return build_toy_dataset(num_prompts=4096, seed=options.seed)
    return load_prompt_dataset("--dataset", options.dataset, options.dataset_config, options.dataset_split, options.prompt_column)


def load_eval_dataset(options: argparse.Namespace):
    """The prompts `PassAtKCallback` measures: `--eval-dataset`, else the toy task's held-out prompts."""
    from ..toy import build_toy_dataset

    if options.eval_dataset is None:
        return build_toy_dataset(split="heldout")
    return load_prompt_dataset("--eval-dataset", options.eval_dataset, options.dataset_config, options.eval_split,
                               options.prompt_column)


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


def build_model_and_tokenizer(options: argparse.Namespace):
    """(model or model id, tokenizer). A model id stays a string so that TRL loads it after the config."""
    if options.model is None:
        from ..toy import build_toy_tokenizer

        return toy_base_model_dir(options), build_toy_tokenizer()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(options.model)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {options.model}: cannot load its tokenizer ({error}).") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return options.model, tokenizer


def toy_base_model_dir(options: argparse.Namespace) -> str:
    from ..constants import BASE_MODEL_DIR

    return os.path.join(options.output_dir, BASE_MODEL_DIR)


def prepare_base_model(options: argparse.Namespace, config):
    """Build and save the toy base model (main process, once; the others wait and load it from disk) and record
    what the run is trained from in OUTPUT_DIR/hf_trainkit_run.json, for `hf-trainkit eval`."""
    import json

    from ..constants import RUN_RECORD
    from ..toy import ensure_toy_base_model, toy_base_recipe

    with config.main_process_first(local=False, desc="build the toy base model"):
        if config.process_index != 0:
            return
        os.makedirs(options.output_dir, exist_ok=True)
        if options.model is None:
            ensure_toy_base_model(toy_base_model_dir(options), toy_base_recipe(options.seed, options.toy_warmup_steps))
        record = {
            "base_model": {"name_or_path": options.model, "toy": options.model is None,
                           "lora": bool(options.lora)} if options.model else
            {"name_or_path": None, "toy": True, "directory": os.path.basename(toy_base_model_dir(options)),
             "recipe": toy_base_recipe(options.seed, options.toy_warmup_steps), "lora": bool(options.lora)},
            "mode": options.mode,
            "dataset": options.dataset,
            "eval_dataset": options.eval_dataset,
            "eval_split": options.eval_split,
            "prompt_column": options.prompt_column,
            "reward_funcs": options.reward_func,
            "reward_threshold": options.reward_threshold,
            "generation": {"max_new_tokens": config.max_completion_length, "temperature": config.temperature,
                           "top_p": config.top_p, "top_k": config.top_k},
            "seed": options.seed,
        }
        with open(os.path.join(options.output_dir, RUN_RECORD), "w") as handle:
            json.dump(record, handle, indent=2)


def build_peft_config(options: argparse.Namespace):
    if not options.lora:
        return None
    from transformers.utils import is_peft_available

    if not is_peft_available():
        raise UsageError("--lora needs peft: pip install peft")
    from peft import LoraConfig

    targets = options.lora_target_modules
    return LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=targets[0] if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )
