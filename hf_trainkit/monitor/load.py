"""Reading runs: RUN (output dir, checkpoint dir or trainer_state.json) -> `RunHistory` of train/eval series.

Tolerates everything transformers and TRL have written over the years: bare NaN/Infinity, `null`, strings, `lr`
for `learning_rate`, several eval sets per step, keys with `/`, a history holding only the final summary.
"""

from __future__ import annotations

import gc
import glob
import json
import math
import os
from dataclasses import dataclass, field
from itertools import groupby
from functools import partial
from operator import is_not, itemgetter
from pathlib import Path

from ..argparsing import UsageError
from ..constants import CHECKPOINT_PATTERN, LIVE_LOG_FILE, TIME_KEY, TRAINER_STATE_NAME
from .progress import Progress


SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")
KEY_ALIASES = {"lr": "learning_rate"}
_LARGEST_STEP = 2 ** 53  # beyond it a step is no step (and no float holds it exactly)
_LARGEST_FLOAT = 1.7976931348623157e308
_NOT_METRICS = {"step", "epoch", TIME_KEY}
_is_not_none = partial(is_not, None)


class MonitorInputError(UsageError, ValueError):
    """A RUN that cannot be read: reported as one line, exit code 2."""


@dataclass
class Series:
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    epochs: list[float | None] = field(default_factory=list)
    # min-max band of a group of runs (see monitor.grouping); None for a single run
    low: list[float] | None = None
    high: list[float] | None = None

    def append(self, step, value, epoch):
        self.steps.append(step)
        self.values.append(value)
        self.epochs.append(epoch)

    def arrays(self):
        """(steps, values) as float numpy arrays, converted once: plots and summaries reuse them."""
        import numpy as np

        cached = getattr(self, "_arrays", None)
        if cached is None or len(cached[1]) != len(self.values):
            cached = (np.asarray(self.steps, dtype=float), np.asarray(self.values, dtype=float))
            self._arrays = cached
        return cached

    def finite(self) -> tuple[list[float], list[float]]:
        """(steps, values) without the NaN/inf points."""
        import numpy as np

        steps, values = self.arrays()
        mask = np.isfinite(values)
        return steps[mask].tolist(), values[mask].tolist()

    def __len__(self):
        return len(self.values)


@dataclass
class RunHistory:
    """One run's logged history, split into train series, eval series and the final summary."""

    label: str
    source: Path
    train: dict[str, Series] = field(default_factory=dict)
    eval: dict[str, Series] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)  # top-level fields other than log_history

    @property
    def global_step(self) -> int:
        step = self.state.get("global_step")
        if isinstance(step, (int, float)) and not isinstance(step, bool) and abs(step) < _LARGEST_STEP:
            return int(step)  # NaN fails the comparison: the steps logged decide then
        all_steps = [s for series in (*self.train.values(), *self.eval.values()) for s in series.steps]
        return int(max(all_steps)) if all_steps else 0

    @property
    def is_rl(self) -> bool:
        # TRL's GRPO/RLOO/PPO log `reward` or `rewards/<func>/mean`; DPO's `rewards/chosen` is not an RL reward.
        return "reward" in self.train or any(k.startswith("rewards/") and k.endswith("/mean") for k in self.train)

    def last_epoch(self) -> float | None:
        # The largest epoch logged (the first of equals), one C-level pass per series.
        epochs = [max(kept) for kept in (list(filter(_is_not_none, s.epochs)) for s in self.train.values()) if kept]
        epoch = self.state.get("epoch")
        return max(epochs) if epochs else (epoch if isinstance(epoch, (int, float)) else None)


def _number(value) -> float | None:
    """A float for numbers (NaN/inf kept), None for anything else (strings, null, bools, lists)."""
    if type(value) is float:
        return value
    if type(value) is int:  # not isinstance: bool is an int subclass
        return float(value) if -_LARGEST_FLOAT < value < _LARGEST_FLOAT else (math.inf if value > 0 else -math.inf)
    return None


# --- JSON: msgspec when installed (a default dependency), else Python's json; the same objects either way --------

_NAN, _INF = float("nan"), float("inf")
# Python's json reads the bare NaN / Infinity / -Infinity that transformers (and the live log) write; msgspec does
# not. They are handed to msgspec as strings no valid JSON text can hold here (checked: no escaped NUL in the text),
# and turned back into the floats afterwards. One inside a string breaks the text, so that file takes Python's json.
_LITERALS = ((b"-Infinity", b'"\\u0000m"'), (b"Infinity", b'"\\u0000p"'), (b"NaN", b'"\\u0000n"'))
_RESTORED = {"\x00m": -_INF, "\x00p": _INF, "\x00n": _NAN}
_DECODER: list = []  # [msgspec.json.Decoder or None], made on first use


def _fast_decoder():
    """A `msgspec.json.Decoder`, or None without msgspec (the stdlib path)."""
    if not _DECODER:
        try:
            import msgspec
        except ImportError:
            _DECODER.append(None)
        else:
            _DECODER.append(msgspec.json.Decoder())
    return _DECODER[0]


def json_loads(raw: bytes):
    """`json.loads(raw)`: the same objects (NaN and infinities, integers of any size included) and the same errors,
    read by msgspec when it is installed (several times faster on a trainer_state.json), else by Python's json. Any
    text msgspec refuses (invalid UTF-8, a lone surrogate, 1e400, a NaN inside a string ...) is read again by
    Python's json, which decides."""
    decoder = _fast_decoder()
    if decoder is not None:
        text, replaced = _stand_ins(raw)
        literals = replaced > 0
        if text is not None:
            try:
                data = decoder.decode(text)
            except Exception:  # msgspec.DecodeError, msgspec.ValidationError (a number out of range) ...
                pass
            else:
                if not literals:
                    return data
                restored = [0]
                data = _restore(data, restored)
                if restored[0] == replaced:  # else a bare NaN stood where Python's json refuses it (a key)
                    return data
    return json.loads(raw)


def _stand_ins(raw: bytes) -> tuple[bytes | None, int]:
    """`raw` with the stand-ins of `_LITERALS` for msgspec, and how many; (None, 0) where they could be mistaken."""
    # (a capital N or I is rare in a log: one memchr each rules the literals out, else a search)
    if not ((raw.find(b"N") >= 0 and b"NaN" in raw) or (raw.find(b"I") >= 0 and b"Infinity" in raw)):
        return raw, 0
    if b"\\u0000" in raw:
        return None, 0
    replaced = 0
    for literal, stand_in in _LITERALS:
        replaced += raw.count(literal)
        raw = raw.replace(literal, stand_in)
    return raw, replaced


def _restore(value, restored: list):
    """The floats NaN/inf back in place of their stand-ins (see `_LITERALS`), in place; counts them in
    `restored[0]`."""
    kind = type(value)
    if kind is str:
        if value in _RESTORED:
            restored[0] += 1
            return _RESTORED[value]
        return value
    if kind is list:
        items = enumerate(value)
    elif kind is dict:
        items = value.items()
    else:
        return value
    for key, item in items:
        if type(item) is str:
            if item in _RESTORED:
                value[key] = _RESTORED[item]
                restored[0] += 1
        elif type(item) is dict or type(item) is list:
            types = set(map(type, item.values() if type(item) is dict else item))
            if str in types or dict in types or list in types:  # nothing else can hold a stand-in
                _restore(item, restored)
    return value


def parse_state(data, source: Path, label: str) -> RunHistory:
    if not isinstance(data, dict):
        raise MonitorInputError(f"{source}: top level is a {type(data).__name__}, not a trainer_state object.")
    history = data.get("log_history")
    if not isinstance(history, list):
        raise MonitorInputError(f"{source}: no 'log_history' list; is this a {TRAINER_STATE_NAME}?")
    run = RunHistory(label=label, source=source, state={k: v for k, v in data.items() if k != "log_history"})
    tables: dict[bool, dict[str, Series]] = {False: run.train, True: run.eval}
    if history and set(map(type, history)) == {dict}:
        signatures = map(tuple, history)  # the keys of each entry, in order
    else:
        signatures = (tuple(entry) if type(entry) is dict else None for entry in history)
    # Consecutive entries with the same keys (a run logs the same metrics at every step) are read as columns: C-level
    # transposes and type checks instead of a Python loop per value. Short stretches (an eval entry, the summary)
    # take the loop per entry. Same series, same values, same order.
    start = 0
    for keys, group in groupby(signatures):
        count = len(list(group))
        end = start + count
        if keys is None:
            pass  # not objects: skipped
        elif count < _COLUMNS_FROM or "train_runtime" in keys or "train_samples_per_second" in keys:
            _parse_entries(history, start, end, tables, run.summary)
        elif keys:
            _parse_columns(history[start:end], keys, start, tables)
        start = end
    for table in tables.values():
        for old, new in KEY_ALIASES.items():
            if old in table and new not in table:
                table[new] = table.pop(old)
    return run


_COLUMNS_FROM = 8  # entries in a row with the same keys read as columns


def _parse_entries(history: list, start: int, end: int, tables: dict, summary: dict):
    """Entries `history[start:end]` one by one (the reference reading; `_parse_columns` gives the same result)."""
    skipped = _NOT_METRICS
    for index in range(start, end):
        entry = history[index]
        if type(entry) is not dict:
            continue
        step = entry.get("step")
        if (type(step) is not int and type(step) is not float) or not -_LARGEST_STEP < step < _LARGEST_STEP:
            step = index  # missing, a string, NaN, infinite or absurdly large
        epoch = entry.get("epoch")
        if (type(epoch) is not float and type(epoch) is not int) or not -_LARGEST_STEP < epoch < _LARGEST_STEP:
            epoch = None
        if "train_runtime" in entry or "train_samples_per_second" in entry:
            for key, value in entry.items():
                number = _number(value)
                if number is not None and key not in skipped:
                    summary[key] = number
            continue
        is_eval = False
        for key in entry:
            if key[:5] in ("eval_", "eval/"):
                is_eval = True
                break
        table = tables[is_eval]
        for key, value in entry.items():
            kind = type(value)
            if (kind is float or kind is int) and key not in skipped:
                if kind is int and not -_LARGEST_FLOAT < value < _LARGEST_FLOAT:
                    value = math.inf if value > 0 else -math.inf  # an integer no float can hold
                series = table.get(key)
                if series is None:
                    series = table[key] = Series()
                series.steps.append(step)
                series.values.append(value)
                series.epochs.append(epoch)


def _all_within(column, limit: float) -> bool:
    """Every value an int or a float (no bool, no None) with |value| < `limit` (so none NaN or infinite)."""
    types = set(map(type, column))
    if not types <= {int, float}:
        return False
    try:
        if float in types and not math.isfinite(sum(column)):  # NaN or an infinity (or an overflowing sum)
            return False
        return max(map(abs, column)) < limit
    except OverflowError:  # an integer beyond any float, beside floats
        return False


def _parse_columns(entries: list, keys: tuple, start: int, tables: dict):
    """Entries that all have `keys` (in that order), the first at index `start` of the history, read column by
    column; exactly what `_parse_entries` makes of them."""
    columns = list(zip(*map(itemgetter(*keys), entries))) if len(keys) > 1 else [[e[keys[0]] for e in entries]]
    by_key = dict(zip(keys, columns))
    count = len(entries)
    steps = by_key.get("step")
    if steps is None:
        steps = range(start, start + count)
    elif not _all_within(steps, _LARGEST_STEP):
        steps = [s if (type(s) is int or type(s) is float) and -_LARGEST_STEP < s < _LARGEST_STEP else start + i
                 for i, s in enumerate(steps)]
    epochs = by_key.get("epoch")
    if epochs is None:
        epochs = (None,) * count
    elif not _all_within(epochs, _LARGEST_STEP):
        epochs = [e if (type(e) is int or type(e) is float) and -_LARGEST_STEP < e < _LARGEST_STEP else None
                  for e in epochs]
    table = tables[any(key[:5] in ("eval_", "eval/") for key in keys)]
    found = []  # (first entry holding a number, position, key, steps, values, epochs)
    for position, (key, values) in enumerate(zip(keys, columns)):
        if key in _NOT_METRICS:
            continue
        types = set(map(type, values))
        if types == {float} or (types == {int} and max(map(abs, values)) < _LARGEST_FLOAT):
            found.append((0, position, key, steps, values, epochs))
            continue
        rows = [i for i, v in enumerate(values) if type(v) is float or type(v) is int]
        if not rows:
            continue
        kept = [values[i] for i in rows]
        kept = [v if type(v) is float or -_LARGEST_FLOAT < v < _LARGEST_FLOAT else (math.inf if v > 0 else -math.inf)
                for v in kept]
        found.append((rows[0], position, key, [steps[i] for i in rows], kept, [epochs[i] for i in rows]))
    found.sort(key=itemgetter(0, 1))  # series created in the order entry by entry reading meets them
    for _, _, key, key_steps, values, key_epochs in found:
        series = table.get(key)
        if series is None:
            series = table[key] = Series()
        series.steps.extend(key_steps)
        series.values.extend(values)
        series.epochs.extend(key_epochs)


def read_state_file(path: Path, label: str) -> RunHistory:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MonitorInputError(f"{path}: no such file.") from None
    except OSError as error:
        raise MonitorInputError(f"{path}: cannot read ({error.strerror or error}).") from None
    if not raw.strip():
        raise MonitorInputError(f"{path}: empty file.")
    if raw.startswith(b"version https://git-lfs"):
        raise MonitorInputError(f"{path}: a Git LFS pointer, not the JSON itself; fetch it with `git lfs pull`.")
    try:
        data = json_loads(raw)  # as Python's json: it accepts the bare NaN/Infinity that transformers writes
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        where = f" (line {error.lineno} column {error.colno}: {error.msg})" if hasattr(error, "lineno") else ""
        raise MonitorInputError(f"{path}: not valid JSON{where}; truncated or still being written?") from None
    except RecursionError:
        raise MonitorInputError(f"{path}: JSON nested too deeply to be a trainer_state.json.") from None
    except ValueError as error:  # an integer of thousands of digits (Python's int conversion limit)
        raise MonitorInputError(f"{path}: unreadable JSON ({str(error)[:100]}).") from None
    return parse_state(data, path, label)


def read_live_log(path: str | Path, offset: int = 0, limit: int | None = None) -> tuple[list[dict], int]:
    """The entries of a live log from byte `offset` on, and the offset after the last complete line.

    A line still being written (no newline yet) is left for the next read; a line that is not a JSON object (a
    torn write after a crash) is skipped. Entries keep their `"_time"`. With `limit`, about `limit` bytes are read
    (to the end of the line they end in): a long log read in parts.
    """
    with open(path, "rb") as handle:
        handle.seek(offset)
        raw = handle.read() if limit is None else handle.read(limit)
        if limit is not None and len(raw) == limit and not raw.endswith(b"\n"):
            raw += handle.readline()
    end = raw.rfind(b"\n") + 1
    body = raw[:end].strip()
    if not body:
        return [], offset + end
    try:  # one parse for the whole file (several times faster than a json.loads per line)
        entries = json_loads(b"[" + body.replace(b"\n", b",") + b"]")
        if all(type(entry) is dict for entry in entries):
            return entries, offset + end
    except (ValueError, RecursionError):
        pass
    entries = []  # a torn or foreign line somewhere: line by line, skipping what is not an object
    for line in raw[:end].splitlines():
        try:
            entry = json_loads(line)
        except (ValueError, RecursionError):
            continue
        if type(entry) is dict:
            entries.append(entry)
    return entries, offset + end


def read_live_log_history(path: Path, label: str) -> RunHistory:
    """A run as its live log records it (a running run, or one that died before its first save)."""
    try:
        entries, _ = read_live_log(path)
    except OSError as error:
        raise MonitorInputError(f"{path}: cannot read ({error.strerror or error}).") from None
    steps = [e["step"] for e in entries if type(e.get("step")) is int]
    return parse_state({"log_history": entries, "global_step": max(steps, default=0)}, path, label)


def _checkpoint_states(directory: Path) -> list[Path]:
    found = []
    for child in directory.iterdir():
        if child.is_dir() and CHECKPOINT_PATTERN.match(child.name) and (child / TRAINER_STATE_NAME).is_file():
            found.append(child / TRAINER_STATE_NAME)
    return found


def default_label(path: Path) -> str:
    """The run's name: the output dir's, `output/checkpoint-60` -> `output/checkpoint-60`."""
    try:
        path = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        path = path.absolute()
    if path.name == TRAINER_STATE_NAME:
        path = path.parent
    if CHECKPOINT_PATTERN.match(path.name):
        return f"{path.parent.name}/{path.name}"
    return path.name


def load_run(run: str | Path, label: str | None = None) -> RunHistory:
    """Load RUN: a `trainer_state.json`, a checkpoint dir, or an output dir (its newest state by global step); or
    another tracker's run (TensorBoard event files, a W&B run, a Trackio project: see `hf_trainkit.trackers`), or a
    folder holding one.

    Raises:
        MonitorInputError: a one-line reason the run cannot be read.
    """
    # Building millions of small lists triggers the cyclic GC again and again, for nothing: nothing here is cyclic.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if isinstance(run, str) and run.startswith("trackio:") and not os.path.exists(run):
            from .tracker_runs import load_tracker_run  # another tracker's run (hf_trainkit.trackers)

            return load_tracker_run(run, label)
        return _load_run(Path(run), label)
    except OSError as error:  # permission denied on a folder, a vanished file ...
        raise MonitorInputError(f"{run}: cannot read ({error.strerror or error}).") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def _load_run(path: Path, label: str | None) -> RunHistory:
    from . import tracker_runs  # another tracker's run (hf_trainkit.trackers): the same RunHistory

    if path.is_file():
        if tracker_runs.is_tracker_file(path):
            return tracker_runs.load_tracker_run(path, label)
        return read_state_file(path, label or default_label(path))
    if not path.exists() and tracker_runs.is_db_run_spec(path):
        return tracker_runs.load_tracker_run(path, label)
    given_label, label = label, label or default_label(path)
    if path.is_symlink() and not path.exists():
        raise MonitorInputError(f"{path}: a broken symlink or a symlink loop.")
    if not path.exists():
        raise MonitorInputError(f"{path}: no such file or directory.")
    if not path.is_dir():
        raise MonitorInputError(f"{path}: not a file or directory.")
    candidates = [path / TRAINER_STATE_NAME] if (path / TRAINER_STATE_NAME).is_file() else []
    candidates += _checkpoint_states(path)
    if (path / LIVE_LOG_FILE).is_file():
        candidates.append(path / LIVE_LOG_FILE)
    if not candidates:
        if tracker_runs.holds_tracker_run(path):
            return tracker_runs.load_tracker_run(path, given_label)
        raise MonitorInputError(
            f"no {TRAINER_STATE_NAME} in {path} or its checkpoint-* folders; pass an output dir, a checkpoint dir or "
            f"a {TRAINER_STATE_NAME} file."
        )
    tracker_runs.say_trackers_also_there(path)
    # Furthest along wins (the live log while a run goes on, or after it died before saving); on a tie prefer a
    # trainer_state.json, the output dir's own first (written last, at the end of training).
    def rank(history: RunHistory):
        return (history.global_step, history.source.name == TRAINER_STATE_NAME,
                history.source == path / TRAINER_STATE_NAME)

    # A trainer_state.json says its global_step: read that much of each first (msgspec skips the rest without
    # building it), then read in full only the one that wins, instead of every checkpoint's whole history. What the
    # glance cannot tell (no msgspec, no plain global_step, the live log) is read in full, as before.
    loaded, errors, claimed = {}, {}, []
    for index, candidate in enumerate(candidates):
        glance = len(candidates) > 1 and not candidate.name.endswith(".jsonl")
        step = _claimed_global_step(candidate) if glance else None
        if step is not None:
            claimed.append(((step, True, candidate == path / TRAINER_STATE_NAME), index))
            continue
        try:
            reader = read_live_log_history if candidate.name.endswith(".jsonl") else read_state_file
            loaded[index] = reader(candidate, label)
        except MonitorInputError as error:  # a half-written checkpoint: use the others
            errors[index] = str(error)
    best = max((rank(history) for history in loaded.values()), default=None)
    for key, index in sorted(claimed, key=itemgetter(0), reverse=True):  # stable: candidates' order among equals
        if best is not None and key < best:
            break  # neither this one nor any after it can win
        try:
            loaded[index] = read_state_file(candidates[index], label)
            break
        except MonitorInputError as error:
            errors[index] = str(error)
    if not loaded:
        raise MonitorInputError(errors[min(errors)])
    return max((loaded[index] for index in sorted(loaded)), key=rank)


class _Head:
    """The one field of a trainer_state.json that ranks it (a msgspec Struct, made on first use)."""

    struct = None


def _claimed_global_step(path: Path) -> int | None:
    """The `global_step` a trainer_state.json holds, read by msgspec without building the rest, or None when that
    takes a full reading to know (no msgspec, no such number, not JSON msgspec reads, an unreadable file)."""
    if _fast_decoder() is None:
        return None
    import msgspec

    if _Head.struct is None:
        _Head.struct = msgspec.json.Decoder(msgspec.defstruct("Head", [("global_step", object, None)]))
    try:
        text, _ = _stand_ins(path.read_bytes())
        step = None if text is None else _Head.struct.decode(text).global_step  # a NaN one is a stand-in string
    except Exception:  # not an object, not JSON, unreadable: the full reading says why
        return None
    if (type(step) is int or type(step) is float) and abs(step) < _LARGEST_STEP:
        return int(step)
    return None


def expand_runs(patterns: list[str]) -> list[str]:
    runs = []
    for pattern in patterns:
        if any(char in pattern for char in "*?[") and not os.path.exists(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise MonitorInputError(f"{pattern}: the pattern matches nothing.")
            runs.extend(matches)
        else:
            runs.append(pattern)
    return runs


def load_runs(paths: list[str], labels: list[str] | None, show_progress: bool) -> tuple[list[RunHistory], list[str]]:
    runs, errors = [], []
    progress = Progress(len(paths), show_progress and len(paths) >= 4, "reading runs")
    for index, path in enumerate(paths):
        try:
            runs.append(load_run(path, labels[index] if labels else None))
        except MonitorInputError as error:
            errors.append(str(error))
        progress()
    progress.close()
    return runs, errors

