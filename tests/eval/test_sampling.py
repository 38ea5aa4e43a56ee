"""Sampling and scoring on the toy task, checked against recounts written independently of the code under test."""

import math

import pytest
import torch
from transformers import GenerationConfig

from hf_trainkit.eval import evaluate
from hf_trainkit.tasks.digit import (DIGIT_RULES, HELDOUT_RULE_PAIRS, build_toy_base_model, build_toy_dataset,
                             build_toy_tokenizer, digit_rule_reward, toy_prompts)


@pytest.fixture(scope="module")
def base():
    tokenizer = build_toy_tokenizer()
    return build_toy_base_model(tokenizer, seed=0), tokenizer


def sampling(tokenizer, temperature=1.0):
    return GenerationConfig(max_new_tokens=4, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def test_records_agree_with_a_recount_of_the_answers(base):
    model, tokenizer = base
    rows = [dict(row) for row in build_toy_dataset(split="heldout")]
    records = evaluate(model, tokenizer, rows, [digit_rule_reward], n=48, generation_config=sampling(tokenizer))
    assert len(records) == len(HELDOUT_RULE_PAIRS)
    for row, record in zip(rows, records):
        digits = set.intersection(*(set(DIGIT_RULES[name]) for name in row["rule"].split()))
        answers = record["answers"]
        assert sum(answers.values()) == 48
        right = {a for a in answers if a != "None" and int(a) in digits}
        assert record["correct"] == sum(answers[a] for a in right)
        assert record["mean_reward"] == pytest.approx(record["correct"] / 48)
        assert record["coverage"] == pytest.approx(len(right) / len(digits))


def test_entropy_is_that_of_the_first_token_at_the_sampling_temperature(base):
    model, tokenizer = base
    rows = [{"prompt": "even prime =", "rule": "even prime"}]
    record = evaluate(model, tokenizer, rows, [digit_rule_reward], n=2, generation_config=sampling(tokenizer, 0.7))[0]
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer("even prime =")["input_ids"]])).logits[0, -1] / 0.7
    p = torch.softmax(logits.double(), -1).tolist()
    assert record["entropy"] == pytest.approx(-sum(x * math.log(x) for x in p if x > 0), rel=1e-4)


def test_sampling_is_seeded_and_leaves_the_callers_rng_alone(base):
    model, tokenizer = base
    rows = [dict(row) for row in build_toy_dataset(split="heldout")]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = evaluate(model, tokenizer, rows, [digit_rule_reward], n=16, generation_config=sampling(tokenizer), seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    again = evaluate(model, tokenizer, rows, [digit_rule_reward], n=16, generation_config=sampling(tokenizer), seed=5)
    other = evaluate(model, tokenizer, rows, [digit_rule_reward], n=16, generation_config=sampling(tokenizer), seed=6)
    assert [r["answers"] for r in first] == [r["answers"] for r in again]
    assert [r["answers"] for r in first] != [r["answers"] for r in other]


def test_toy_task_is_fit_for_the_question(base):
    """The base knows the one-rule prompts (a rule-dependent prior), rarely solves the hardest held-out prompt,
    and the held-out prompts never appear in training."""
    model, tokenizer = base
    train = set(build_toy_dataset(4096, seed=0)["rule"])
    assert not train & set(toy_prompts("heldout"))
    assert train == set(toy_prompts("train"))

    def solve_rate(rules):
        rows = [{"prompt": f"{rule} =", "rule": rule} for rule in rules]
        records = evaluate(model, tokenizer, rows, [digit_rule_reward], n=128, generation_config=sampling(tokenizer))
        return [r["correct"] / 128 for r in records]

    known, heldout = solve_rate(toy_prompts("warmup")), solve_rate(toy_prompts("heldout"))
    random_model = build_toy_base_model(tokenizer, seed=0, warmup_steps=0)
    random_rows = [{"prompt": f"{rule} =", "rule": rule} for rule in toy_prompts("warmup")]
    random_rate = [r["correct"] / 128 for r in evaluate(random_model, tokenizer, random_rows, [digit_rule_reward],
                                                        n=128, generation_config=sampling(tokenizer))]
    mean = lambda values: sum(values) / len(values)
    assert mean(known) > 2 * mean(random_rate)  # the warm-up gave a prior
    assert min(heldout) < 0.15  # a hard prompt
    assert mean(heldout) < mean(known) - 0.1  # the held-out pairs are harder than what the base learned
