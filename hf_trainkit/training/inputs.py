"""What a run trains: the datasets, the model and tokenizer (the toy base model, built and saved once per run), the
LoRA config, and the record of the base model that `hf-trainkit eval` reads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..argparsing import UsageError
from .options import looks_like_path


# Charts drawn for a run of the built-in chart task (prompts repeat across epochs; drawing is ~25 ms a chart).
CHART_TRAIN_PROMPTS = 512


def load_train_dataset(options: argparse.Namespace):
    """The built-in task's training split, or `--dataset` (hub id, saved directory, or data file) with a `prompt`
    column, and its images when it has an image column."""
    if options.dataset is None:
        if options.task == "chart":
            from ..tasks.chart import build_chart_dataset

            return build_chart_dataset(num_prompts=CHART_TRAIN_PROMPTS, seed=options.seed)
        from ..tasks.digit import build_toy_dataset

        return build_toy_dataset(num_prompts=4096, seed=options.seed)
    dataset = load_prompt_dataset("--dataset", options.dataset, options.dataset_config, options.dataset_split,
                                  options.prompt_column)
    return prepare_image_column("--dataset", options.dataset, dataset, options.image_column)


def load_eval_dataset(options: argparse.Namespace):
    """The prompts `PassAtKCallback` measures: `--eval-dataset`, else the built-in task's held-out prompts."""
    if options.eval_dataset is None:
        if options.task == "chart":
            from ..tasks.chart import build_chart_dataset

            return build_chart_dataset(split="heldout")
        from ..tasks.digit import build_toy_dataset

        return build_toy_dataset(split="heldout")
    dataset = load_prompt_dataset("--eval-dataset", options.eval_dataset, options.dataset_config, options.eval_split,
                                  options.prompt_column)
    return prepare_image_column("--eval-dataset", options.eval_dataset, dataset, options.image_column)


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


def build_model_and_tokenizer(options: argparse.Namespace, images: bool = False):
    """(model or model id, tokenizer or processor). A model id stays a string so that TRL loads it after the config.
    A vision-language model (its config has a vision part) gets its processor; `images` (the data set has an image
    column) needs one."""
    if options.model is None:
        if options.task == "chart":
            from ..tasks.vision import build_tiny_vlm_processor

            return toy_base_model_dir(options), build_tiny_vlm_processor()
        from ..tasks.digit import build_toy_tokenizer

        return toy_base_model_dir(options), build_toy_tokenizer()
    if is_vision_model(options.model):
        from ..tasks.vision import load_processor

        try:
            processor = load_processor(options.model)
        except Exception as error:  # transformers raises OSError, ValueError, ImportError, KeyError ... here
            raise UsageError(f"--model {options.model}: cannot load its processor ({type(error).__name__}: "
                             f"{_first_line(error)}).") from None
        tokenizer = processor.tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return options.model, processor
    if images:
        raise UsageError(f"--model {options.model} is a text-only model (its config has no vision part), but the "
                         "data set has images: use a vision-language model, or a data set without an image column.")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(options.model)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {options.model}: cannot load its tokenizer ({error}).") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return options.model, tokenizer


def is_vision_model(name_or_path: str) -> bool:
    """Whether `name_or_path` is a vision-language model; `False` when its config cannot be read (the tokenizer
    loading that follows then says what is wrong)."""
    from ..tasks.vision import is_vision_language_model

    try:
        return is_vision_language_model(name_or_path)
    except (OSError, ValueError, KeyError):
        return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def has_images(dataset) -> bool:
    from .images import IMAGE_COLUMNS

    return dataset is not None and any(column in dataset.column_names for column in IMAGE_COLUMNS)


def prepare_image_column(flag: str, spec: str, dataset, image_column: str | None):
    """The data set with its images where TRL reads them (``image``: one per prompt, ``images``: a list), every
    image checked to exist and to open. Paths are taken relative to the data file; PIL images and bytes as they are.
    A data set without an image column is returned as it is (a text data set)."""
    from .images import resolve_image_column

    return resolve_image_column(flag, spec, dataset, image_column)


def toy_base_model_dir(options: argparse.Namespace) -> str:
    from ..constants import BASE_MODEL_DIR

    return os.path.join(options.output_dir, BASE_MODEL_DIR)


def prepare_base_model(options: argparse.Namespace, config):
    """Build and save the toy base model (the main process, once; the others wait and load it from disk; with a disk
    per node, each node's first process) and record what the run is trained from in OUTPUT_DIR/hf_trainkit_run.json,
    for `hf-trainkit eval`."""
    import json

    from ..constants import RUN_RECORD
    from ..tasks.digit import ensure_toy_base_model

    with config.main_process_first(local=config.save_on_each_node, desc="build the toy base model"):
        if not config.should_save:
            return
        os.makedirs(options.output_dir, exist_ok=True)
        recipe = None
        if options.model is None:
            recipe = builtin_base_recipe(options)
            if options.task == "chart":
                from ..tasks.vision import ensure_tiny_vlm

                ensure_tiny_vlm(toy_base_model_dir(options), recipe)
            else:
                ensure_toy_base_model(toy_base_model_dir(options), recipe)
        record = {
            "base_model": {"name_or_path": options.model, "toy": False, "lora": bool(options.lora)} if options.model
            else {"name_or_path": None, "toy": True, "directory": os.path.basename(toy_base_model_dir(options)),
                  "recipe": recipe, "lora": bool(options.lora)},
            "task": options.task,
            "image_column": options.image_column,
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


def builtin_base_recipe(options: argparse.Namespace) -> dict:
    """The recipe of the built-in base model: the tiny VLM for the chart task, the warmed-up tiny Llama otherwise."""
    if options.task == "chart":
        from ..tasks.vision import tiny_vlm_recipe

        return tiny_vlm_recipe(options.seed)
    from ..tasks.digit import toy_base_recipe

    return toy_base_recipe(options.seed, options.toy_warmup_steps)


# Module names of the vision side of the VLMs transformers ships (Qwen-VL `visual`, LLaVA `vision_tower` and
# `multi_modal_projector`, Idefics/SmolVLM `vision_model`, Gemma3 `vision_tower`): left out of `--lora` unless
# `--lora-vision`.
VISION_MODULES_PATTERN = r".*\b(visual|vision_tower|vision_model|multi_modal_projector|mm_projector)\b.*"


def build_peft_config(options: argparse.Namespace, vision: bool = False):
    """The LoRA config of `--lora`: on a vision-language model (`vision`), the language model's linear layers only,
    unless `--lora-vision` adapts the vision tower too."""
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
        exclude_modules=VISION_MODULES_PATTERN if vision and not options.lora_vision else None,
        task_type="CAUSAL_LM",
    )
