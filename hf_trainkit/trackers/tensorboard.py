"""TensorBoard event files (`events.out.tfevents.*`, what transformers' `TensorBoardCallback` writes) -> rows.

Read through TensorBoard's own record reader (the one its `EventAccumulator` uses when TensorFlow is absent: every
record's CRC checked) and its `Event` protobuf; scalars only (`simple_value`, or a `scalars`-plugin tensor), the
text/histogram/image summaries are no curve.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import TrackerInputError, missing_extra

EVENT_FILE_PATTERN = re.compile(r"^events\.out\.tfevents\.")
# transformers' (and PyTorch's) default log dir: runs/<Mon><dd>_<HH-MM-SS>_<host>, a new one per process start,
# so the folders under one `runs/` are the segments of one run (a resume starts a new folder).
DEFAULT_LOGDIR_PATTERN = re.compile(r"^[A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2}_")


def is_event_file(path: Path) -> bool:
    return bool(EVENT_FILE_PATTERN.match(path.name))


def event_files(directory: Path) -> list[Path]:
    """The event files directly in `directory`, in the order they were started (their names hold the time)."""
    try:
        return sorted((p for p in directory.iterdir() if is_event_file(p) and p.is_file()), key=_started)
    except OSError:
        return []


def _started(path: Path):
    parts = path.name.split(".")  # events.out.tfevents.<seconds>.<host>.<pid>.<n>
    try:
        return (float(parts[3]), path.name)
    except (IndexError, ValueError):
        return (float("inf"), path.name)


def _imports():
    try:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
    except ImportError:
        raise missing_extra("TensorBoard event files", "tensorboard") from None
    return event_pb2, errors, pywrap_tensorflow


def read_event_file(path: Path) -> tuple[list[tuple[int, float, str, float]], str | None]:
    """The scalars of one event file as (step, wall_time, tag, value), in file order, and why the reading stopped
    early (a truncated last record: a run still writing, or killed), or None.

    Raises:
        TrackerInputError: not an event file, or a corrupt record before any scalar.
    """
    event_pb2, errors, pywrap_tensorflow = _imports()
    parse = event_pb2.Event.FromString
    try:
        reader = pywrap_tensorflow.PyRecordReader_New(str(path))
    except errors.OpError as error:
        raise TrackerInputError(f"{path}: cannot read ({error.message}).") from None
    scalars: list[tuple[int, float, str, float]] = []
    append = scalars.append
    stopped, records = None, 0
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            break
        except errors.DataLossError as error:
            stopped = "truncated" if "truncated" in str(error.message).lower() else "corrupt"
            break
        except OSError as error:
            raise TrackerInputError(f"{path}: cannot read ({error.strerror or error}).") from None
        try:
            event = parse(reader.record())
        except Exception:  # protobuf's DecodeError: a record that passed its CRC but is no Event
            stopped = "corrupt"
            break
        records += 1
        if not event.HasField("summary"):
            continue
        step, wall_time = event.step, event.wall_time
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                append((step, wall_time, value.tag, value.simple_value))
            elif kind == "tensor" and value.metadata.plugin_data.plugin_name == "scalars":
                number = _scalar_tensor(value.tensor)
                if number is not None:
                    append((step, wall_time, value.tag, number))
    if stopped == "corrupt" and not scalars:
        what = "not a TensorBoard event file" if records == 0 else "corrupt"
        raise TrackerInputError(f"{path}: {what} (a record fails its checksum or does not parse).")
    return scalars, stopped


def _scalar_tensor(tensor) -> float | None:
    """The number a `scalars`-plugin tensor holds (TensorBoard's own tensor_util for the packed forms)."""
    if tensor.float_val:
        return float(tensor.float_val[0])
    if tensor.double_val:
        return float(tensor.double_val[0])
    try:
        from tensorboard.util import tensor_util

        array = tensor_util.make_ndarray(tensor)
        return float(array.reshape(-1)[0]) if array.size else None
    except Exception:
        return None


# The final summary transformers logs once (as `train/train_runtime` ...): a row of its own.
_SUMMARY_TAGS = frozenset(f"train/{key}" for key in ("train_runtime", "train_samples_per_second",
                                                     "train_steps_per_second", "total_flos", "train_loss"))
_EPOCH_TAG = "train/epoch"


def _tag_kind(tag: str) -> str | None:
    if tag == _EPOCH_TAG:
        return None  # transformers puts the epoch at the end of every logs dict: it joins the row it ends
    if tag.startswith(("eval/", "test/")):
        return "eval"
    return "summary" if tag in _SUMMARY_TAGS else "train"


def scalars_to_rows(scalars: list[tuple[int, float, str, float]]) -> list[dict]:
    """Scalars as rows, one per `Trainer.log` call. transformers writes each call's values one event each, at the
    call's step, so a new row starts where the step changes, a tag comes again at the same step, or the kind of
    tag changes (train, eval, the final summary: an eval and the summary share the last train log's step)."""
    rows: list[dict] = []
    row: dict = {}
    step, kind = None, None
    kinds: dict[str, str | None] = {}
    for event_step, wall_time, tag, value in scalars:
        tag_kind = kinds.get(tag, "")
        if tag_kind == "":
            tag_kind = kinds[tag] = _tag_kind(tag)
        if event_step != step or tag in row or (tag_kind is not None and kind is not None and tag_kind != kind):
            if row:
                rows.append(row)
            row = {"train/global_step": event_step, "_timestamp": wall_time}
            step, kind = event_step, None
        row[tag] = value
        if tag_kind is not None:
            kind = tag_kind
    if row:
        rows.append(row)
    return rows


def run_segments(directory: Path) -> list[list[Path]] | None:
    """Where a folder's TensorBoard run is: the event dirs under it (itself, `logs/`, `runs/*`, `logs/*`, one level
    of sub-folders), grouped into runs. Folders named as transformers names its default log dirs, side by side, are
    the segments of one run. Returns the runs found (each a list of event dirs, oldest first), or None."""
    places = [directory, directory / "logs", directory / "runs", directory / "tensorboard"]
    found: list[Path] = []
    for place in places:
        if event_files(place):
            found.append(place)
            if place == directory:
                return [[directory]]  # the event files are here: this is the run
    for place in (directory, directory / "runs", directory / "logs", directory / "tensorboard"):
        try:
            children = sorted(c for c in place.iterdir() if c.is_dir() and not c.is_symlink())
        except OSError:
            continue
        for child in children:
            if child.name.startswith(("checkpoint-", "wandb", ".")) or child in found:
                continue
            if event_files(child):
                found.append(child)
    if not found:
        return None
    runs: list[list[Path]] = []
    segments: dict[Path, list[Path]] = {}
    for place in found:
        if DEFAULT_LOGDIR_PATTERN.match(place.name):
            group = segments.get(place.parent)
            if group is None:
                group = segments[place.parent] = []
                runs.append(group)
            group.append(place)
        else:
            runs.append([place])
    for group in runs:
        group.sort(key=lambda d: _started(event_files(d)[0]))
    return runs


def read_tensorboard_run(dirs: list[Path] | Path) -> tuple[list[dict], list[str]]:
    """The rows of a TensorBoard run (its event dirs, or one event file), every file in the order it was started,
    and the notes to tell (a truncated last record)."""
    files = [dirs] if isinstance(dirs, Path) else [f for d in dirs for f in event_files(d)]
    rows, notes = [], []
    for path in files:
        scalars, stopped = read_event_file(path)
        if stopped:
            notes.append(f"{path}: {stopped} after {len(scalars)} scalars; read what came before.")
        rows.extend(scalars_to_rows(scalars))
    return rows, notes
