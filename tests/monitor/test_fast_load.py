"""The monitor's fast reading (msgspec instead of Python's json, columns instead of a loop per value) gives exactly
what the reading it replaced gave: the same objects from the JSON, the same series, summary and state, in the same
order, on the corpus (../shared/corpus) and on histories built to hit every odd case."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from hf_trainkit.monitor import load
from hf_trainkit.monitor.load import (_LARGEST_FLOAT, _LARGEST_STEP, _NOT_METRICS, KEY_ALIASES, RunHistory, Series,
                                      _number, json_loads, load_run, parse_state)
from hf_trainkit.monitor.summary import summarize


ROOT = Path(__file__).resolve().parents[2]
CORPUS_FILES = sorted((ROOT.parent / "shared" / "corpus").glob("*.json"))
needs_corpus = pytest.mark.skipif(not CORPUS_FILES, reason="../shared/corpus is not beside this checkout")
msgspec = pytest.importorskip("msgspec")


def reference_parse_state(data, source: Path, label: str) -> RunHistory:
    """`parse_state` as it was before the columns (one loop over every entry and value), kept here as the yardstick."""
    history = data["log_history"]
    run = RunHistory(label=label, source=source, state={k: v for k, v in data.items() if k != "log_history"})
    tables = {False: run.train, True: run.eval}
    for index, entry in enumerate(history):
        if type(entry) is not dict:
            continue
        step = entry.get("step")
        if (type(step) is not int and type(step) is not float) or not -_LARGEST_STEP < step < _LARGEST_STEP:
            step = index
        epoch = entry.get("epoch")
        if (type(epoch) is not float and type(epoch) is not int) or not -_LARGEST_STEP < epoch < _LARGEST_STEP:
            epoch = None
        if "train_runtime" in entry or "train_samples_per_second" in entry:
            for key, value in entry.items():
                number = _number(value)
                if number is not None and key not in _NOT_METRICS:
                    run.summary[key] = number
            continue
        table = tables[any(key[:5] in ("eval_", "eval/") for key in entry)]
        for key, value in entry.items():
            kind = type(value)
            if (kind is float or kind is int) and key not in _NOT_METRICS:
                if kind is int and not -_LARGEST_FLOAT < value < _LARGEST_FLOAT:
                    value = math.inf if value > 0 else -math.inf
                table.setdefault(key, Series()).append(step, value, epoch)
    for table in tables.values():
        for old, new in KEY_ALIASES.items():
            if old in table and new not in table:
                table[new] = table.pop(old)
    return run


def same(a, b) -> bool:
    """Equal, NaN equal to NaN, types and dict order included (1 and 1.0 differ)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def records(run: RunHistory) -> dict:
    def table(t):
        return {k: [list(s.steps), list(s.values), list(s.epochs)] for k, s in t.items()}
    return {"train": table(run.train), "eval": table(run.eval), "summary": run.summary, "state": run.state,
            "label": run.label, "source": str(run.source)}


def assert_same_run(fast: RunHistory, reference: RunHistory):
    a, b = records(fast), records(reference)
    for part in a:
        assert same(a[part], b[part]), part


# --- the JSON ------------------------------------------------------------------------------------------------------

@needs_corpus
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name[:60])
def test_json_loads_gives_what_python_json_gives_on_the_corpus(path):
    assert_same_outcome(path.read_bytes())


TEXTS = [
    b'{"log_history": [{"loss": NaN, "grad_norm": Infinity, "x": -Infinity, "step": 1}], "best_metric": NaN}',
    b'{"a": [NaN, [Infinity, {"b": -Infinity}]], "c": "NaN", "d": "Infinity in words"}',
    b'{"a": "a NaN inside a string", "b": NaN}',  # a literal in a string: Python's json decides
    b'{"a": "\\u0000n", "b": NaN}',  # the stand-in's text itself: Python's json decides
    b'{NaN: 1}', b'{"a": NaN, Infinity: 2}',  # invalid: the same error
    b'[123456789012345678901234567890, -9223372036854775809, 18446744073709551616]',  # ints of any size
    b'[1e400, -1e400, 1e-400, 5e-324, 0.1, 1.0000000000000002, -0.0, -0]',
    b'["\\ud800"]', b'["\\u00e9\\n\\"", "\xc3\xa9"]', b'\xef\xbb\xbf{"a": 1}', b'["\xff"]',
    b'{"a": 1, "a": 2}', b'[1,]', b'[01]', b'[1] x', b'[' + b'9' * 5000 + b']', b'', b'  [true, false, null]  ',
]


def assert_same_outcome(text: bytes):
    try:
        expected = json.loads(text)
    except Exception as error:  # noqa: BLE001
        with pytest.raises(type(error)) as raised:
            json_loads(text)
        assert str(raised.value) == str(error)
    else:
        assert same(json_loads(text), expected)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_json_loads_gives_the_same_objects_or_the_same_error(text):
    assert_same_outcome(text)


def test_json_loads_reads_nan_and_infinity_without_python_json(monkeypatch):
    # The fast path itself, not a fallback: a trainer_state.json with NaN/Infinity is read by msgspec.
    text = b'{"log_history": [{"loss": NaN, "grad_norm": Infinity, "step": 1}], "best_metric": -Infinity}'

    def refuse(*args, **kwargs):
        raise AssertionError("Python's json was called")

    monkeypatch.setattr(load.json, "loads", refuse)
    data = json_loads(text)
    assert math.isnan(data["log_history"][0]["loss"]) and data["log_history"][0]["grad_norm"] == math.inf
    assert data["best_metric"] == -math.inf


# --- the series --------------------------------------------------------------------------------------------------

@needs_corpus
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name[:60])
def test_load_run_gives_todays_records_and_summary_on_the_corpus(path, monkeypatch):
    try:
        expected = reference_parse_state(json.loads(path.read_bytes()), path, "run")
    except ValueError:  # not JSON (a Git LFS pointer ...): the same one-line error either way
        with pytest.raises(load.MonitorInputError) as fast:
            load_run(path, "run")
        monkeypatch.setattr(load, "_fast_decoder", lambda: None)
        with pytest.raises(load.MonitorInputError) as stdlib:
            load_run(path, "run")
        assert str(fast.value) == str(stdlib.value)
        return
    fast = load_run(path, "run")
    assert_same_run(fast, expected)
    with monkeypatch.context() as patched:
        patched.setattr(load, "_fast_decoder", lambda: None)
        assert_same_run(load_run(path, "run"), expected)  # the stdlib path
    assert same(summarize(fast), summarize(expected))


def _odd_value(rng: random.Random):
    return rng.choice([0.5, -2.25, 3, 0, 10 ** 400, -10 ** 400, 2 ** 53, True, False, None, "1.5", "NaN",
                       math.nan, math.inf, -math.inf, [1.0], {"a": 1.0}, 1e308, 1, 7.0])


def _odd_step(rng: random.Random, step: int):
    return rng.choice([step, step, float(step), None, "3", True, math.nan, math.inf, 2 ** 53, -2 ** 53 + 1,
                       2 ** 53 - 1, 10 ** 400, -5])


def _history(rng: random.Random, entries: int) -> list:
    """Stretches of entries with the same keys (the columns' case) and odd values, steps and epochs anywhere."""
    history, step = [], 0
    while len(history) < entries:
        keys = rng.sample(["loss", "reward", "lr", "learning_rate", "eval_loss", "eval/acc", "kl", "x/y", "_time",
                           "step", "epoch", "train_runtime", "train_loss"], rng.randint(0, 6))
        odd = rng.random() < 0.5
        for _ in range(rng.choice([1, 2, 7, 8, 9, 40])):
            step += 1
            entry = {}
            for key in keys:
                if key == "step":
                    entry[key] = _odd_step(rng, step) if odd and rng.random() < 0.2 else step
                elif key == "epoch":
                    entry[key] = _odd_step(rng, step) if odd and rng.random() < 0.2 else step / 100
                else:
                    entry[key] = _odd_value(rng) if odd and rng.random() < 0.3 else rng.random()
            history.append(entry)
        if rng.random() < 0.05:
            history.append(rng.choice([None, 3, "entry", [1, 2]]))
    return history


@pytest.mark.parametrize("seed", range(40))
def test_columns_give_what_the_loop_per_entry_gave(seed):
    rng = random.Random(seed)
    data = {"log_history": _history(rng, rng.choice([10, 100, 400])), "global_step": 5, "epoch": 0.5}
    run = parse_state(data, Path("x"), "run")
    assert_same_run(run, reference_parse_state(data, Path("x"), "run"))
    # last_epoch as it was: the max of every train epoch logged, else the state's
    epochs = [e for series in run.train.values() for e in series.epochs if e is not None]
    assert same(run.last_epoch(), max(epochs) if epochs else 0.5)


def test_series_are_created_in_the_order_the_entries_meet_them():
    # `a` holds a number only from the third entry on, `b` from the first: b comes first, as entry by entry.
    history = [{"a": "n/a", "b": 1.0, "step": i} for i in range(2)] + [{"a": 2.0, "b": 3.0, "step": 2}]
    history *= 5
    run = parse_state({"log_history": history}, Path("x"), "run")
    expected = reference_parse_state({"log_history": history}, Path("x"), "run")
    assert list(run.train) == list(expected.train) == ["b", "a"]


def test_long_stretches_are_read_as_columns(monkeypatch):
    # 1,000 entries with the same keys and one eval entry: the loop per entry sees only the eval entry.
    seen = []
    per_entry = load._parse_entries
    monkeypatch.setattr(load, "_parse_entries", lambda history, start, end, *rest: (
        seen.append(end - start), per_entry(history, start, end, *rest)))
    history = [{"loss": 1.0 / (i + 1), "grad_norm": 1.0, "step": i + 1, "epoch": i / 1000} for i in range(1000)]
    history.append({"eval_loss": 0.5, "step": 1000, "epoch": 1.0})
    run = parse_state({"log_history": history}, Path("x"), "run")
    assert seen == [1]
    assert run.train["loss"].values == [1.0 / (i + 1) for i in range(1000)] and run.eval["eval_loss"].steps == [1000]


def test_a_benchmark_sized_run_gives_todays_records_and_summary(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("monitor_scale", ROOT / "benchmarks" / "monitor_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = bench.write_run(tmp_path / "run", 3000, seed=1) / "trainer_state.json"
    data = json.loads(path.read_text())
    data["log_history"][10]["grad_norm"] = math.inf  # written as the bare literals transformers writes
    data["log_history"][20]["loss"] = math.nan
    data["log_history"][30]["step"] = math.nan
    path.write_text(json.dumps(data))
    expected = reference_parse_state(json.loads(path.read_bytes()), path, "run")
    fast = load_run(path, "run")
    assert_same_run(fast, expected)
    assert same(summarize(fast), summarize(expected))


def test_live_log_fast_path_equals_stdlib(tmp_path, monkeypatch):
    lines = [json.dumps({"_time": 1.0 + i, "loss": math.nan if i == 3 else i / 10, "step": i}) for i in range(20)]
    path = tmp_path / "log_history.jsonl"
    path.write_text("\n".join(lines) + "\nnot json\n" + "\n".join(lines) + "\n" + '{"torn": ')
    fast = load.read_live_log(path)
    monkeypatch.setattr(load, "_fast_decoder", lambda: None)
    assert same(list(fast), list(load.read_live_log(path)))
    assert len(fast[0]) == 40


# --- which of a run folder's files is read -----------------------------------------------------------------------

def reference_load_dir(path: Path, label: str):
    """`load_run` of an output dir as it was: every candidate read in full, the furthest along wins."""
    candidates = [path / "trainer_state.json"] if (path / "trainer_state.json").is_file() else []
    candidates += load._checkpoint_states(path)
    if (path / load.LIVE_LOG_FILE).is_file():
        candidates.append(path / load.LIVE_LOG_FILE)
    loaded, errors = [], []
    for candidate in candidates:
        try:
            reader = load.read_live_log_history if candidate.name.endswith(".jsonl") else load.read_state_file
            loaded.append(reader(candidate, label))
        except load.MonitorInputError as error:
            errors.append(str(error))
    if not loaded:
        raise load.MonitorInputError(errors[0])
    return max(loaded, key=lambda h: (h.global_step, h.source.name == "trainer_state.json",
                                      h.source == path / "trainer_state.json"))


def _state_text(rng: random.Random, steps: int) -> str:
    history = [{"loss": rng.random(), "step": s} for s in range(1, steps + 1)]
    kind = rng.choice(["plain", "plain", "plain", "nan step", "no step", "string step", "nan value", "truncated",
                       "list", "no history", "float step", "big step"])
    state = {"global_step": steps, "log_history": history}
    if kind == "nan step":
        state["global_step"] = math.nan
    elif kind == "no step":
        del state["global_step"]
    elif kind == "string step":
        state["global_step"] = str(steps)
    elif kind == "nan value":
        history[0]["loss"] = math.nan
    elif kind == "list":
        return json.dumps([state])
    elif kind == "no history":
        del state["log_history"]
    elif kind == "float step":
        state["global_step"] = steps + 0.5
    elif kind == "big step":
        state["global_step"] = 2 ** 60
    text = json.dumps(state)
    return text[:len(text) // 2] if kind == "truncated" else text


@pytest.mark.parametrize("seed", range(60))
def test_an_output_dir_gives_the_file_reading_every_file_gave(tmp_path, seed):
    rng = random.Random(seed)
    run = tmp_path / "run"
    run.mkdir()
    if rng.random() < 0.6:
        (run / "trainer_state.json").write_text(_state_text(rng, rng.choice([3, 5, 8])))
    for _ in range(rng.randint(0, 4)):
        step = rng.choice([3, 5, 8, 13])
        (run / f"checkpoint-{step}").mkdir(exist_ok=True)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(_state_text(rng, rng.choice([step, 5])))
    if rng.random() < 0.4:
        (run / "logs").mkdir()
        (run / load.LIVE_LOG_FILE).write_text("".join(json.dumps({"loss": 0.5, "step": s}) + "\n"
                                                      for s in range(1, rng.choice([4, 5, 9, 14]))))
    if not any(run.rglob("*.json*")):
        (run / "trainer_state.json").write_text(_state_text(rng, 2))
    try:
        expected = reference_load_dir(run, "run")
    except load.MonitorInputError as error:
        with pytest.raises(load.MonitorInputError) as raised:
            load_run(run, "run")
        assert str(raised.value) == str(error)
        return
    ours = load_run(run, "run")
    assert ours.source == expected.source
    assert_same_run(ours, expected)


def test_only_the_winning_checkpoint_is_read_in_full(tmp_path, monkeypatch):
    run = tmp_path / "run"
    for step in (100, 200, 300, 400):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        history = [{"loss": 1.0 / s, "step": s} for s in range(1, step + 1)]
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "log_history": history}))
    read = []
    full = load.read_state_file
    monkeypatch.setattr(load, "read_state_file",
                        lambda path, label: (read.append(path.parent.name), full(path, label))[1])
    assert load_run(run).global_step == 400 and read == ["checkpoint-400"]
