"""The built-in chart question-answering task: small matplotlib charts, questions about them, a verifiable reward.

It is the vision counterpart of the text toy task (`hf_trainkit.tasks.digit`): everything is drawn locally (no hub, no
downloads), so a tiny vision-language model can be RL-trained and evaluated offline on a CPU.

The task: an image shows four values (1..9) over the categories ``A B C D``, as a bar chart or a line chart with a
fixed ``0..10`` y axis, and a question asks either which category is highest (``"which bar is highest ?"``) or the
value of one category (``"what is the value of C ?"``). The completion's first word is the answer: a category
letter or a digit. There is exactly one correct answer (``highest`` questions are only asked of charts whose
maximum is unique), and the reward is a plain check: ``1.0`` when the answer matches, ``0.0`` otherwise.

Questions are made only of `CHART_WORDS` separated by single spaces, so a word-level tokenizer over that list
covers every prompt and every correct answer.

Held-out rule (`build_chart_dataset(split="heldout")`): the combinations in `HELDOUT_COMBINATIONS` never occur in
training: no training row asks the value of ``D`` on a line chart, and no training row asks which point is
highest on a line chart whose highest point is ``D``. The held-out split is made only of those rows, so it can
never overlap the training split, whatever the seeds; it measures whether what was learned on bar charts (where
``D`` is asked about) and on the other line-chart questions transfers to the unseen combination.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from datasets import Dataset
    from PIL.Image import Image


CHART_CATEGORIES: tuple[str, ...] = ("A", "B", "C", "D")
CHART_KINDS: tuple[str, ...] = ("bar", "line")
QUESTION_TYPES: tuple[str, ...] = ("highest", "value")
# Values drawn for the dataset; the y axis always spans 0..10, so heights compare across images.
MIN_VALUE, MAX_VALUE = 1, 9
Y_LIMIT = 10
_QUESTION_WORDS = ("which", "bar", "point", "is", "highest", "what", "the", "value", "of", "?")
CHART_WORDS: tuple[str, ...] = (*_QUESTION_WORDS, *CHART_CATEGORIES, *(str(d) for d in range(10)))

# (chart_kind, question_type, category) never produced by the training split; the held-out split is made of them.
# For a ``value`` question the category is the one asked about, for a ``highest`` question it is the answer.
HELDOUT_COMBINATIONS: tuple[tuple[str, str, str], ...] = (("line", "value", "D"), ("line", "highest", "D"))
HELDOUT_SIZE = 12
# The held-out rows come from their own fixed random stream: the same 12 rows for every caller.
HELDOUT_SEED = 7_919
SPLITS = ("train", "heldout")

# Drawing: colours are pure enough to be found back in the pixels (the tests read bar heights and point positions).
BAR_COLOR = "#1f5fbf"
MARKER_COLOR = "#d62020"
LINE_COLOR = "#a0a0a0"
_MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE = 16, 1024


def chart_question(chart_kind: str, question_type: str, category: str | None = None) -> str:
    """The question text: ``"which bar is highest ?"``, ``"which point is highest ?"`` or
    ``"what is the value of C ?"`` (``category`` is only used, and required, for ``value`` questions)."""
    _check_choice(chart_kind, CHART_KINDS, "chart_kind")
    _check_choice(question_type, QUESTION_TYPES, "question_type")
    if question_type == "highest":
        return f"which {'bar' if chart_kind == 'bar' else 'point'} is highest ?"
    _check_choice(category, CHART_CATEGORIES, "category")
    return f"what is the value of {category} ?"


def draw_chart(values: dict[str, int], kind: str = "bar", image_size: int = 56) -> Image:
    """An RGB chart of ``values`` exactly ``image_size`` x ``image_size`` pixels.

    Categories in `CHART_CATEGORIES` order, labelled under the axis in a large bold font; the y axis is fixed to
    ``0..10`` and unlabelled, so a height means the same value in every image; no frame but the base line. Drawn
    on a private Agg figure (`matplotlib.figure.Figure` with its own `FigureCanvasAgg`): no pyplot state, no
    backend switch, nothing written to disk, and every style property is set here, so the caller's rcParams
    (colours, line widths, fonts) do not change the picture. The figure is one inch at ``image_size`` dpi, so the
    layout scales with the size. Deterministic for the same input.
    """
    _check_values(values, "values", low=0, high=Y_LIMIT)
    _check_choice(kind, CHART_KINDS, "kind")
    if not _is_int(image_size) or not _MIN_IMAGE_SIZE <= image_size <= _MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int in {_MIN_IMAGE_SIZE}..{_MAX_IMAGE_SIZE}, got {image_size!r}")
    image_size = int(image_size)
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image as PILImage

    fig = Figure(figsize=(1, 1), dpi=image_size, facecolor="white", edgecolor="white", linewidth=0)
    canvas = FigureCanvasAgg(fig)
    # Axes box in figure fractions: the bottom quarter holds the category letters.
    ax = fig.add_axes((0.04, 0.27, 0.92, 0.69))
    ax.set_facecolor("white")
    xs = list(range(len(CHART_CATEGORIES)))
    heights = [values[category] for category in CHART_CATEGORIES]
    if kind == "bar":
        ax.bar(xs, heights, width=0.62, color=BAR_COLOR, linewidth=0, edgecolor="none", zorder=2)
    else:
        ax.plot(xs, heights, color=LINE_COLOR, linewidth=1.5, linestyle="-", marker="none", zorder=2)
        ax.plot(xs, heights, linestyle="none", marker="o", markersize=7, markerfacecolor=MARKER_COLOR,
                markeredgewidth=0, markeredgecolor="none", zorder=3, clip_on=False)
    ax.set_xlim(-0.5, len(CHART_CATEGORIES) - 0.5)
    ax.set_ylim(0, Y_LIMIT)
    ax.set_xticks(xs, list(CHART_CATEGORIES), fontsize=13, fontweight="bold", fontfamily="DejaVu Sans",
                  color="black")
    ax.tick_params(axis="x", length=0, pad=1.5)
    ax.set_yticks([])
    ax.grid(False)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color("black")
    ax.spines["bottom"].set_linewidth(1.2)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    fig.clear()
    if pixels.shape[:2] != (image_size, image_size):  # the canvas is sized by dpi; make a rounding slip visible
        raise RuntimeError(f"matplotlib drew {pixels.shape[1]}x{pixels.shape[0]} px, expected {image_size}")
    return PILImage.fromarray(pixels)  # an (H, W, 3) uint8 array is RGB


def chart_specs(num_prompts: int = 256, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """The rows of a split without their images: ``values`` (category -> int), ``chart_kind``, ``question_type``,
    ``category`` (asked about, or the answer of a ``highest`` question), ``question`` and ``answer``.

    ``train``: `num_prompts` rows from ``random.Random(seed)``: kind and question type uniform, values uniform in
    1..9 (resampled until the maximum is unique for ``highest`` questions), never a `HELDOUT_COMBINATIONS` row.
    ``heldout``: `HELDOUT_SIZE` distinct rows of `HELDOUT_COMBINATIONS` (alternating) from the fixed stream
    `HELDOUT_SEED`; `num_prompts` and `seed` are ignored. The global `random` state is never touched.
    """
    _check_choice(split, SPLITS, "split")
    if split == "heldout":
        rng = random.Random(HELDOUT_SEED)
        rows, seen = [], set()
        while len(rows) < HELDOUT_SIZE:
            kind, question_type, category = HELDOUT_COMBINATIONS[len(rows) % len(HELDOUT_COMBINATIONS)]
            row = _draw_row(rng, kind, question_type, (category,))
            key = (tuple(row["values"].values()), row["chart_kind"], row["question"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
        return rows
    if not _is_int(num_prompts) or num_prompts < 1:
        raise ValueError(f"num_prompts must be a positive int, got {num_prompts!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    rng = random.Random(int(seed))
    rows = []
    for _ in range(num_prompts):
        kind, question_type = rng.choice(CHART_KINDS), rng.choice(QUESTION_TYPES)
        allowed = tuple(c for c in CHART_CATEGORIES if (kind, question_type, c) not in HELDOUT_COMBINATIONS)
        rows.append(_draw_row(rng, kind, question_type, allowed))
    return rows


def build_chart_dataset(num_prompts: int = 256, seed: int = 0, split: str = "train",
                        image_size: int = 56) -> Dataset:
    """The chart task as a `datasets.Dataset` for TRL's GRPO with a vision-language model.

    Columns: ``prompt`` (conversational: one user message, an image placeholder then the question), ``image``
    (a `datasets.Image` feature, so it round-trips through Arrow and `save_to_disk`), ``answer`` (``"C"`` or
    ``"7"``), ``question_type`` (``highest``/``value``) and ``chart_kind`` (``bar``/``line``). Rows are
    `chart_specs` (see there for `num_prompts`, `seed` and the ``heldout`` split) drawn with `draw_chart`.
    """
    from datasets import Dataset, Features, Image, List, Value

    specs = chart_specs(num_prompts, seed, split)
    drawn: dict[tuple, Any] = {}  # the same chart is drawn once per call
    images = []
    for spec in specs:
        key = (tuple(spec["values"].values()), spec["chart_kind"])
        if key not in drawn:
            drawn[key] = draw_chart(spec["values"], spec["chart_kind"], image_size)
        images.append(drawn[key])
    features = Features({
        "prompt": List({"role": Value("string"),
                        "content": List({"type": Value("string"), "text": Value("string")})}),
        "image": Image(),
        "answer": Value("string"),
        "question_type": Value("string"),
        "chart_kind": Value("string"),
    })
    data = {
        "prompt": [[{"role": "user", "content": [{"type": "image", "text": None},
                                                 {"type": "text", "text": spec["question"]}]}] for spec in specs],
        "image": images,
        "answer": [spec["answer"] for spec in specs],
        "question_type": [spec["question_type"] for spec in specs],
        "chart_kind": [spec["chart_kind"] for spec in specs],
    }
    return Dataset.from_dict(data, features=features)


def parse_chart_answer(completion) -> str | None:
    """The answer of a completion: its first word when that is a category letter or a single digit, else ``None``.

    ``completion`` is a string or TRL's conversational completion (a list of messages; the last one's
    ``content`` is read, a string or a list of ``{"type": "text", "text": ...}`` parts, joined). The match is
    exact, like the toy task's: ``"c"``, ``"C."`` and ``"10"`` are not answers.
    """
    words = _completion_text(completion).split()
    if words and (words[0] in CHART_CATEGORIES or (len(words[0]) == 1 and words[0] in "0123456789")):
        return words[0]
    return None


def chart_answer_reward(completions, answer, **kwargs) -> list[float]:
    """TRL reward function: ``1.0`` when the completion's answer (`parse_chart_answer`) is the row's ``answer``."""
    completions, answer = list(completions), list(answer)
    if len(completions) != len(answer):
        raise ValueError(f"answer has {len(answer)} entries for {len(completions)} completions")
    return [1.0 if parse_chart_answer(completion) == str(expected) else 0.0
            for completion, expected in zip(completions, answer)]


# What `hf_trainkit.eval` needs to measure coverage: the answer a completion gives and the answers a row accepts.
chart_answer_reward.answer_of = parse_chart_answer
chart_answer_reward.correct_answers_of = lambda row: frozenset({row["answer"]})


def _draw_row(rng: random.Random, kind: str, question_type: str, categories: tuple[str, ...]) -> dict[str, Any]:
    """One row whose category (asked about, or the unique maximum for ``highest``) is among ``categories``."""
    if question_type == "value":
        values = _draw_values(rng)
        category = rng.choice(categories)
        answer = str(values[category])
    else:
        while True:
            values = _draw_values(rng)
            top = max(values.values())
            winners = [c for c, v in values.items() if v == top]
            if len(winners) == 1 and winners[0] in categories:
                break
        category = answer = winners[0]
    return {"values": values, "chart_kind": kind, "question_type": question_type, "category": category,
            "question": chart_question(kind, question_type, category), "answer": answer}


def _draw_values(rng: random.Random) -> dict[str, int]:
    return {category: rng.randint(MIN_VALUE, MAX_VALUE) for category in CHART_CATEGORIES}


def _completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        message = completion[-1]
        if not isinstance(message, Mapping) or "content" not in message:
            raise ValueError(f"completion: the last message must be a dict with 'content', got {message!r:.80}")
        content = message["content"]
        if content is None or isinstance(content, str):
            return content or ""
        if isinstance(content, (list, tuple)):
            return "".join(part.get("text") or "" for part in content
                           if isinstance(part, Mapping) and part.get("type") == "text")
        raise ValueError(f"completion: message content must be a string or a list of parts, got "
                         f"{type(content).__name__}")
    raise ValueError(f"completion must be a string or a list of chat messages, got {type(completion).__name__}")


def _is_int(value) -> bool:
    """An integer (numpy's included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_choice(value, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_values(values, name: str, *, low: int, high: int) -> None:
    if not isinstance(values, Mapping) or set(values) != set(CHART_CATEGORIES):
        keys = sorted(values) if isinstance(values, Mapping) else type(values).__name__
        raise ValueError(f"{name} must map exactly the categories {', '.join(CHART_CATEGORIES)}; got {keys}")
    for category in CHART_CATEGORIES:
        value = values[category]
        if not _is_int(value) or not low <= value <= high:
            raise ValueError(f"{name}[{category!r}] must be an int in {low}..{high}, got {value!r}")

