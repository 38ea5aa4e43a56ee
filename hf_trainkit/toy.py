"""The built-in toy task: a tiny model, a local tokenizer and a verifiable "digit rule" task.

Everything here is built locally (no hub access), so the demo and the tests run offline on a CPU.

The task: a prompt names a rule (``"even ="``, ``"prime ="`` ...) and the completion's first word must be a
digit that satisfies it. Every rule has several correct answers (like a math problem with several valid
derivations), so pass@k and output diversity are measurable, and the reward is a plain rule check, like the
paper's verifiable math rewards: ``1.0`` when correct, ``0.0`` otherwise.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerFast


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


def build_toy_dataset(num_prompts: int = 512, seed: int = 0) -> Dataset:
    """Prompts ``"<rule> ="`` with a ``rule`` column that the reward function reads."""
    from datasets import Dataset

    rng = random.Random(seed)
    rules = list(DIGIT_RULES)
    rows = [rng.choice(rules) for _ in range(num_prompts)]
    return Dataset.from_dict({"prompt": [f"{rule} =" for rule in rows], "rule": rows})


def parse_answer(completion: str) -> int | None:
    """The digit a completion answers with (its first word), or ``None``."""
    words = completion.split()
    if words and len(words[0]) == 1 and words[0].isdigit():
        return int(words[0])
    return None


def digit_rule_reward(completions: list[str], rule: list[str], **kwargs) -> list[float]:
    """TRL reward function: ``1.0`` when the answer digit satisfies the prompt's rule, else ``0.0``."""
    rewards = []
    for completion, rule_name in zip(completions, rule, strict=True):
        answer = parse_answer(completion)
        rewards.append(1.0 if answer is not None and answer in DIGIT_RULES[rule_name] else 0.0)
    return rewards
