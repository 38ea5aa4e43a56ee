"""`hf-trainkit eval`: pass@k, entropy and coverage of saved models (checkpoints, a run's final weights, the base),
written to eval_results.json and drawn as pass@k against k."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..argparsing import OneLineArgumentParser, UsageError, run_command
from ..checkpointing.integrity import WEIGHT_FILES as _WEIGHTS, WEIGHT_INDEXES
from ..constants import BASE_MODEL_DIR, EVAL_RESULTS, RUN_RECORD


PROG = "hf-trainkit eval"
WEIGHT_FILES = (*_WEIGHTS, *WEIGHT_INDEXES)  # what makes a folder a loadable model




class EvalInputError(UsageError):
    """A target or flag that cannot be evaluated: one line, exit code 2."""


@dataclass
class Target:
    label: str
    path: Path | None  # weights folder; None for a toy base rebuilt from its recipe
    run_dir: Path | None
    record: dict = field(default_factory=dict)
    recipe: dict | None = None  # toy base recipe, when `path` is None


def eval_command_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="pass@k across k, first-answer-token entropy and answer coverage of saved models, on the run's "
        "evaluation prompts (the toy task's held-out prompts by default).")
    parser.add_argument("targets", nargs="+", metavar="RUN_OR_CHECKPOINT",
                        help="a run's output dir (its final weights), a checkpoint-N folder, or a model folder")
    parser.add_argument("--base", action="store_true",
                        help="also evaluate the base model the first run was trained from (recorded in "
                        f"{RUN_RECORD})")
    parser.add_argument("--n", type=int, default=256, metavar="N", help="samples per prompt (default: %(default)s)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 64, 256], metavar="K",
                        help="the k of pass@k, each <= N (default: %(default)s)")
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help=f"where {EVAL_RESULTS} and pass_at_k.png go (default: FIRST_RUN/eval)")
    parser.add_argument("--dataset", default=None, metavar="NAME_OR_PATH",
                        help="evaluation prompts, or toy / chart for a built-in task (default: the run's --eval-dataset, "
                        "else its built-in task's held-out prompts)")
    parser.add_argument("--split", default=None, metavar="SPLIT",
                        help="split of --dataset; for the built-in tasks: heldout (default) or train (toy also: warmup)")
    parser.add_argument("--prompt-column", default=None, metavar="COLUMN", help="column holding the prompts")
    parser.add_argument("--reward-func", action="append", default=None, metavar="NAME_OR_IMPORT",
                        help="reward function(s) (default: the run's)")
    parser.add_argument("--reward-threshold", type=float, default=None, metavar="R",
                        help="a sample is correct when its reward is > R (default: the run's, else 0.5)")
    parser.add_argument("--temperature", type=float, default=None, metavar="T", help="default: the run's, else 1.0")
    parser.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="default: the run's")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="sequences per generate call")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed (default: %(default)s)")
    return parser


def _read_record(run_dir: Path) -> dict:
    try:
        with open(run_dir / RUN_RECORD) as handle:
            record = json.load(handle)
    except (OSError, ValueError) as error:
        raise EvalInputError(f"{run_dir / RUN_RECORD}: cannot be read ({error}).") from None
    if not isinstance(record, dict):
        raise EvalInputError(f"{run_dir / RUN_RECORD}: not a JSON object.")
    return record


def resolve_target(text: str) -> Target:
    """What `text` names: a run dir (its final weights), a checkpoint inside one, or any model folder."""
    path = Path(text)
    if not path.exists():
        raise EvalInputError(f"{text}: no such file or directory.")
    if not path.is_dir():
        raise EvalInputError(f"{text}: not a directory (pass a run's output dir or a checkpoint folder).")
    run_dir = next((d for d in (path, path.parent) if (d / RUN_RECORD).is_file()), None)
    record = _read_record(run_dir) if run_dir else {}
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        hint = (" The run has no final weights (it did not finish, or ran before they were saved): pass one of its "
                "checkpoint-N folders." if run_dir == path else "")
        raise EvalInputError(f"{text}: no model weights ({', '.join(_WEIGHTS)}).{hint}")
    label = path.name if run_dir in (None, path) else f"{run_dir.name}/{path.name}"
    return Target(label=label, path=path, run_dir=run_dir, record=record)


def base_target(first: Target) -> Target:
    """The base model `first` was trained from, as its run recorded it."""
    base = first.record.get("base_model") if isinstance(first.record.get("base_model"), dict) else None
    if base is None or first.run_dir is None:
        raise EvalInputError(f"--base: {first.label} has no {RUN_RECORD} naming its base model (runs of "
                             "scripts/train_grpo.py write one); evaluate the base model's folder directly instead.")
    if base.get("toy"):
        directory = first.run_dir / str(base.get("directory") or BASE_MODEL_DIR)
        if any((directory / name).is_file() for name in WEIGHT_FILES):
            return Target("base", directory, first.run_dir, first.record)
        if not isinstance(base.get("recipe"), dict):
            raise EvalInputError(f"--base: {directory} is missing and {RUN_RECORD} has no recipe to rebuild it.")
        return Target("base", None, first.run_dir, first.record, recipe=base["recipe"])
    return Target("base", Path(base["name_or_path"]) if Path(str(base["name_or_path"])).exists() else None,
                  first.run_dir, first.record, recipe={"name_or_path": base["name_or_path"]})


def load_model(target: Target):
    """(model, tokenizer or processor) of a target; a LoRA adapter on top of the base its run recorded (or its config
    names). A vision-language model comes with its processor, so it is evaluated on the prompts' images."""
    from ..tasks.digit import build_toy_base_from_recipe, build_toy_tokenizer

    if target.path is None and target.recipe and "seed" in target.recipe:  # a built-in base rebuilt from its recipe
        if target.recipe.get("builder", "").endswith("build_tiny_vlm"):
            from ..tasks.vision import build_tiny_vlm, build_tiny_vlm_processor

            processor = build_tiny_vlm_processor(target.recipe["image_size"])
            return build_tiny_vlm(processor, hidden_size=target.recipe["hidden_size"],
                                  num_layers=target.recipe["num_layers"], seed=target.recipe["seed"]), processor
        tokenizer = build_toy_tokenizer()
        return build_toy_base_from_recipe(target.recipe, tokenizer), tokenizer
    source = str(target.path) if target.path is not None else target.recipe["name_or_path"]
    adapter = target.path is not None and (target.path / "adapter_config.json").is_file()
    try:
        if adapter:
            from peft import PeftModel

            with open(target.path / "adapter_config.json") as handle:
                base_name = json.load(handle).get("base_model_name_or_path")
            toy_base = target.run_dir / BASE_MODEL_DIR if target.run_dir else None
            if toy_base is not None and (toy_base / "config.json").is_file():
                base_name = str(toy_base)  # the run's own copy: the recorded path may be from another machine
            vision = _is_vision(base_name)
            model = PeftModel.from_pretrained(_model_class(vision).from_pretrained(base_name), source)
        else:
            vision = _is_vision(source)
            model = _model_class(vision).from_pretrained(source)
        processing_source = next((str(d) for d in (Path(source), target.run_dir, target.run_dir and
                                                   target.run_dir / BASE_MODEL_DIR)
                                  if d is not None and (Path(d) / "tokenizer_config.json").is_file()), source)
        if vision:
            from ..tasks.vision import load_processor

            tokenizer = load_processor(processing_source)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(processing_source)
    except (OSError, ValueError, ImportError) as error:
        raise EvalInputError(f"{target.label}: cannot be loaded ({type(error).__name__}: "
                             f"{(str(error).strip().splitlines() or [''])[0][:200]}).") from None
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if text_tokenizer.pad_token is None:
        text_tokenizer.pad_token = text_tokenizer.eos_token
    return model, tokenizer


def _is_vision(source: str) -> bool:
    from ..training.inputs import is_vision_model

    return is_vision_model(source)


def _model_class(vision: bool):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if vision else AutoModelForCausalLM


# The built-in tasks `--dataset` can name, and the reward each is scored with.
BUILTIN_TASK_REWARDS = {"toy": "digit_rule", "chart": "chart_answer"}


def builtin_task(args, record: dict) -> str | None:
    """The built-in task to evaluate on: the one `--dataset` names, else the one the run trained on (its record
    names no data set of its own); None for a user's data set."""
    if args.dataset in BUILTIN_TASK_REWARDS:
        return args.dataset
    if args.dataset is None and record.get("dataset") is None:
        return "chart" if record.get("task") == "chart" else "toy"
    return None


def evaluation_rows(args, record: dict) -> tuple[list[dict], str]:
    """(rows, description) of the prompts to evaluate on."""
    from ..training.inputs import load_prompt_dataset, prepare_image_column
    from ..tasks.digit import build_toy_dataset

    if args.dataset is None and not record:
        raise EvalInputError("no evaluation prompts: the model has no run record (hf_trainkit_run.json); pass "
                             "--dataset (or --dataset toy / chart for a built-in task).")
    builtin = builtin_task(args, record)
    if builtin and args.dataset is None and record.get("eval_dataset"):
        builtin = None  # the run trained on a built-in task but named prompts of its own to measure on
    dataset = None if builtin else args.dataset or record.get("eval_dataset")
    column = args.prompt_column or record.get("prompt_column") or "prompt"
    if builtin:
        split = args.split or "heldout"
        try:
            if builtin == "chart":
                from ..tasks.chart import build_chart_dataset

                return [dict(row) for row in build_chart_dataset(split=split)], f"chart task, {split} prompts"
            return [dict(row) for row in build_toy_dataset(split=split)], f"toy task, {split} prompts"
        except ValueError as error:
            raise EvalInputError(f"--split: {error}.") from None
    if dataset is None:
        raise EvalInputError("no evaluation prompts: pass --dataset (the run trained on its own dataset and named no "
                             "--eval-dataset).")
    split = args.split or record.get("eval_split") or "test"
    loaded = load_prompt_dataset("--dataset", dataset, None, split, column)
    loaded = prepare_image_column("--dataset", dataset, loaded, record.get("image_column"))
    return [dict(row) for row in loaded], f"{dataset} ({split})"


def generation_config(args, record: dict, tokenizer):
    from ..eval.sampling import sampling_config

    recorded = record.get("generation") if isinstance(record.get("generation"), dict) else {}
    max_new_tokens = args.max_new_tokens or recorded.get("max_new_tokens")
    if not max_new_tokens:
        raise EvalInputError("--max-new-tokens is needed: the run recorded no generation length.")
    temperature = args.temperature if args.temperature is not None else recorded.get("temperature", 1.0)
    return sampling_config(tokenizer, int(max_new_tokens), temperature=float(temperature),
                           top_p=float(recorded.get("top_p") or 1.0), top_k=int(recorded.get("top_k") or 0))


def format_table(results: list[dict], ks: list[int]) -> str:
    keys = [f"pass@{k}" for k in ks] + ["entropy", "coverage", "mean_reward"]
    width = max([len("model")] + [len(r["label"]) for r in results])
    lines = [f"{'model':<{width}} " + " ".join(f"{key:>11}" for key in keys)]
    for result in results:
        metrics = result["metrics"]
        lines.append(f"{result['label']:<{width}} " + " ".join(
            f"{metrics[key]:>11.4f}" if isinstance(metrics.get(key), float) else f"{'-':>11}" for key in keys))
    return "\n".join(lines)


def eval_command(args) -> int:
    from ..eval import evaluate, summarize
    from ..library_noise import filter_library_noise
    from ..rl.rewards import resolve_reward_func

    filter_library_noise()

    if args.n < 1 or args.batch_size < 1:
        raise EvalInputError(f"--n {args.n} and --batch-size {args.batch_size} must be >= 1.")
    bad = [k for k in args.k if not 1 <= k <= args.n]
    if bad:
        raise EvalInputError(f"--k {' '.join(map(str, bad))}: each k must be between 1 and --n {args.n}.")
    targets = [resolve_target(text) for text in args.targets]
    if args.base:
        targets.insert(0, base_target(targets[0]))
    record = targets[-1].record
    rows, description = evaluation_rows(args, record)
    if not rows:
        raise EvalInputError(f"{description}: no prompts.")
    default_reward = BUILTIN_TASK_REWARDS.get(builtin_task(args, record))
    specs = args.reward_func or record.get("reward_funcs") or ([default_reward] if default_reward else None)
    if not specs:
        raise EvalInputError("--reward-func is needed: the model has no run record naming its reward.")
    try:
        reward_funcs = [resolve_reward_func(spec) for spec in specs]
    except ValueError as error:
        raise EvalInputError(str(error)) from None
    threshold = args.reward_threshold if args.reward_threshold is not None else record.get("reward_threshold", 0.5)
    output_dir = Path(args.output_dir or ((targets[-1].run_dir or Path(".")) / "eval"))
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EvalInputError(f"--output-dir {output_dir}: cannot be created ({error.strerror or error}).") from None
    ks = sorted(set(args.k))
    results = []
    for target in targets:
        model, tokenizer = load_model(target)
        records = evaluate(model, tokenizer, rows, reward_funcs, n=args.n,
                           generation_config=generation_config(args, target.record or record, tokenizer),
                           reward_threshold=threshold, batch_size=args.batch_size, seed=args.seed)
        results.append({"label": target.label, "path": str(target.path) if target.path else None,
                        "metrics": summarize(records, args.n, ks), "per_prompt": records})
        print(f"evaluated {target.label}", file=sys.stderr, flush=True)
    with open(output_dir / EVAL_RESULTS, "w") as handle:
        json.dump({"n": args.n, "ks": ks, "prompts": description, "reward_threshold": threshold, "seed": args.seed,
                   "results": results}, handle, indent=2)
    print(f"{description}: {len(rows)} prompts, n={args.n} samples each\n")
    print(format_table(results, ks))
    figure = write_figure(results, output_dir)
    print(f"\nWritten: {output_dir / EVAL_RESULTS}" + (f", {figure}" if figure else ""))
    return 0


def write_figure(results: list[dict], output_dir: Path) -> Path | None:
    """pass_at_k.png; a figure that cannot be drawn is skipped with a warning (the JSON is what matters)."""
    from ..monitor.pass_at_k import write_pass_at_k_figure
    from ..monitor.plots import headless_pyplot

    curves = [(r["label"], {int(key.split("@")[1]): value for key, value in r["metrics"].items()
                            if key.startswith("pass@")}, r["label"] == "base") for r in results]
    try:
        return write_pass_at_k_figure(headless_pyplot(), curves, output_dir / "pass_at_k.png", "pass@k against k")
    except (OSError, ValueError, RuntimeError) as error:
        print(f"{PROG}: warning: skipped pass_at_k.png ({error}).", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, eval_command, eval_command_parser().parse_args(argv))
