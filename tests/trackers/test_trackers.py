"""Runs written by the real trackers (TensorBoard, W&B offline, Trackio) in a tiny real training, read back by
`hf-trainkit monitor`: the same values as trainer_state.json; every N steps for every tracker; bad files as one line.
"""

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("trackio")

from hf_trainkit.cli import main as cli_main  # noqa: E402
from hf_trainkit.monitor import load_run  # noqa: E402
from hf_trainkit.monitor.load import MonitorInputError  # noqa: E402
from hf_trainkit.trackers.names import KeyMap, canonical_key, resumed, rows_to_entries  # noqa: E402
from hf_trainkit.trackers.tensorboard import scalars_to_rows  # noqa: E402

SCRIPT = Path(__file__).with_name("tracker_training.py")


def _train(out: Path, *extra: str) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """12 steps, eval every 4, logged to TensorBoard, W&B (offline) and Trackio at once."""
    return _train(tmp_path_factory.mktemp("trackers") / "run")


@pytest.fixture(scope="module")
def windowed_run(tmp_path_factory):
    """14 steps through EveryNStepsCallback(every_n_steps=4) to the same three trackers."""
    return _train(tmp_path_factory.mktemp("every-n") / "run", "--log-every", "4", "--max-steps", "14")


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    from hf_trainkit.monitor import tracker_runs

    monkeypatch.setattr(tracker_runs, "_TOLD", set())
    monkeypatch.setattr(tracker_runs, "_RENAMES_TOLD", set())


def tracker_paths(run: Path) -> dict:
    return {"tensorboard": next((run / "runs").iterdir()),  # runs/<date>_<host>, transformers' default log dir
            "wandb": next((run / "wandb").glob("offline-run-*")),
            "trackio": run / "trackio" / "trackers-test.db"}


def state_series(run: Path) -> dict:
    """{key: [(step, value), ...]} straight from trainer_state.json (the oracle: no code under test)."""
    series = {}
    for entry in json.loads((run / "trainer_state.json").read_text())["log_history"]:
        if "train_runtime" in entry:
            continue
        for key, value in entry.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                series.setdefault(key, []).append((entry["step"], value))
    return series


@pytest.mark.parametrize("kind", ["tensorboard", "wandb", "trackio"])
def test_each_tracker_reads_as_its_trainer_state_json(logged_run, kind):
    run = load_run(str(tracker_paths(logged_run)[kind]))
    expected = state_series(logged_run)
    got = {**run.train, **run.eval}
    assert set(got) == set(expected)
    for key, points in expected.items():
        assert got[key].steps == [step for step, _ in points], key
        # TensorBoard keeps float32; W&B and Trackio the float64 itself
        tolerance = 1e-6 if kind == "tensorboard" else 0.0
        for value, (_, want) in zip(got[key].values, points):
            assert math.isclose(value, want, rel_tol=tolerance, abs_tol=tolerance * 1e-3), (key, value, want)


def test_monitor_compares_three_trackers_and_says_the_mapping_once(logged_run, tmp_path, capsys):
    paths = tracker_paths(logged_run)
    out = tmp_path / "plots"
    code = cli_main(["monitor", str(paths["tensorboard"]), str(paths["wandb"]), str(paths["trackio"]),
                     "--labels", "TB", "WB", "TR", "--output-dir", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["TB", "WB", "TR"]
    assert (out / "training_loss.png").is_file() and (out / "report.html").is_file()
    assert "Traceback" not in captured.err
    assert captured.err.count("train/loss → loss") == 1


def test_a_folder_holding_several_trackers_is_read_once_and_says_which(logged_run, tmp_path, capsys):
    run = load_run(str(logged_run))  # trainer_state.json is there: it is the one read
    assert run.source.name == "trainer_state.json"
    err = capsys.readouterr().err
    assert "read trainer_state.json (also there: W&B, Trackio, TensorBoard" in err
    bare = tmp_path / "bare"  # the same folder without trainer_state.json nor checkpoints
    shutil.copytree(logged_run, bare, ignore=shutil.ignore_patterns("trainer_state.json", "checkpoint-*"))
    run = load_run(str(bare))
    assert run.source.suffix == ".wandb" and run.label == "bare"
    assert "read the W&B run in" in capsys.readouterr().err


def test_every_n_steps_reaches_every_tracker_as_the_window_mean(windowed_run):
    expected = state_series(windowed_run)
    losses = [value for _, value in expected["loss"]]
    assert len(losses) == 14  # trainer_state.json still has every step
    windows = [losses[0:4], losses[4:8], losses[8:12], losses[12:14]]
    for kind, path in tracker_paths(windowed_run).items():
        run = load_run(str(path))
        assert run.train["loss"].steps == [4, 8, 12, 14], kind
        for value, window in zip(run.train["loss"].values, windows):
            assert math.isclose(value, sum(window) / len(window), rel_tol=1e-6), kind
        assert run.eval["eval_loss"].steps == [step for step, _ in expected["eval_loss"]], kind
        # the learning rate of a window is its last value (a schedule position), not a mean
        lr = [value for _, value in expected["learning_rate"]]
        assert math.isclose(run.train["learning_rate"].values[0], lr[3], rel_tol=1e-6), kind


def _monitor(path, tmp_path, capsys):
    code = cli_main(["monitor", str(path), "--output-dir", str(tmp_path / "plots"), "--no-progress"])
    return code, capsys.readouterr().err


def test_truncated_files_read_what_came_before(logged_run, tmp_path, capsys):
    events = next(tracker_paths(logged_run)["tensorboard"].glob("events.out.tfevents.*"))
    data = events.read_bytes()
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / events.name).write_bytes(data[:-7])  # the last record torn
    code, err = _monitor(tmp_path / "tb", tmp_path, capsys)
    assert code == 0 and "truncated after" in err and "Traceback" not in err
    wandb_file = next(tracker_paths(logged_run)["wandb"].glob("run-*.wandb"))
    raw = wandb_file.read_bytes()
    torn = tmp_path / "offline-run-20250101_000000-abc" / wandb_file.name
    torn.parent.mkdir()
    torn.write_bytes(raw[: len(raw) * 2 // 3])
    code, err = _monitor(torn.parent, tmp_path, capsys)
    assert code == 0 and "torn after" in err and "Traceback" not in err


@pytest.mark.parametrize("name, content, says", [
    ("events.out.tfevents.1.host.1.0", b"not an event file at all" * 20, "not a TensorBoard event file"),
    ("run-abc.wandb", b"garbage" * 50, "not a W&B run file"),
    ("run-abc.wandb", b":W&B\x00\x00\x00" + b"\xff" * 400, "corrupt W&B run file"),
    ("project.db", b"SQLite format 3\x00" + b"\x00" * 200, "not a readable Trackio database"),
    ("project.db", None, "no Trackio run 'nope'"),
])
def test_bad_tracker_files_give_one_line_and_exit_2(tmp_path, capsys, name, content, says):
    path = tmp_path / name
    if content is None:  # a real trackio database, asked for a run it does not hold
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE metrics (id INTEGER PRIMARY KEY, run_id TEXT, timestamp TEXT, "
                           "run_name TEXT, step INTEGER, metrics TEXT)")
        connection.commit()
        connection.close()
        path = Path(f"{path}:nope")
    else:
        path.write_bytes(content)
    code, err = _monitor(path, tmp_path, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in err, err


def test_a_missing_reader_names_the_extra(logged_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)
    with pytest.raises(MonitorInputError, match=r'pip install "hf_trainkit\[tensorboard\]"'):
        load_run(str(tracker_paths(logged_run)["tensorboard"]))


def test_names_map_back_to_trainer_state_names():
    assert [canonical_key(k) for k in ("train/loss", "train/epoch", "eval/loss", "test/acc", "psr/kept_ratio",
                                       "train/rewards/f/mean", "reward")] == [
        "loss", "epoch", "eval_loss", "test_acc", "psr/kept_ratio", "rewards/f/mean", "reward"]


def test_a_resumed_segment_replaces_the_steps_it_logs_again():
    # a first process logged steps 1-5 and died; the resume from checkpoint-3 logs 4-6: 4 and 5 are the new ones
    rows = [{"train/global_step": s, "train/loss": float(s)} for s in (1, 2, 3, 4, 5)]
    rows += [{"train/global_step": s, "train/loss": 10.0 + s} for s in (4, 5, 6)]
    entries = resumed(rows_to_entries(rows, KeyMap()))
    assert [(e["step"], e["loss"]) for e in entries] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0),
                                                         (6, 16.0)]


def test_tensorboard_scalars_split_into_one_row_per_log_call():
    # what TensorBoardCallback writes at an eval step: the train log, the eval log, then the final summary
    scalars = [(4, 0.0, "train/loss", 1.0), (4, 0.0, "train/epoch", 0.1), (4, 0.1, "eval/loss", 2.0),
               (4, 0.1, "train/epoch", 0.1), (4, 0.2, "train/train_runtime", 9.0), (4, 0.2, "train/epoch", 0.1)]
    assert [sorted(k for k in row if not k.startswith("_")) for row in scalars_to_rows(scalars)] == [
        ["train/epoch", "train/global_step", "train/loss"], ["eval/loss", "train/epoch", "train/global_step"],
        ["train/epoch", "train/global_step", "train/train_runtime"]]


@pytest.mark.parametrize("flags", [["--report-to", "tensorboard", "--wandb-every", "3"],  # the older flag: +wandb
                                   ["--report-to", "tensorboard", "wandb", "--log-every", "3"]])
def test_train_script_sends_tensorboard_and_wandb_one_record_every_n_steps(tmp_path, flags):
    out = tmp_path / "nsr"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    script = Path(__file__).parents[2] / "scripts" / "train_grpo.py"
    done = subprocess.run([sys.executable, str(script), "--mode", "nsr", "--output-dir", str(out), "--max-steps", "6",
                           *flags, "--quiet", "--eval-every", "0",
                           "--no-save-checkpoints"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rewards = [value for _, value in state_series(out)["reward"]]
    assert len(rewards) == 6
    for place in ("runs", "wandb"):
        run = load_run(str(out / place))
        assert run.train["reward"].steps == [3, 6], place
        for value, window in zip(run.train["reward"].values, (rewards[:3], rewards[3:])):
            assert math.isclose(value, sum(window) / 3, rel_tol=1e-6, abs_tol=1e-7), place


@pytest.mark.parametrize("kind", ["tensorboard", "wandb", "trackio"])
def test_the_dashboard_shows_a_trackers_run_as_its_trainer_state(logged_run, kind):
    from hf_trainkit.dashboard.runs import RunData, is_run_dir

    path = tracker_paths(logged_run)[kind]
    assert is_run_dir(path)
    run = RunData(path, kind)
    run.load()
    expected = state_series(logged_run)["loss"]
    assert run.columns.steps("loss").tolist() == [step for step, _ in expected]
    assert run.columns.values("loss").tolist() == pytest.approx([value for _, value in expected], rel=1e-6)
