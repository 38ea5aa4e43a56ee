"""The built-in toy task: a tiny model, a local tokenizer and a verifiable "digit rule" task.

Everything here is built locally (no hub access), so the demo and the tests run offline on a CPU.

The task: a prompt names one rule (``"even ="``) or two (``"even prime ="``) and the completion's first word must
be a digit that satisfies all of them. Most prompts have several correct answers (like a math problem with several
valid derivations), so pass@k, coverage and output diversity are measurable, and the reward is a plain rule check,
like the paper's verifiable math rewards: ``1.0`` when correct, ``0.0`` otherwise.

Built for the question the paper asks (does RL make the model better at pass@1 at the cost of pass@k?):

- the base model is not random: a short supervised warm-up on the one-rule prompts gives it a rule-dependent prior
  (`build_toy_base_model`), as pretraining gives a real model one;
- the two-rule prompts are hard for that base (it never saw them; some have one correct digit out of ten);
- six two-rule prompts are held out (`HELDOUT_RULE_PAIRS`): RL trains on the others, evaluation runs on these.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast


# Rule name -> the digits that satisfy it. Sizes differ on purpose, so that prompts differ in difficulty.
DIGIT_RULES: dict[str, frozenset[int]] = {
    "even": frozenset({0, 2, 4, 6, 8}),
    "odd": frozenset({1, 3, 5, 7, 9}),
    "prime": frozenset({2, 3, 5, 7}),
    "square": frozenset({0, 1, 4, 9}),
    "triple": frozenset({0, 3, 6, 9}),
    "big": frozenset({6, 7, 8, 9}),
    "small": frozenset({0, 1, 2, 3}),
}
# Two-rule prompts held out of training (`build_toy_dataset(split="heldout")`): chosen to mix one, two and three
# correct answers, so that both pass@k at large k and coverage can move.
HELDOUT_RULE_PAIRS: tuple[tuple[str, str], ...] = (
    ("even", "prime"),  # 2
    ("even", "square"),  # 0 4
    ("odd", "prime"),  # 3 5 7
    ("prime", "big"),  # 7
    ("square", "small"),  # 0 1
    ("triple", "big"),  # 6 9
)
# Share of two-rule prompts in the training split (the rest are the one-rule prompts the base already knows).
TRAIN_PAIR_FRACTION = 0.75
PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
# Words a random model can emit instead of a digit: they make early rewards low, so learning is visible.
FILLER_WORDS = ("a", "b", "c", "d", "e", "f", "g", "h", "x", "y", "z", "is", "not", "the")


def toy_vocabulary() -> list[str]:
    digits = [str(d) for d in range(10)]
    return [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, "=", *digits, *DIGIT_RULES, *FILLER_WORDS]


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over [`toy_vocabulary`], built with `tokenizers` (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(toy_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Without a decoder, word-level tokens would be glued together ("4x" instead of "4 x").
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(tokenizer=None, *, hidden_size: int = 64, num_layers: int = 2, seed: int | None = None):
    """A randomly initialised 2-layer Llama built from a config (no weights are downloaded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_toy_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    if seed is not None:
        torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def correct_answers(rule: str) -> frozenset[int]:
    """The digits that satisfy every rule named in ``rule`` (``"even"`` or ``"even prime"``)."""
    answers = frozenset(range(10))
    for name in rule.split():
        answers &= DIGIT_RULES[name]
    return answers


def rule_pairs() -> list[tuple[str, str]]:
    """Every pair of rules with at least one digit satisfying both, in `DIGIT_RULES` order."""
    names = list(DIGIT_RULES)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if correct_answers(f"{a} {b}")]


def toy_prompts(split: str = "train") -> list[str]:
    """The rules (one or two names) of a split: ``train`` (one-rule prompts and the two-rule prompts not held
    out), ``heldout`` (`HELDOUT_RULE_PAIRS`), or ``warmup`` (the one-rule prompts: what the base model learned)."""
    singles = list(DIGIT_RULES)
    pairs = [f"{a} {b}" for a, b in rule_pairs() if (a, b) not in HELDOUT_RULE_PAIRS]
    if split == "train":
        return singles + pairs
    if split == "heldout":
        return [f"{a} {b}" for a, b in HELDOUT_RULE_PAIRS]
    if split == "warmup":
        return singles
    raise ValueError(f"unknown toy split {split!r}: use train, heldout or warmup")


def build_toy_dataset(num_prompts: int = 512, seed: int = 0, split: str = "train") -> Dataset:
    """Prompts ``"<rule> ="`` with a ``rule`` column that the reward function reads.

    ``train``: `num_prompts` rows drawn at random, two-rule prompts `TRAIN_PAIR_FRACTION` of the time. ``heldout``
    and ``warmup``: each prompt of the split once (`num_prompts` and `seed` are ignored): the evaluation set.
    """
    from datasets import Dataset

    if split == "train":
        rng = random.Random(seed)
        rules = toy_prompts("train")
        singles, pairs = rules[: len(DIGIT_RULES)], rules[len(DIGIT_RULES):]
        rows = [rng.choice(pairs if rng.random() < TRAIN_PAIR_FRACTION else singles) for _ in range(num_prompts)]
    else:
        rows = toy_prompts(split)
    return Dataset.from_dict({"prompt": [f"{rule} =" for rule in rows], "rule": rows})


def parse_answer(completion: str) -> int | None:
    """The digit a completion answers with (its first word), or ``None``."""
    words = completion.split()
    if words and len(words[0]) == 1 and words[0].isdigit():
        return int(words[0])
    return None


def digit_rule_reward(completions: list[str], rule: list[str], **kwargs) -> list[float]:
    """TRL reward function: ``1.0`` when the answer digit satisfies every rule of the prompt, else ``0.0``."""
    rewards = []
    for completion, rule_name in zip(completions, rule, strict=True):
        answer = parse_answer(completion)
        rewards.append(1.0 if answer is not None and answer in correct_answers(rule_name) else 0.0)
    return rewards


# What `hf_trainkit.eval` needs to measure coverage (distinct correct answers found / correct answers that exist):
# the reward says which answer a completion gives and which answers a dataset row accepts.
digit_rule_reward.answer_of = parse_answer
digit_rule_reward.correct_answers_of = lambda row: correct_answers(row["rule"])


# Supervised warm-up of the toy base model: long enough that the one-rule prompts are mostly answered right, short
# enough that the two-rule prompts are not (measured by tests/test_toy.py).
WARMUP_STEPS = 10
WARMUP_LEARNING_RATE = 3e-3
WARMUP_BATCH_SIZE = 64


def build_toy_base_model(tokenizer=None, *, seed: int = 0, warmup_steps: int = WARMUP_STEPS, hidden_size: int = 64,
                         num_layers: int = 2):
    """The toy task's base model: `build_tiny_model` after `warmup_steps` of supervised training on the one-rule
    prompts (``"even = 4 </s>"``, the answer drawn uniformly among the correct digits).

    It plays the part of a pretrained model: a prior over answers that depends on the rule, spread over all
    correct digits, and no training at all on two-rule prompts. Deterministic for a seed on one machine; its own
    random generator, so the caller's RNG state is left as it was. ``warmup_steps=0`` is the random model.
    """
    import torch

    tokenizer = tokenizer or build_toy_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    if warmup_steps <= 0:
        return model
    rules = toy_prompts("warmup")
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=WARMUP_LEARNING_RATE)
    model.train()
    for _ in range(warmup_steps):
        texts = []
        for _ in range(WARMUP_BATCH_SIZE):
            rule = rng.choice(rules)
            texts.append(f"{rule} = {rng.choice(sorted(correct_answers(rule)))} {EOS_TOKEN}")
        ids = torch.tensor([tokenizer(text)["input_ids"] for text in texts])  # one-rule texts all have 4 tokens
        labels = ids.clone()
        labels[:, :2] = -100  # learn the answer and the end, not the prompt
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


def toy_base_recipe(seed: int, warmup_steps: int = WARMUP_STEPS) -> dict:
    """What `build_toy_base_model` was called with: enough to build the same base again."""
    # The builder's name is recorded in every run (run_record.json), so it keeps the module's old name: runs saved
    # before the move and after it record the same recipe (hf_trainkit.toy still imports, see _moved.py).
    return {"builder": "hf_trainkit.toy.build_toy_base_model", "seed": seed, "warmup_steps": warmup_steps,
            "hidden_size": 64, "num_layers": 2}


def build_toy_base_from_recipe(recipe: dict, tokenizer=None):
    """The base model a `toy_base_recipe` describes (the same weights, on the same machine)."""
    return build_toy_base_model(tokenizer, seed=recipe["seed"], warmup_steps=recipe["warmup_steps"],
                                hidden_size=recipe["hidden_size"], num_layers=recipe["num_layers"])


def ensure_toy_base_model(directory: str, recipe: dict) -> str:
    """`directory` holding the base model of `recipe` (and the toy tokenizer), built and saved unless it is already
    there; returns `directory`."""
    from .saved import ensure_saved, save_model_here

    def save(folder: str) -> None:
        tokenizer = build_toy_tokenizer()
        save_model_here(build_toy_base_from_recipe(recipe, tokenizer), folder)
        tokenizer.save_pretrained(folder)

    return ensure_saved(directory, recipe, save)
