"""The chart QA task, checked against independent computations: bar heights and point positions are read back
from the pixels, answers are recomputed from the drawn values, the held-out rule is checked over large draws."""

import random

import numpy as np
import pytest

from hf_trainkit.tasks.chart import (
    CHART_CATEGORIES,
    CHART_WORDS,
    HELDOUT_COMBINATIONS,
    HELDOUT_SIZE,
    build_chart_dataset,
    chart_answer_reward,
    chart_specs,
    draw_chart,
    parse_chart_answer,
)


def pixels(image):
    return np.asarray(image.convert("RGB")).astype(int)


def column_runs(mask):
    """Runs of consecutive image columns that hold at least one masked pixel: [(first, last), ...]."""
    used = mask.any(axis=0)
    runs, start = [], None
    for x, on in enumerate(list(used) + [False]):
        if on and start is None:
            start = x
        elif not on and start is not None:
            runs.append((start, x - 1))
            start = None
    return runs


def bar_heights(image):
    """Height in pixels of each bar, left to right: the tallest column of bar-blue pixels in each run."""
    rgb = pixels(image)
    mask = (rgb[..., 2] > 140) & (rgb[..., 0] < 110) & (rgb[..., 2] - rgb[..., 0] > 80)
    runs = column_runs(mask)
    assert len(runs) == len(CHART_CATEGORIES), runs
    return [int(mask[:, a:b + 1].sum(axis=0).max()) for a, b in runs]


def point_rows(image):
    """Vertical centre (in pixel rows, 0 at the top) of each red marker, left to right."""
    rgb = pixels(image)
    mask = (rgb[..., 0] > 170) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)
    runs = column_runs(mask)
    assert len(runs) == len(CHART_CATEGORIES), runs
    rows = np.arange(mask.shape[0])[:, None]
    return [float((rows * mask[:, a:b + 1]).sum() / mask[:, a:b + 1].sum()) for a, b in runs]


def uniform(value):
    return dict.fromkeys(CHART_CATEGORIES, value)


@pytest.fixture(scope="module")
def train_rows():
    return build_chart_dataset(num_prompts=48, seed=11)


def test_bar_heights_follow_the_values():
    values = {"A": 2, "B": 9, "C": 5, "D": 1}
    heights = bar_heights(draw_chart(values, "bar"))
    per_unit = [h / values[c] for h, c in zip(heights, CHART_CATEGORIES)]
    assert max(per_unit) - min(per_unit) < 0.8, per_unit  # one scale for every bar (about 3.9 px per unit)
    # The y axis is fixed: a bar of 5 is as tall in every image, whatever the other bars are.
    assert bar_heights(draw_chart(uniform(5), "bar"))[0] == heights[2]


def test_line_points_follow_the_values():
    values = {"A": 7, "B": 1, "C": 4, "D": 9}
    rows = point_rows(draw_chart(values, "line"))
    assert sorted(range(4), key=lambda i: rows[i]) == [3, 0, 2, 1]  # highest (smallest row) first


def read_answer(image, chart_kind, question):
    """The answer recomputed from the pixels alone, calibrated on two uniform charts (all 2s, all 8s)."""
    words = question.split()
    if chart_kind == "bar":
        measured = bar_heights(image)
        low, high = bar_heights(draw_chart(uniform(2), "bar"))[0], bar_heights(draw_chart(uniform(8), "bar"))[0]
    else:
        measured = [-y for y in point_rows(image)]
        low, high = -point_rows(draw_chart(uniform(2), "line"))[0], -point_rows(draw_chart(uniform(8), "line"))[0]
    if words[-2] == "highest":
        return CHART_CATEGORIES[int(np.argmax(measured))]
    index = CHART_CATEGORIES.index(words[-2])
    return str(round(2 + (measured[index] - low) * 6 / (high - low)))


def test_answers_can_be_read_from_the_pixels(train_rows):
    kinds = set()
    for row in train_rows:
        question = row["prompt"][0]["content"][1]["text"]
        assert read_answer(row["image"], row["chart_kind"], question) == row["answer"], (question, row)
        kinds.add((row["chart_kind"], row["question_type"]))
    assert kinds == {("bar", "highest"), ("bar", "value"), ("line", "highest"), ("line", "value")}
    heldout = build_chart_dataset(split="heldout")
    for row in heldout:
        question = row["prompt"][0]["content"][1]["text"]
        assert read_answer(row["image"], row["chart_kind"], question) == row["answer"], (question, row)


def test_rows_and_prompt_format(train_rows):
    assert train_rows.column_names == ["prompt", "image", "answer", "question_type", "chart_kind"]
    assert len(train_rows) == 48
    row = train_rows[0]
    assert row["image"].mode == "RGB" and row["image"].size == (56, 56)
    [message] = row["prompt"]
    assert message["role"] == "user"
    assert [part["type"] for part in message["content"]] == ["image", "text"]
    # The stored image is the drawn one, pixel for pixel (PNG is lossless).
    spec = chart_specs(48, seed=11)[0]
    assert spec["question"] == message["content"][1]["text"] and spec["answer"] == row["answer"]
    assert np.array_equal(pixels(row["image"]), pixels(draw_chart(spec["values"], spec["chart_kind"])))
    assert build_chart_dataset(2, seed=0, image_size=84)[0]["image"].size == (84, 84)


def test_answers_are_recomputed_from_the_values():
    for spec in chart_specs(3000, seed=5) + chart_specs(split="heldout"):
        values = spec["values"]
        words = spec["question"].split()
        if spec["question_type"] == "highest":
            top = max(values.values())
            assert list(values.values()).count(top) == 1  # no ties
            assert spec["answer"] == next(c for c in CHART_CATEGORIES if values[c] == top)
            assert words[1] == ("bar" if spec["chart_kind"] == "bar" else "point")
        else:
            assert spec["answer"] == str(values[words[-2]])
        assert all(1 <= v <= 9 for v in values.values())


def test_every_token_is_a_chart_word():
    assert len(CHART_WORDS) < 40 and len(set(CHART_WORDS)) == len(CHART_WORDS)
    assert all(" " not in word and word for word in CHART_WORDS)
    for spec in chart_specs(2000, seed=1) + chart_specs(split="heldout"):
        question = spec["question"]
        assert question == " ".join(question.split())  # single spaces, no padding
        assert set(question.split()) <= set(CHART_WORDS), question
        assert spec["answer"] in CHART_WORDS


def test_same_seed_same_rows_other_seed_differs():
    first, again, other = (build_chart_dataset(6, seed=s) for s in (3, 3, 4))
    for a, b in zip(first, again):
        assert np.array_equal(pixels(a["image"]), pixels(b["image"]))
        assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in b.items() if k != "image"}
    same = [np.array_equal(pixels(a["image"]), pixels(b["image"])) for a, b in zip(first, other)]
    assert not all(same)
    assert chart_specs(200, seed=3) != chart_specs(200, seed=4)


def test_heldout_never_overlaps_train():
    heldout = chart_specs(split="heldout")
    assert len(heldout) == HELDOUT_SIZE
    key = lambda s: (tuple(s["values"][c] for c in CHART_CATEGORIES), s["chart_kind"], s["question"])  # noqa: E731
    heldout_keys = {key(s) for s in heldout}
    assert len(heldout_keys) == HELDOUT_SIZE  # distinct
    # Independent of num_prompts and seed.
    assert chart_specs(1, seed=99, split="heldout") == heldout
    combination = lambda s: (s["chart_kind"], s["question_type"], s["category"])  # noqa: E731
    assert {combination(s) for s in heldout} == set(HELDOUT_COMBINATIONS)
    seen_combinations = set()
    for seed in (0, 1, 2):
        for spec in chart_specs(20000, seed=seed):
            assert key(spec) not in heldout_keys
            assert combination(spec) not in HELDOUT_COMBINATIONS
            seen_combinations.add(combination(spec))
    # Only the held-out combinations are missing from training: D is asked about on bars, other points on lines.
    every = {(k, q, c) for k in ("bar", "line") for q in ("highest", "value") for c in CHART_CATEGORIES}
    assert seen_combinations == every - set(HELDOUT_COMBINATIONS)


def test_global_random_state_is_untouched():
    random.seed(1234)
    np.random.seed(1234)
    py_state, np_state = random.getstate(), np.random.get_state()
    rows = build_chart_dataset(4, seed=2)
    chart_specs(100, seed=2)
    build_chart_dataset(split="heldout")
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    random.seed(999)  # a different global state does not change the rows
    assert build_chart_dataset(4, seed=2)["answer"] == rows["answer"]


def test_drawing_ignores_the_callers_rc_params():
    import matplotlib

    values = {"A": 4, "B": 8, "C": 3, "D": 6}
    plain = {kind: pixels(draw_chart(values, kind)) for kind in ("bar", "line")}
    with matplotlib.rc_context({"lines.linewidth": 6, "axes.facecolor": "black", "font.size": 30,
                                "axes.edgecolor": "red", "patch.edgecolor": "green", "patch.force_edgecolor": True,
                                "xtick.color": "red", "lines.markersize": 20}):
        for kind in ("bar", "line"):
            assert np.array_equal(pixels(draw_chart(values, kind)), plain[kind]), kind


def test_parse_and_reward():
    assert parse_chart_answer("C is highest") == "C"
    assert parse_chart_answer("  7") == "7"
    assert parse_chart_answer("c") is None and parse_chart_answer("C.") is None and parse_chart_answer("10") is None
    assert parse_chart_answer("") is None and parse_chart_answer([]) is None
    assert parse_chart_answer([{"role": "assistant", "content": "B"}]) == "B"
    assert parse_chart_answer([{"role": "user", "content": "A"}, {"role": "assistant", "content": "x A"}]) is None
    parts = [{"type": "text", "text": "4"}, {"type": "text", "text": " done"}]
    assert parse_chart_answer([{"role": "assistant", "content": parts}]) == "4"
    glued = [{"type": "text", "text": "1"}, {"type": "image"}, {"type": "text", "text": "2"}]
    assert parse_chart_answer([{"role": "assistant", "content": glued}]) is None  # text parts are joined: "12"
    completions = ["C", "7 is it", "the C", [{"role": "assistant", "content": "D"}], "9", ""]
    answers = ["C", "7", "C", "A", "6", "1"]
    expected = []
    for completion, answer in zip(completions, answers):  # written out plainly, not with parse_chart_answer
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        expected.append(1.0 if text.split()[:1] == [answer] else 0.0)
    assert expected == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert chart_answer_reward(completions, answers) == expected
    assert chart_answer_reward.answer_of("D x") == "D"
    assert chart_answer_reward.correct_answers_of({"answer": "5"}) == frozenset({"5"})
    with pytest.raises(ValueError, match="answer"):
        chart_answer_reward(["C"], ["C", "D"])


@pytest.mark.parametrize("call, name", [
    (lambda: build_chart_dataset(4, split="test"), "split"),
    (lambda: chart_specs(0), "num_prompts"),
    (lambda: chart_specs(4, seed="x"), "seed"),
    (lambda: chart_specs(True), "num_prompts"),
    (lambda: draw_chart(uniform(3), "pie"), "kind"),
    (lambda: draw_chart(uniform(3), image_size=4), "image_size"),
    (lambda: draw_chart({"A": 1, "B": 2, "C": 3}), "values"),
    (lambda: draw_chart({**uniform(3), "A": 11}), "values"),
    (lambda: draw_chart({**uniform(3), "A": 2.5}), "values"),
    (lambda: parse_chart_answer(7), "completion"),
    (lambda: parse_chart_answer([{"role": "assistant"}]), "completion"),
])
def test_bad_input_raises_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name) as error:
        call()
    assert "\n" not in str(error.value)
    if name == "split":
        assert "train" in str(error.value) and "heldout" in str(error.value)
