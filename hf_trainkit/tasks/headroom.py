"""A task with headroom at large k: the base model knows several answers per prompt, and on the hard prompts the
right ones are rare. Built for `benchmarks/paper_fidelity.py` (Zhu et al. 2025, "The Surprising Effectiveness of
Negative Reinforcement in LLM Reasoning"), where the toy digit task (`hf_trainkit.tasks.digit`, kept for the demo) is solved
by every model at k = 256 and so cannot show what happens at large k.

The task. A prompt is ``"<family> <kind> <variant> ="`` (``"beta hard v7 ="``): one of `FAMILIES`, one of `KINDS`
and one of `VARIANTS` (a surface difference, like two wordings of a problem). The completion's first word is a
digit. Every prompt has exactly two correct digits (a correct answer can be reached in more than one way, so
coverage means something) and the reward is a plain check: ``1.0`` when the digit is one of them, ``0.0``
otherwise.

- ``easy``: the correct digits are the family's *dominant* answer and one of its two *middle* answers;
- ``hard``: the correct digits are the family's two *rare* answers; the dominant answer is wrong.

The base model (`build_headroom_base_model`) plays a pretrained model that knows several ways to answer and does
not know which one a prompt needs: it is distilled to the family's prior (`ROLE_PROBABILITIES`: dominant 0.45,
second 0.20, two middle 0.09 each, four others 0.0415 each, two rare 0.002 each) on every prompt of the family,
whatever its kind or variant. On the hard prompts the right answers are rare: p = 0.004, so pass@1 = 0.004 and
pass@256 = 1 - 0.996^256 = 0.64 there; pass@k at large k has room to rise or fall. This is the mechanism the paper
describes: PSR reinforces what already wins (the dominant answer, right on the easy prompts) and so loses the rare
right answers of the hard prompts that share the family; NSR pushes mass off the answers that are wrong (the
dominant one, on the hard prompts) and keeps the rest.

Splits (`headroom_rows`), the same for every caller: each family has `VARIANTS_PER_FAMILY` variants, half easy and
half hard, the kinds and the digits' roles drawn from a fixed random stream (`TASK_SEED`). ``heldout``: one easy
and two hard variants of every family (27 prompts: the base's mean pass@1 over them is about 0.18 and its mean
pass@256 about 0.76); ``train``: the other variants (81 prompts), drawn hard `TRAIN_HARD_FRACTION` of the time by
`build_headroom_dataset` (the hard prompts are where a mode that learns from failures has something to learn).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from datasets import Dataset


FAMILIES: tuple[str, ...] = ("alpha", "beta", "gamma", "delta", "kappa", "sigma", "omega", "theta", "zeta")
# Held-out variants per family and kind (the held-out split); the other variants of every family train.
HELDOUT_PER_KIND = {"easy": 1, "hard": 2}
VARIANTS_PER_FAMILY = 12
VARIANTS: tuple[str, ...] = tuple(f"v{i}" for i in range(VARIANTS_PER_FAMILY))
KINDS: tuple[str, ...] = ("easy", "hard")
SPLITS: tuple[str, ...] = ("train", "heldout", "all")
# Share of hard prompts among the training rows (`build_headroom_dataset`).
TRAIN_HARD_FRACTION = 0.8
# Every role's probability under the base model's prior, the same for every family (the digits differ).
ROLE_PROBABILITIES: dict[str, float] = {
    "dominant": 0.45, "second": 0.20, "middle1": 0.09, "middle2": 0.09,
    "other1": 0.0415, "other2": 0.0415, "other3": 0.0415, "other4": 0.0415, "rare1": 0.002, "rare2": 0.002,
}
# Which roles are correct on each kind of prompt.
CORRECT_ROLES: dict[str, tuple[str, str]] = {"easy": ("dominant", "middle1"), "hard": ("rare1", "rare2")}
TASK_SEED = 20_250_611
PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))


def _layout() -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    """(family -> role -> digit, (family, variant) -> kind, (family, variant) -> split), from `TASK_SEED`."""
    rng = random.Random(TASK_SEED)
    roles, kinds, splits = {}, {}, {}
    for family in FAMILIES:
        digits = list(range(10))
        rng.shuffle(digits)
        roles[family] = dict(zip(ROLE_PROBABILITIES, digits, strict=True))
        variants = list(VARIANTS)
        rng.shuffle(variants)
        half = len(variants) // 2
        for kind, chosen in (("easy", variants[:half]), ("hard", variants[half:])):
            for index, variant in enumerate(sorted(chosen, key=VARIANTS.index)):
                kinds[family, variant] = kind
                splits[family, variant] = "heldout" if index < HELDOUT_PER_KIND[kind] else "train"
    return roles, kinds, splits


FAMILY_ROLES, PROMPT_KINDS, PROMPT_SPLITS = _layout()
# family -> digit -> probability under the base model's prior.
FAMILY_PRIOR: dict[str, dict[int, float]] = {
    family: {digit: ROLE_PROBABILITIES[role] for role, digit in roles.items()} for family, roles in FAMILY_ROLES.items()
}


def correct_digits(family: str, variant: str) -> frozenset[int]:
    """The two digits that answer ``"<family> <variant> ="`` correctly."""
    if (family, variant) not in PROMPT_KINDS:
        raise ValueError(f"unknown headroom prompt {family!r} {variant!r}: family in {FAMILIES}, variant in "
                         f"{VARIANTS}")
    return frozenset(FAMILY_ROLES[family][role] for role in CORRECT_ROLES[PROMPT_KINDS[family, variant]])


def headroom_rows(split: str = "heldout") -> list[dict]:
    """The prompts of a split, in a fixed order: dicts with ``prompt``, ``family``, ``variant``, ``kind`` and
    ``answers`` (the correct digits, sorted). ``split``: ``train``, ``heldout`` or ``all``."""
    if split not in SPLITS:
        raise ValueError(f"unknown headroom split {split!r}: use one of {', '.join(SPLITS)}")
    rows = []
    for family in FAMILIES:
        for variant in VARIANTS:
            if split != "all" and PROMPT_SPLITS[family, variant] != split:
                continue
            kind = PROMPT_KINDS[family, variant]
            rows.append({"prompt": f"{family} {kind} {variant} =", "family": family, "variant": variant,
                         "kind": PROMPT_KINDS[family, variant], "answers": sorted(correct_digits(family, variant))})
    return rows


def build_headroom_dataset(num_prompts: int = 4096, seed: int = 0, split: str = "train") -> Dataset:
    """Rows with ``prompt``, ``family`` and ``variant`` (the columns the reward reads). ``train``: `num_prompts` rows
    drawn with `seed` from the training prompts, a hard one `TRAIN_HARD_FRACTION` of the time; ``heldout`` and
    ``all``: each prompt once."""
    from datasets import Dataset

    rows = headroom_rows(split)
    if split == "train":
        rng = random.Random(seed)
        by_kind = {kind: [r for r in rows if r["kind"] == kind] for kind in KINDS}
        rows = [rng.choice(by_kind["hard" if rng.random() < TRAIN_HARD_FRACTION else "easy"])
                for _ in range(num_prompts)]
    return Dataset.from_dict({"prompt": [r["prompt"] for r in rows], "family": [r["family"] for r in rows],
                              "variant": [r["variant"] for r in rows]})


def headroom_vocabulary() -> list[str]:
    return [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, "=", *DIGITS, *FAMILIES, *KINDS, *VARIANTS]


def build_headroom_tokenizer():
    """A word-level tokenizer over [`headroom_vocabulary`] (no download), as `hf_trainkit.tasks.digit` builds its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(headroom_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN,
                                        unk_token=UNK_TOKEN)
    tokenizer.padding_side = "left"
    return tokenizer


def parse_digit(completion: str) -> int | None:
    """The digit a completion answers with (its first word), or ``None``."""
    words = completion.split()
    if words and len(words[0]) == 1 and words[0].isdigit():
        return int(words[0])
    return None


def headroom_reward(completions: list[str], family: list[str], variant: list[str], **kwargs) -> list[float]:
    """TRL reward function: ``1.0`` when the answer digit is one of the prompt's two correct digits, else ``0.0``."""
    rewards = []
    for completion, family_name, variant_name in zip(completions, family, variant, strict=True):
        answer = parse_digit(completion)
        rewards.append(1.0 if answer is not None and answer in correct_digits(family_name, variant_name) else 0.0)
    return rewards


# What `hf_trainkit.eval` needs for coverage (distinct correct answers found / correct answers that exist).
headroom_reward.answer_of = parse_digit
headroom_reward.correct_answers_of = lambda row: correct_digits(row["family"], row["variant"])


# Distillation of the base model to `FAMILY_PRIOR`: full-batch steps over every prompt (both splits: the base has
# "seen" every problem, as a pretrained model has); enough that the rare digits' probabilities are within a few
# tens of percent of 0.002 (measured by tests/tasks/test_headroom.py).
DISTILL_STEPS = 400
DISTILL_LEARNING_RATE = 1e-2


def build_headroom_base_model(tokenizer=None, *, seed: int = 0, distill_steps: int = DISTILL_STEPS,
                              hidden_size: int = 64, num_layers: int = 2):
    """The base model: `hf_trainkit.tasks.digit.build_tiny_model` distilled for `distill_steps` full-batch AdamW steps to
    the family prior on every prompt: the loss is the cross-entropy of the first completion token against
    `FAMILY_PRIOR` (a soft target) plus that of ``</s>`` after a digit drawn from it.

    Deterministic for a seed on one machine; the caller's RNG state is left as it was.
    """
    import torch

    from .digit import build_tiny_model

    tokenizer = tokenizer or build_headroom_tokenizer()
    with torch.random.fork_rng(devices=[]):
        model = build_tiny_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
        if distill_steps <= 0:
            return model
        rows = headroom_rows("all")
        digit_ids = torch.tensor([tokenizer.convert_tokens_to_ids(d) for d in DIGITS])
        prompts = torch.tensor([tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows])
        targets = torch.tensor([[FAMILY_PRIOR[r["family"]][d] for d in range(10)] for r in rows])
        targets = targets / targets.sum(-1, keepdim=True)
        count, length = prompts.shape
        generator = torch.Generator().manual_seed(seed)
        eos = torch.full((count, 1), tokenizer.eos_token_id)
        optimizer = torch.optim.AdamW(model.parameters(), lr=DISTILL_LEARNING_RATE, weight_decay=0.0)
        model.train()
        for _ in range(distill_steps):
            # Each prompt followed by a digit drawn from its target and </s>: the prompt's last position carries the
            # soft target (causal: it does not see the digit), the digit's position learns to stop.
            drawn = digit_ids[torch.multinomial(targets, 1, generator=generator)]
            logits = model(input_ids=torch.cat([prompts, drawn, eos], dim=1)).logits
            answer_logp = torch.log_softmax(logits[:, length - 1], dim=-1)[:, digit_ids]
            loss = -(targets * answer_logp).sum(-1).mean()
            loss = loss - torch.log_softmax(logits[:, length], dim=-1)[:, tokenizer.eos_token_id].mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    return model


def answer_probabilities(model, tokenizer, rows: list[dict]):
    """The model's probability of each digit as the first completion token of each row's prompt (a float tensor,
    rows x 10), at temperature 1: the distribution sampling draws the answer from."""
    import torch

    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in DIGITS]
    ids = torch.tensor([tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows],
                       device=model.device)
    with torch.no_grad():
        probabilities = torch.softmax(model(input_ids=ids).logits[:, -1, :].float(), dim=-1)
    return probabilities, probabilities[:, digit_ids]


def exact_metrics(model, tokenizer, rows: list[dict], ks, n: int = 256) -> list[dict]:
    """Per row: ``pass@k`` for each k, ``entropy`` and ``coverage``, computed from the model's answer distribution
    rather than estimated from samples (no sampling noise; see `exact_pass_at_k`).

    ``pass@k`` = 1 - (1 - p)^k, p the probability that the first token is a correct digit: the chance that k
    independent samples include a correct one, which the unbiased estimator of Chen et al. 2021 estimates from n
    samples. ``entropy``: of the first completion token over the whole vocabulary, in nats (what
    `hf_trainkit.eval.sampling.first_token_entropies` measures). ``coverage``: the expected share of the two
    correct digits found at least once in `n` samples.
    """
    full, digits = answer_probabilities(model, tokenizer, rows)
    records = []
    for row, p_all, p_digit in zip(rows, full.tolist(), digits.tolist(), strict=True):
        correct = correct_digits(row["family"], row["variant"])
        p = min(1.0, sum(p_digit[d] for d in correct))
        record = {f"pass@{k}": exact_pass_at_k(p, k) for k in ks}
        record["entropy"] = -sum(q * math.log(q) for q in p_all if q > 0)
        record["coverage"] = sum(exact_pass_at_k(p_digit[d], n) for d in correct) / len(correct)
        records.append(record)
    return records


def exact_pass_at_k(p: float, k: int) -> float:
    """1 - (1 - p)^k: the chance that k independent draws, each correct with probability p, include a correct one."""
    return 1.0 - (1.0 - p) ** k
