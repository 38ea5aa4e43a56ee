"""`hf-trainkit monitor` on hostile input: mutated corpus files (fuzzed), extreme numbers, odd keys, odd paths.
Every case ends in a one-line error (exit 2) or in plots that skip what they cannot draw; never a traceback."""

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_trainkit.commands.monitor import main as monitor_main

from .test_monitor import CORPUS_FILES, needs_corpus


SMALL_CORPUS = sorted((p for p in CORPUS_FILES if p.stat().st_size < 60_000), key=lambda p: p.name)


def write_state(path: Path, data, raw: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(raw if raw is not None else json.dumps(data))
    return path


def run_monitor(*argv) -> tuple[int, str]:
    """monitor's main in this process (a traceback fails the test); its exit code and what it printed to stderr."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = monitor_main([*map(str, argv), "--no-progress"])
    return code, err.getvalue()


def assert_one_line_errors(code: int, err: str):
    assert code in (0, 2)
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("hf-trainkit monitor:") for line in lines), err[-2000:]
    if code == 2:
        assert lines


EXTREMES = [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 5e-324, 10 ** 400, -(10 ** 400), True, None,
            "text", [1, 2], {"a": 1}]


@st.composite
def mutated_state(draw):
    source = draw(st.sampled_from(SMALL_CORPUS))
    try:
        data = json.loads(source.read_text())
    except ValueError:  # the Git LFS pointer: fuzz a minimal state instead
        data = {"global_step": 3, "log_history": [{"step": 1, "loss": 1.0}]}
    history = data.get("log_history") or [{"step": 1, "loss": 1.0}]
    data["log_history"] = history = [dict(e) if isinstance(e, dict) else e for e in history]
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["value", "step", "global_step", "all_nan", "key", "entry", "epoch"]))
        index = draw(st.integers(0, len(history) - 1))
        entry = history[index] if isinstance(history[index], dict) else {}
        value = draw(st.sampled_from(EXTREMES))
        if kind == "value" and entry:
            entry[draw(st.sampled_from(sorted(entry)))] = value
        elif kind == "step":
            entry["step"] = value
        elif kind == "epoch":
            entry["epoch"] = value
        elif kind == "global_step":
            data["global_step"] = value
        elif kind == "all_nan":
            key = draw(st.sampled_from(sorted({k for e in history if isinstance(e, dict) for k in e}) or ["loss"]))
            for item in history:
                if isinstance(item, dict):
                    item[key] = float("nan")
        elif kind == "key":
            entry[draw(st.sampled_from(["x" * 300, "a\x00b", "eval_\u2603/\U0001F600", "../../etc", "", " "]))] = 1.5
        else:
            history[index] = value
    return data


@needs_corpus
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=mutated_state(), metrics=st.sampled_from([[], ["*"], ["x*", "a*"]]))
def test_fuzzed_corpus_files_give_plots_or_one_line_errors(data, metrics):
    with tempfile.TemporaryDirectory() as folder:
        state = write_state(Path(folder) / "run" / "trainer_state.json", data)
        argv = [state, "--output-dir", Path(folder) / "plots"] + (["--metrics", *metrics] if metrics else [])
        code, err = run_monitor(*argv)
        assert_one_line_errors(code, err)
        if code == 0:
            summary = json.loads((Path(folder) / "plots" / "summary.json").read_text())  # strict JSON
            assert summary["runs"]


def test_deep_nesting_and_giant_integers_are_one_line_errors(tmp_path):
    deep = write_state(tmp_path / "deep" / "trainer_state.json", None,
                       raw='{"global_step": 1, "log_history": ' + "[" * 100_000 + "]" * 100_000 + "}")
    giant = write_state(tmp_path / "giant" / "trainer_state.json", None,
                        raw='{"global_step": 1, "log_history": [{"step": 1, "loss": ' + "9" * 5000 + "}]}")
    for path in (deep, giant):
        code, err = run_monitor(path, "--output-dir", tmp_path / "plots")
        assert_one_line_errors(code, err)
        assert code == 2 and str(path) in err


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e308, -1e308, 10 ** 400])
def test_extreme_numbers_are_plotted_or_skipped(tmp_path, value):
    history = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-3, "grad_norm": 1.0, "epoch": s / 10}
               for s in range(1, 30)]
    history[10]["loss"] = value
    history[11]["grad_norm"] = value
    history.append({"step": 30, "eval_loss": value})
    state = write_state(tmp_path / "run" / "trainer_state.json", {"global_step": value, "log_history": history})
    code, err = run_monitor(state, "--output-dir", tmp_path / "plots", "--log-y", "--x", "epoch")
    assert_one_line_errors(code, err)
    assert code == 0 and (tmp_path / "plots" / "training_loss.png").stat().st_size > 0
    summary = json.loads((tmp_path / "plots" / "summary.json").read_text())
    assert summary["runs"][0]["global_step"] == 30  # no usable global_step: the last step logged


def test_all_nan_series_and_odd_metric_keys(tmp_path):
    history = [{"step": s, "loss": float("nan"), "x" * 300: float(s), "a\x00b": 1.0, "rewards/\u2603": 0.5}
               for s in range(1, 20)]
    state = write_state(tmp_path / "run" / "trainer_state.json", {"global_step": 19, "log_history": history})
    code, err = run_monitor(state, "--output-dir", tmp_path / "plots", "--metrics", "*")
    assert_one_line_errors(code, err)
    assert code == 0
    names = [p.name for p in (tmp_path / "plots").iterdir()]
    assert all(len(name.encode()) <= 255 and "\x00" not in name for name in names)
    assert any(name.startswith("metric_x") for name in names)


def test_symlink_loops_and_non_utf8_names(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    code, err = run_monitor(loop, "--output-dir", tmp_path / "plots")
    assert code == 2 and "loop" in err
    assert_one_line_errors(code, err)
    run = tmp_path / "runs"
    (run / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoint-5" / "trainer_state.json").symlink_to(run / "checkpoint-5" / "trainer_state.json")
    code, err = run_monitor(run, "--output-dir", tmp_path / "plots")
    assert_one_line_errors(code, err)
    assert code == 2
    odd = Path(os.fsdecode(bytes(tmp_path / "odd") + b"-\xff\xfe"))
    write_state(odd / "trainer_state.json", {"global_step": 2, "log_history": [{"step": 1, "loss": 1.0},
                                                                              {"step": 2, "loss": 0.5}]})
    code, err = run_monitor(odd, "--output-dir", tmp_path / "plots-odd")
    assert_one_line_errors(code, err)
    assert code == 0 and (tmp_path / "plots-odd" / "report.html").is_file()


def test_output_dir_that_is_a_file_or_unwritable_is_one_line(tmp_path):
    state = write_state(tmp_path / "run" / "trainer_state.json",
                        {"global_step": 2, "log_history": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]})
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for target in (a_file, a_file / "below", Path("/proc/hf-trainkit-cannot-write-here")):
        code, err = run_monitor(state, "--output-dir", target)
        assert code == 2 and "--output-dir" in err
        assert_one_line_errors(code, err)


def test_the_console_command_never_shows_a_traceback(tmp_path):
    """The same through the real entry point, with a random mutation of every small corpus file at once."""
    rng = random.Random(11)
    runs = []
    for index, source in enumerate(SMALL_CORPUS):
        try:
            data = json.loads(source.read_text())
        except ValueError:
            continue
        for entry in data.get("log_history") or []:
            for key in list(entry):
                if rng.random() < 0.1:
                    entry[key] = rng.choice(EXTREMES[:8])
        runs.append(write_state(tmp_path / f"r{index}" / "trainer_state.json", data))
    done = subprocess.run([sys.executable, "-m", "hf_trainkit.monitor", *map(str, runs), "--output-dir",
                           str(tmp_path / "plots"), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 2) and "Traceback" not in done.stderr, done.stderr[-3000:]
