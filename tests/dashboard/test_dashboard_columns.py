"""The dashboard reads a log's entries as columns (issue 35): exactly the columns the reading entry by entry gave
(kept here as the yardstick), in the same order, on odd histories and on the corpus."""

import math
import random
from array import array

import pytest

from hf_trainkit.dashboard import data
from hf_trainkit.dashboard.data import STEP_KEYS, Columns, _axis, append_entries
from hf_trainkit.monitor.load import json_loads

from ..monitor.test_fast_load import CORPUS_FILES, _history


def reference_append_entries(columns: Columns, entries) -> Columns:
    """`append_entries` as it was before the columns, one entry and one value at a time."""
    x, e, t, series = columns.x, columns.e, columns.t, columns.series
    index = len(x)
    for entry in entries:
        if type(entry) is not dict:
            entry = {}
        step = entry.get("step")
        x.append(_axis(step) if step is not None else float(index))
        e.append(_axis(entry.get("epoch")))
        t.append(_axis(entry.get("_time")))
        if "train_runtime" not in entry:
            for key, value in entry.items():
                kind = type(value)
                if (kind is not float and kind is not int) or key in STEP_KEYS:
                    continue
                column = series.get(key)
                if column is None:
                    column = series[key] = (array("q"), array("d"))
                column[0].append(index)
                column[1].append(value if kind is float else _axis(value) if -2 ** 53 < value < 2 ** 53
                                 else (math.inf if value > 0 else -math.inf))
        index += 1
    return columns


def _floats(values) -> list:
    return [repr(v) for v in values]  # NaN equal to NaN, -0.0 apart from 0.0


def assert_same_columns(ours: Columns, expected: Columns):
    assert _floats(ours.x) == _floats(expected.x)
    assert _floats(ours.e) == _floats(expected.e) and _floats(ours.t) == _floats(expected.t)
    assert list(ours.series) == list(expected.series)
    for key, (rows, values) in expected.series.items():
        assert list(ours.series[key][0]) == list(rows), key
        assert _floats(ours.series[key][1]) == _floats(values), key


@pytest.mark.parametrize("seed", range(40))
def test_columns_give_what_the_reading_entry_by_entry_gave(seed):
    rng = random.Random(seed)
    entries = _history(rng, rng.choice([10, 100, 400]))
    split = rng.randrange(len(entries) + 1)  # read in two polls, as a live log is
    ours = append_entries(append_entries(Columns(), entries[:split]), entries[split:])
    assert_same_columns(ours, reference_append_entries(Columns(), entries))


@pytest.mark.skipif(not CORPUS_FILES, reason="../shared/corpus is not beside this checkout")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name[:60])
def test_columns_of_the_corpus_are_todays(path):
    try:
        history = json_loads(path.read_bytes())["log_history"]
    except (ValueError, KeyError, TypeError):
        pytest.skip("not a trainer_state.json")
    assert_same_columns(append_entries(Columns(), history), reference_append_entries(Columns(), history))


def test_long_stretches_are_read_as_columns(monkeypatch):
    seen = []
    rows = data._append_rows
    monkeypatch.setattr(data, "_append_rows", lambda columns, entries, start, end: (
        seen.append(end - start), rows(columns, entries, start, end)))
    entries = [{"loss": 1.0 / (i + 1), "reward": i / 10, "step": i + 1, "_time": 5.0 + i} for i in range(1000)]
    entries.append({"eval_loss": 0.5, "step": 1000})
    columns = append_entries(Columns(), entries)
    assert seen == [1] and len(columns) == 1001 and list(columns.series["eval_loss"][0]) == [1000]
    assert list(columns.series["reward"][1]) == [i / 10 for i in range(1000)]
