"""Reward functions that `scripts/train_grpo.py` can name with `--reward-func`, and the resolver for the flag."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable

from ..tasks.chart import chart_answer_reward
from ..tasks.digit import digit_rule_reward


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _final_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{}``, else the last number in the text."""
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _same_answer(predicted: str, reference: str) -> bool:
    try:
        return abs(float(predicted) - float(reference)) < 1e-6
    except ValueError:
        return predicted.replace(" ", "") == reference.replace(" ", "")


def exact_answer_reward(completions: list, answer: list, **kwargs) -> list[float]:
    """``1.0`` when the completion's final answer (last ``\\boxed{}`` or last number) equals the ``answer`` column.

    The verifiable reward of math RLVR datasets (e.g. GSM8K-style ``answer`` columns ending in ``#### 42``).
    """
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        reference = str(reference).split("####")[-1].strip()
        predicted = _final_answer(text)
        rewards.append(1.0 if predicted is not None and _same_answer(predicted, reference) else 0.0)
    return rewards


BUILTIN_REWARDS: dict[str, Callable] = {
    "digit_rule": digit_rule_reward,
    "chart_answer": chart_answer_reward,
    "exact_answer": exact_answer_reward,
}


def resolve_reward_func(spec: str) -> Callable:
    """A built-in reward name (``digit_rule``, ``chart_answer``, ``exact_answer``) or an import path ``package.module:function``."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(
            f"--reward-func {spec!r} is neither a built-in ({', '.join(BUILTIN_REWARDS)}) nor 'module:function'."
        )
    try:
        func = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--reward-func {spec!r} cannot be imported: {error}") from None
    if not callable(func):
        raise ValueError(f"--reward-func {spec!r} is not callable.")
    return func


# What TRL's GRPOTrainer passes every reward function itself (`GRPOTrainer._calculate_rewards`): the rest of its
# keyword arguments are the data set's columns, all but "prompt" (given as `prompts`).
TRL_REWARD_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                        "environments")


def reward_columns(func: Callable) -> list[str] | None:
    """The data-set columns `func` needs: its parameters without a default that TRL does not pass itself (in
    signature order). None when its signature cannot be read (a builtin, some C extensions)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [name for name, parameter in signature.parameters.items()
            if parameter.kind in kinds and parameter.default is inspect.Parameter.empty
            and name not in TRL_REWARD_ARGUMENTS]


def missing_reward_columns(spec: str, func: Callable, columns: list[str], where: str,
                           prompt_column: str = "prompt") -> str | None:
    """One line when `func` (`--reward-func spec`) needs a column that the data set (`where`, with `columns`) lacks,
    else None: TRL would otherwise fail at the first step, after the model is loaded, with a `TypeError` from
    inside the reward call. The prompt column is not a reward argument (TRL passes it as `prompts`)."""
    needed = reward_columns(func)
    available = [column for column in columns if column != "prompt"]
    missing = [name for name in needed or () if name not in available]
    if not missing:
        return None
    shown = [prompt_column if column == "prompt" else column for column in columns]
    names = ", ".join(repr(name) for name in missing)
    return (f"--reward-func {spec} needs the column{'s' if len(missing) > 1 else ''} {names}, which {where} lacks "
            f"(columns: {', '.join(shown)}); add {'them' if len(missing) > 1 else 'it'}, or pick a --reward-func "
            "that reads the columns it has.")
