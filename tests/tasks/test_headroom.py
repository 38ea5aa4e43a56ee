"""The headroom task (hf_trainkit.tasks.headroom), checked against independent computations: the correct digits
against the prior's order, the exact pass@k against a binomial sum and against sampled completions drawn through
hf_trainkit.eval.evaluate, the base model's answer distribution against the prior it was distilled to."""

import math
from collections import Counter

import pytest
import torch

from hf_trainkit.tasks import headroom
from hf_trainkit.tasks.headroom import (
    FAMILIES,
    FAMILY_PRIOR,
    build_headroom_base_model,
    build_headroom_dataset,
    build_headroom_tokenizer,
    correct_digits,
    exact_metrics,
    exact_pass_at_k,
    headroom_reward,
    headroom_rows,
)


def test_splits_are_disjoint_and_balanced():
    train, heldout, everything = headroom_rows("train"), headroom_rows("heldout"), headroom_rows("all")
    assert len(everything) == len(FAMILIES) * headroom.VARIANTS_PER_FAMILY
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    assert len(train) + len(heldout) == len(everything)
    for family in FAMILIES:
        kinds = Counter(r["kind"] for r in everything if r["family"] == family)
        assert kinds == {"easy": 6, "hard": 6}
        held = Counter(r["kind"] for r in heldout if r["family"] == family)
        assert held == {"easy": 1, "hard": 2}
    assert headroom_rows("heldout") == heldout  # the same task for every caller
    with pytest.raises(ValueError, match="unknown headroom split 'test'"):
        headroom_rows("test")


def test_correct_digits_follow_the_prior_order():
    """Easy: the most likely digit and one of the two digits at 0.09; hard: the two least likely digits."""
    for row in headroom_rows("all"):
        prior = FAMILY_PRIOR[row["family"]]
        assert sum(prior.values()) == pytest.approx(1.0)
        ordered = sorted(prior, key=prior.get)
        answers = set(row["answers"])
        assert len(answers) == 2
        if row["kind"] == "hard":
            assert answers == set(ordered[:2])
            assert max(ordered, key=prior.get) not in answers
        else:
            assert max(prior, key=prior.get) in answers
            (other,) = answers - {max(prior, key=prior.get)}
            assert prior[other] == pytest.approx(0.09)
        assert row["prompt"] == f"{row['family']} {row['kind']} {row['variant']} ="


def test_reward_checks_the_first_word():
    row = headroom_rows("heldout")[0]
    right, wrong = row["answers"][0], next(d for d in range(10) if d not in row["answers"])
    completions = [f"{right}", f"{right} </s>", f"{wrong}", "alpha", "", f"{right}{right}"]
    rewards = headroom_reward(completions, family=[row["family"]] * 6, variant=[row["variant"]] * 6)
    assert rewards == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert headroom_reward.correct_answers_of(row) == set(row["answers"])
    with pytest.raises(ValueError, match="unknown headroom prompt"):
        correct_digits("alpha", "v99")


def test_training_rows_draw_hard_prompts_as_configured():
    dataset = build_headroom_dataset(4000, seed=3)
    kinds = {r["prompt"]: r["kind"] for r in headroom_rows("train")}
    share = sum(kinds[p] == "hard" for p in dataset["prompt"]) / len(dataset)
    assert share == pytest.approx(headroom.TRAIN_HARD_FRACTION, abs=0.03)
    assert set(dataset["prompt"]) <= set(kinds)
    assert build_headroom_dataset(50, seed=3)["prompt"] == build_headroom_dataset(50, seed=3)["prompt"]


def test_tokenizer_covers_every_prompt():
    tokenizer = build_headroom_tokenizer()
    for row in headroom_rows("all"):
        ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        assert len(ids) == 4 and tokenizer.unk_token_id not in ids


@pytest.mark.parametrize(("p", "k"), [(0.004, 256), (0.3, 1), (0.05, 16), (0.0, 8), (1.0, 3)])
def test_exact_pass_at_k_is_the_binomial_chance_of_at_least_one(p, k):
    at_least_one = sum(math.comb(k, j) * p**j * (1 - p) ** (k - j) for j in range(1, k + 1))
    assert exact_pass_at_k(p, k) == pytest.approx(at_least_one, abs=1e-12)


@pytest.fixture(scope="module")
def base():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only add contention on a small CI machine
    try:
        tokenizer = build_headroom_tokenizer()
        yield build_headroom_base_model(tokenizer, seed=0), tokenizer
    finally:
        torch.set_num_threads(threads)


def test_base_model_learns_the_prior_and_leaves_the_caller_rng(base):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_headroom_base_model(build_headroom_tokenizer(), seed=1, distill_steps=2)
    assert torch.equal(torch.rand(3), expected)

    model, tokenizer = base
    rows = headroom_rows("all")
    _, digits = headroom.answer_probabilities(model, tokenizer, rows)
    for row, probabilities in zip(rows, digits.tolist()):
        for digit, target in FAMILY_PRIOR[row["family"]].items():
            assert 0.6 * target < probabilities[digit] < 1.6 * target, (row["prompt"], digit)


def test_base_has_headroom_at_large_k(base):
    model, tokenizer = base
    rows = headroom_rows("heldout")
    records = exact_metrics(model, tokenizer, rows, [1, 256])
    hard = [r for r, row in zip(records, rows) if row["kind"] == "hard"]
    mean = sum(r["pass@256"] for r in records) / len(records)
    assert 0.6 < mean < 0.9
    assert all(0.3 < r["pass@256"] < 0.9 for r in hard)
    assert sum(r["pass@1"] for r in records) / len(records) < 0.25


def test_exact_metrics_agree_with_sampled_completions(base):
    """pass@1 from the answer distribution against the share of correct samples drawn by hf_trainkit.eval
    (generate, decode, reward): within 4.5 binomial standard deviations on each prompt."""
    from hf_trainkit.eval import evaluate
    from hf_trainkit.eval.sampling import sampling_config

    model, tokenizer = base
    rows = [row for row in headroom_rows("heldout") if row["family"] in FAMILIES[:3]]
    n = 512
    sampled = evaluate(model, tokenizer, rows, [headroom_reward], n=n,
                       generation_config=sampling_config(tokenizer, 2), seed=0)
    exact = exact_metrics(model, tokenizer, rows, [1], n=n)
    for row, got, want in zip(rows, sampled, exact):
        p = want["pass@1"]
        assert abs(got["correct"] / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1 / n, row["prompt"]
    # Entropy: the same quantity as the sampler's first-token entropy.
    for got, want in zip(sampled, exact):
        assert got["entropy"] == pytest.approx(want["entropy"], rel=1e-4)
