"""Sample completions of a model on evaluation prompts and score them: the per-prompt records that
`hf_trainkit.eval.metrics.summarize` turns into pass@k, entropy and coverage.

Shared by `PassAtKCallback` (during training, on each rank's share of the prompts) and `hf-trainkit eval` (on saved
checkpoints). Reward functions are called as TRL's GRPOTrainer calls them: ``prompts=``, ``completions=`` and every
other dataset column as a keyword.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import Counter
from collections.abc import Callable, Sequence

from .metrics import coverage, entropy


def tokenizer_of(processing_class):
    """The tokenizer of a tokenizer or of a vision-language processor."""
    return getattr(processing_class, "tokenizer", processing_class)


def row_images(row: dict) -> list | None:
    """The images of a dataset row, as TRL reads them: an ``images`` list or a single ``image``."""
    if row.get("images") is not None:
        return list(row["images"])
    if row.get("image") is not None:
        return [row["image"]]
    return None


def encode(processing_class, texts: list[str], rows: list[dict]):
    """Model inputs for prompts: with a vision-language processor and rows that carry images, the processor's
    (token ids and pixel values); otherwise the tokenizer's."""
    images = [row_images(row) for row in rows] if hasattr(processing_class, "image_processor") else []
    if images and all(image_list for image_list in images):
        return processing_class(text=texts, images=images, return_tensors="pt", padding=True)
    return tokenizer_of(processing_class)(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def prompt_text(prompt, tokenizer) -> str:
    """A plain prompt as it is; a conversation (list of messages) through the chat template, as TRL does."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def _as_completion(text: str, prompt):
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def score(reward_funcs: Sequence[Callable], rows: list[dict], completions: list, prompts: list) -> list[float]:
    """The summed reward of each completion (`rows[i]` is the dataset row that `completions[i]` answers)."""
    columns = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"} if rows else {}
    total = [0.0] * len(completions)
    for func in reward_funcs:
        values = func(prompts=prompts, completions=completions, **columns)
        for i, value in enumerate(values):
            total[i] += float(value) if value is not None and math.isfinite(float(value)) else 0.0
    return total


def sampling_config(tokenizer, max_new_tokens: int, *, temperature: float = 1.0, top_p: float = 1.0,
                    top_k: int = 0):
    """A sampling `GenerationConfig` as GRPO generates (do_sample, the tokenizer's pad and eos), for callers that
    have no trainer's own `generation_config`."""
    from transformers import GenerationConfig

    tokenizer = tokenizer_of(tokenizer)
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
                            top_k=top_k, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def first_token_entropies(model, tokenizer, prompts: list[str], temperature: float, batch_size: int,
                          rows: list[dict] | None = None) -> list[float]:
    """Entropy (nats) of the model's distribution over the first completion token of each prompt, at `temperature`
    (the distribution sampling draws from, before top-k/top-p)."""
    import torch

    values = []
    for start in range(0, len(prompts), batch_size):
        batch = encode(tokenizer, prompts[start:start + batch_size],
                       (rows or [{}] * len(prompts))[start:start + batch_size]).to(model.device)
        logits = model(**batch).logits[:, -1, :].float() / max(temperature, 1e-6)
        probabilities = torch.softmax(logits, dim=-1).tolist()
        values.extend(entropy(p) for p in probabilities)
    return values


@contextlib.contextmanager
def _left_padding(tokenizer):
    tokenizer = tokenizer_of(tokenizer)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues after the prompt's last token
    try:
        yield
    finally:
        tokenizer.padding_side = side


def evaluate(model, tokenizer, rows: list[dict], reward_funcs: Sequence[Callable], *, n: int, generation_config,
             reward_threshold: float = 0.5, batch_size: int = 256, seed: int = 0) -> list[dict]:
    """One record per row: ``correct`` (samples with reward > `reward_threshold`, out of `n`), ``mean_reward``,
    ``entropy``, ``coverage`` (None unless the first reward function has ``answer_of`` and ``correct_answers_of``,
    as `hf_trainkit.tasks.digit.digit_rule_reward` has) and ``answers`` (how often each answer was given).

    `tokenizer` may be a vision-language processor: rows with an ``image`` or ``images`` column are then sampled
    on their images. Sampling uses its own RNG stream seeded with `seed`: the caller's (the training's) RNG state is untouched, so an
    evaluation never changes what training does next.
    """
    import torch

    if not rows:
        return []
    answer_of = getattr(reward_funcs[0], "answer_of", None)
    correct_answers_of = getattr(reward_funcs[0], "correct_answers_of", None)
    texts = [prompt_text(row["prompt"], tokenizer) for row in rows]
    was_training = model.training
    model.eval()
    records = []
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), _left_padding(tokenizer):
            torch.manual_seed(seed)
            entropies = first_token_entropies(model, tokenizer, texts, generation_config.temperature or 1.0,
                                              batch_size, rows)
            per_call = max(1, batch_size // n)  # prompts per generate call
            for start in range(0, len(rows), per_call):
                chunk_rows, chunk_texts = rows[start:start + per_call], texts[start:start + per_call]
                batch = encode(tokenizer, chunk_texts, chunk_rows).to(model.device)
                samples = [[] for _ in chunk_rows]
                for drawn in range(0, n, batch_size):
                    repeat = min(n - drawn, batch_size)
                    config = copy.deepcopy(generation_config)
                    config.num_return_sequences = repeat
                    output = model.generate(**batch, generation_config=config)
                    decoded = tokenizer_of(tokenizer).batch_decode(output[:, batch["input_ids"].shape[1]:],
                                                     skip_special_tokens=True)
                    for i in range(len(chunk_rows)):
                        samples[i].extend(decoded[i * repeat:(i + 1) * repeat])
                for i, row in enumerate(chunk_rows):
                    completions = [_as_completion(text, row["prompt"]) for text in samples[i]]
                    rewards = score(reward_funcs, [row] * n, completions, [row["prompt"]] * n)
                    correct = [text for text, reward in zip(samples[i], rewards) if reward > reward_threshold]
                    answers = Counter(answer_of(text) for text in samples[i]) if answer_of else Counter()
                    records.append({
                        "prompt": texts[start + i],
                        "n": n,
                        "correct": len(correct),
                        "mean_reward": sum(rewards) / n,
                        "entropy": entropies[start + i],
                        "coverage": coverage((answer_of(text) for text in correct), correct_answers_of(row))
                        if answer_of and correct_answers_of else None,
                        "answers": {str(answer): count for answer, count in answers.most_common()},
                    })
    finally:
        model.train(was_training)
    return records
