"""The image column of a user's data set: found, checked, and given to TRL as it reads images.

TRL's GRPOTrainer reads a column ``image`` (one image per prompt) or ``images`` (a list) and hands the images to the
processor. A data file names its images by path (relative to the file, as a user writes them next to it), or holds
their bytes; a hub or saved data set may hold decoded PIL images already. Every image is opened once here, before
training, so a missing or broken file is one line naming its row, not a crash at the step that draws it.
"""

from __future__ import annotations

import io
from pathlib import Path

from ..argparsing import UsageError


IMAGE_COLUMNS = ("image", "images")


def find_image_column(flag: str, spec: str, columns: list[str], image_column: str | None) -> str | None:
    if image_column is not None:
        if image_column not in columns:
            raise UsageError(f"--image-column {image_column}: {flag} {spec} has no such column (columns: "
                             f"{', '.join(columns)}).")
        return image_column
    return next((name for name in IMAGE_COLUMNS if name in columns), None)


def resolve_image_column(flag: str, spec: str, dataset, image_column: str | None):
    """`dataset` with its image column renamed to ``image``/``images`` and cast to the `datasets` Image feature
    (decoded lazily, row by row), every image checked; unchanged when it has no image column."""
    import datasets

    column = find_image_column(flag, spec, dataset.column_names, image_column)
    if column is None:
        return dataset
    base = Path(spec).expanduser().resolve().parent if Path(spec).is_file() else Path.cwd()
    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):  # read what it stores (a path or bytes), not a decoded image
        raw = dataset.cast_column(column, datasets.Image(decode=False))[column]
    elif isinstance(_inner_feature(feature), datasets.Image):
        raw = dataset.cast_column(column, datasets.Sequence(datasets.Image(decode=False)))[column]
    else:
        raw = dataset[column]
    is_list = len(raw) > 0 and isinstance(raw[0], (list, tuple))
    values = []
    for row, value in enumerate(raw):
        items = value if is_list else [value]
        if is_list and not isinstance(value, (list, tuple)):
            raise UsageError(f"{flag} {spec}: row {row}: column {column!r} holds lists of images elsewhere but "
                             f"{type(value).__name__} here.")
        checked = [_checked_image(flag, spec, row, item, base) for item in items]
        values.append(checked if is_list else checked[0])
    target = "images" if is_list else "image"
    dataset = dataset.remove_columns([column])
    if target in dataset.column_names:
        dataset = dataset.remove_columns([target])
    image_feature = datasets.Image()
    dataset = dataset.add_column(target, values, feature=datasets.Sequence(image_feature) if is_list else image_feature)
    return as_conversations(dataset)


def as_conversations(dataset):
    """Plain-text prompts as one user message each: TRL trains a VLM on conversational prompts only (it puts the
    image placeholders into the first user message), and fails at the first step on a plain string."""
    if "prompt" not in dataset.column_names or not len(dataset) or not isinstance(dataset[0]["prompt"], str):
        return dataset
    conversations = [[{"role": "user", "content": text}] for text in dataset["prompt"]]
    return dataset.remove_columns(["prompt"]).add_column("prompt", conversations)


def _inner_feature(feature):
    inner = getattr(feature, "feature", None)
    if inner is None and isinstance(feature, list) and feature:
        inner = feature[0]
    return inner


def _checked_image(flag: str, spec: str, row: int, value, base: Path) -> dict:
    """One image as the Image feature stores it ({"path": ..., "bytes": ...}), after opening it."""
    from PIL import Image, UnidentifiedImageError

    where = f"{flag} {spec}: row {row}"
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"path": None, "bytes": buffer.getvalue()}
    if isinstance(value, dict):  # the Image feature's own form, undecoded
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            value = data
        elif path is not None:
            value = path
        else:
            raise UsageError(f"{where}: the image is empty (neither bytes nor a path).")
    if isinstance(value, (bytes, bytearray)):
        source, label, stored = io.BytesIO(value), "the image bytes", {"path": None, "bytes": bytes(value)}
    elif isinstance(value, str):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise UsageError(f"{where}: image {value} does not exist (looked for {path}).")
        source, label, stored = str(path), f"image {value}", {"path": str(path), "bytes": None}
    elif value is None:
        raise UsageError(f"{where}: no image.")
    else:
        raise UsageError(f"{where}: an image must be a path, bytes or a PIL image, not {type(value).__name__}.")
    try:
        with Image.open(source) as image:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UsageError(f"{where}: {label} cannot be read as an image ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}).") from None
    return stored
