"""`hf-trainkit monitor` on real trainer_state.json files (../shared/corpus) and on files written here."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_trainkit.monitor import MonitorInputError, load_run
from hf_trainkit.commands.monitor import main as monitor_main
from hf_trainkit.monitor.grouping import group_runs
from hf_trainkit.monitor.plots import decimate
from hf_trainkit.monitor.summary import summarize


ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []
LFS_POINTERS = {p for p in CORPUS_FILES if p.read_bytes().startswith(b"version https://git-lfs")}
needs_corpus = pytest.mark.skipif(not CORPUS_FILES, reason="../shared/corpus is not beside this checkout")


def run_monitor(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "hf_trainkit.monitor", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout)


def write_state(path: Path, history, **top):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"global_step": top.pop("global_step", len(history)), "log_history": history, **top}))
    return path


def loss_history(n, start=2.0, eval_every=0):
    history = []
    for step in range(1, n + 1):
        history.append({"step": step, "epoch": step / n, "loss": start * math.exp(-step / 30) + 0.1,
                        "learning_rate": 1e-4 * (1 - step / n), "grad_norm": 1.0})
        if eval_every and step % eval_every == 0:
            history.append({"step": step, "epoch": step / n, "eval_loss": 0.5 + abs(step - n / 2) / n})
    history.append({"step": n, "epoch": 1.0, "train_runtime": 12.5, "train_loss": 0.4})
    return history


@needs_corpus
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name[:60])
def test_every_corpus_file_loads_and_summarises(path):
    if path in LFS_POINTERS:
        with pytest.raises(MonitorInputError, match="a Git LFS pointer, not the JSON itself"):
            load_run(path)
        return
    raw = json.loads(path.read_text())
    run = load_run(path)
    summary = summarize(run)
    # Independent reading of the train losses: entries with a numeric 'loss' and no eval_ key.
    losses = [e["loss"] for e in raw["log_history"]
              if isinstance(e.get("loss"), (int, float)) and not any(k.startswith("eval_") for k in e)
              and "train_runtime" not in e]
    finite = [v for v in losses if math.isfinite(v)]
    if finite:
        assert summary["loss"]["first"] == finite[0]
        assert summary["loss"]["final"] == finite[-1]
        assert summary["loss"]["min"] == min(finite)
    assert summary["diagnosis"]["verdict"] in (
        "converged", "still improving", "plateau", "overfitting", "unstable", "collapsed", "diverged", "too short")


@needs_corpus
def test_whole_corpus_compares_and_reports_the_bad_file(tmp_path):
    result = run_monitor(*CORPUS_FILES, "--output-dir", tmp_path, "--no-progress")
    assert result.returncode == (2 if LFS_POINTERS else 0)
    for pointer in LFS_POINTERS:
        assert f"{pointer}: a Git LFS pointer" in result.stderr
    assert "Traceback" not in result.stderr
    for name in ("training_loss.png", "learning_rate.png", "gradient_norm.png", "rewards.png", "eval_loss.png",
                 "eval_metrics.png", "summary.txt", "summary.json", "report.html"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert len(summary["runs"]) == len(CORPUS_FILES) - len(LFS_POINTERS)
    assert [row["rank"] for row in summary["ranking"]] == list(range(1, len(summary["runs"]) + 1))


@needs_corpus
@pytest.mark.parametrize("name,expected", [
    ("alexchilton__CAS_NLP_MODULE4_GRPO__lara_output_4090_wordle-grpo_checkpoint-400_trainer_state.json",
     {"rewards.png", "diagnostics.png"}),
    ("ByErenOzer__Whisper_Finetune__trainer_state.json", {"eval_loss.png", "eval_metrics.png", "diagnostics.png"}),
])
def test_single_corpus_run(tmp_path, name, expected):
    assert monitor_main([str(CORPUS / name), "--output-dir", str(tmp_path), "--no-progress"]) == 0
    written = {p.name for p in tmp_path.iterdir()}
    assert expected <= written
    assert {"training_loss.png", "summary.txt", "summary.json", "report.html"} <= written


def test_rl_verdict_is_based_on_the_reward(tmp_path):
    history = [{"step": s, "loss": 0.0, "reward": 0.1 + 0.8 * (1 - math.exp(-s / 15)), "psr/positive_ratio": 0.5,
                "psr/avg_reward": 1.0} for s in range(1, 101)]
    state = write_state(tmp_path / "run" / "trainer_state.json", history)
    assert monitor_main([str(state), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["runs"][0]
    assert (summary["monitored"]["key"], summary["monitored"]["mode"]) == ("reward", "max")
    assert summary["diagnosis"]["verdict"] == "converged"
    assert (tmp_path / "out" / "mode_metrics.png").exists()


def test_output_dir_uses_the_newest_complete_state(tmp_path):
    run = tmp_path / "run"
    write_state(run / "trainer_state.json", loss_history(10)[:10], global_step=10)
    write_state(run / "checkpoint-20" / "trainer_state.json", loss_history(20)[:20], global_step=20)
    (run / "checkpoint-30").mkdir()
    (run / "checkpoint-30" / "trainer_state.json").write_text('{"global_step": 30, "log_hist')  # half-written
    loaded = load_run(run)
    assert loaded.global_step == 20 and loaded.source == run / "checkpoint-20" / "trainer_state.json"
    assert loaded.label == "run"


def test_eval_and_summary_are_separated(tmp_path):
    history = loss_history(60, eval_every=10)
    history.append({"step": 60, "eval_other_loss": 0.3, "eval_other_accuracy": 0.9, "epoch": 1.0})
    run = load_run(write_state(tmp_path / "trainer_state.json", history))
    assert len(run.train["loss"]) == 60
    assert len(run.eval["eval_loss"]) == 6
    assert run.eval["eval_other_accuracy"].values == [0.9]
    assert run.summary["train_runtime"] == 12.5 and "loss" not in run.eval
    summary = summarize(run)
    assert summary["runtime_seconds"] == 12.5
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert summary["loss_reduction_percent"] == pytest.approx(100 * (losses[0] - losses[-1]) / losses[0])


def test_tolerates_odd_values(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text('{"log_history": [{"step": 1, "loss": NaN, "lr": 0.1, "remaining_time": "59h"},'
                    '{"step": 2, "loss": Infinity, "grad_norm": null}, {"step": 3, "loss": 1}, "junk"]}')
    run = load_run(path)
    assert run.train["learning_rate"].values == [0.1]
    assert run.train["loss"].finite() == ([3.0], [1.0])
    assert "remaining_time" not in run.train and "grad_norm" not in run.train


@pytest.mark.parametrize("content,message", [
    (None, "no such file or directory"),
    ("<dir>", "no trainer_state.json in"),
    ("", "empty file"),
    ('{"log_history": [{"loss"', "not valid JSON (line 1 column"),
    ('{"global_step": 3}', "no 'log_history' list"),
    ("[1, 2]", "top level is a list"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, content, message):
    if content is None:
        target = tmp_path / "missing"
    elif content == "<dir>":
        target = tmp_path
    else:
        target = tmp_path / "trainer_state.json"
        target.write_text(content)
    result = run_monitor(target, "--output-dir", tmp_path / "out")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_one_bad_run_does_not_stop_the_others(tmp_path):
    good = write_state(tmp_path / "good" / "trainer_state.json", loss_history(30))
    result = run_monitor(good, tmp_path / "nope", "--output-dir", tmp_path / "out", "--labels", "A", "B")
    assert result.returncode == 2
    assert "nope: no such file or directory" in result.stderr
    assert (tmp_path / "out" / "training_loss.png").exists()


def test_label_count_mismatch(tmp_path):
    good = write_state(tmp_path / "good" / "trainer_state.json", loss_history(30))
    result = run_monitor(good, "--labels", "A", "B", "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and "--labels: 2 labels for 1 runs" in result.stderr


def test_compare_with_globs_labels_and_ranking(tmp_path):
    for name, start in (("a-2025", 2.0), ("b-2025", 1.0), ("c-2024", 3.0)):
        write_state(tmp_path / "runs" / name / "trainer_state.json", loss_history(40, start=start))
    out = tmp_path / "cmp"
    assert monitor_main([str(tmp_path / "runs" / "*-2025"), "--output-dir", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["a-2025", "b-2025"]
    assert [r["label"] for r in summary["ranking"]] == ["b-2025", "a-2025"]  # lower final loss first
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3 and "http://" not in report and "https://" not in report
    assert "ranking" in (out / "summary.txt").read_text()


def test_group_by_seeds_gives_mean_and_band(tmp_path):
    runs = []
    for seed, offset in ((1, 0.0), (2, 0.2), (3, 0.4)):
        history = [{"step": s, "loss": 1.0 + offset - s * 0.01} for s in range(1, 21)]
        runs.append(load_run(write_state(tmp_path / f"lr1e-4-seed{seed}" / "trainer_state.json", history)))
    runs.append(load_run(write_state(tmp_path / "other" / "trainer_state.json", [{"step": 1, "loss": 5.0}])))
    grouped = group_runs(runs, r"(.*)-seed\d+")
    assert [g.label for g in grouped] == ["lr1e-4 (n=3)", "other"]
    loss = grouped[0].train["loss"]
    assert loss.values[0] == pytest.approx((0.99 + 1.19 + 1.39) / 3)
    assert loss.low[0] == pytest.approx(0.99) and loss.high[0] == pytest.approx(1.39)
    out = tmp_path / "out"
    argv = [*(str(r.source) for r in runs[:3]), "--labels", "lr1e-4-seed1", "lr1e-4-seed2", "lr1e-4-seed3",
            "--group-by", r"(.*)-seed\d+", "--output-dir", str(out), "--no-progress"]
    assert monitor_main(argv) == 0 and (out / "training_loss.png").exists()


def test_decimation_keeps_extremes():
    xs = list(range(100_000))
    ys = [math.sin(x / 1000) for x in xs]
    ys[54_321] = 50.0
    dx, dy = decimate(xs, ys, 2000)
    assert len(dx) <= 2100
    assert max(dy) == 50.0 and min(dy) == min(ys)
    assert list(dx) == sorted(dx)


def test_x_axis_smoothing_metrics_and_log_scale(tmp_path):
    history = loss_history(50)
    for entry in history[:-1]:
        entry["rewards/acc/mean"] = 0.5
    state = write_state(tmp_path / "r" / "trainer_state.json", history)
    out = tmp_path / "out"
    assert monitor_main([str(state), "--x", "epoch", "--smooth", "0", "--log-y", "--metrics", "rewards/*",
                         "--output-dir", str(out), "--no-progress"]) == 0
    assert (out / "metric_rewards_acc_mean.png").exists()
    result = run_monitor(state, "--smooth", "1.5")
    assert result.returncode == 2 and "must be in [0, 1)" in result.stderr


def test_watch_survives_half_written_files(tmp_path):
    state = tmp_path / "run" / "trainer_state.json"
    write_state(state, loss_history(10)[:10], global_step=10)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "hf_trainkit.monitor", str(tmp_path / "run"), "--watch", "0.3",
                                "--output-dir", str(out), "--no-progress"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "summary.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        state.write_text('{"global_step": 25, "log_hist')  # the trainer is mid-write
        time.sleep(1.0)
        assert process.poll() is None, "watch mode died on a half-written file"
        write_state(state, loss_history(25)[:25], global_step=25)
        while time.time() < deadline:
            summary = json.loads((out / "summary.json").read_text())
            if summary["runs"][0]["global_step"] == 25:
                break
            time.sleep(0.2)
        assert summary["runs"][0]["global_step"] == 25
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_monitor_imports_no_training_stack():
    code = ("import sys, hf_trainkit.monitor, hf_trainkit.commands.monitor, hf_trainkit.monitor.plots; "
            "print(sorted(m for m in ('torch', 'trl', 'wandb', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_monitor_training_script_forms(tmp_path):
    a = write_state(tmp_path / "a" / "trainer_state.json", loss_history(20))
    b = write_state(tmp_path / "b" / "trainer_state.json", loss_history(20, start=1.0))
    script = ROOT / "scripts" / "monitor_training.py"
    env = {**os.environ}
    single = subprocess.run([sys.executable, script, "--checkpoint-dir", a.parent, "--output-dir", tmp_path / "one"],
                            capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr
    assert (tmp_path / "one" / "training_loss.png").exists()
    compare = subprocess.run([sys.executable, script, "--compare", "--checkpoints", a.parent, b.parent, "--labels",
                              "A", "B", "--output-dir", tmp_path / "two"], capture_output=True, text=True, env=env)
    assert compare.returncode == 0, compare.stderr
    assert [r["label"] for r in json.loads((tmp_path / "two" / "summary.json").read_text())["runs"]] == ["A", "B"]
    cli = subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "monitor", a.parent, "--output-dir",
                          tmp_path / "three"], capture_output=True, text=True, env=env)
    assert cli.returncode == 0 and (tmp_path / "three" / "report.html").exists()


def test_learning_rate_is_drawn_raw_and_identical_schedules_stay_visible(tmp_path):
    """A linear decay to 1e-6 drawn with --smooth 0.9: the line must end at the logged final rate (an EMA of it
    would end many times higher), and two runs with the same schedule must differ in dash and width."""
    from hf_trainkit.monitor.load import load_run
    from hf_trainkit.monitor.plots import FigureWriter, _pick

    steps = list(range(1, 201))
    schedule = [1e-3 * (1 - s / 200) + 1e-6 for s in steps]
    runs = []
    for name in ("a", "b"):
        history = [{"step": s, "loss": 1.0 / s, "learning_rate": lr} for s, lr in zip(steps, schedule)]
        path = tmp_path / name / "trainer_state.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"global_step": 200, "log_history": history}))
        runs.append(load_run(path))
    writer = FigureWriter(runs, tmp_path / "plots", smooth=0.9)
    captured = []
    writer._save = lambda fig, name: captured.append(fig)
    writer.metric_figure("learning_rate.png", "Learning rate", lambda r: _pick(r.train, "learning_rate", ""),
                         schedule=True)
    lines = [line for line in captured[0].axes[0].get_lines() if line.get_label() in ("a", "b")]
    assert len(lines) == 2
    for line in lines:
        assert line.get_ydata()[-1] == schedule[-1] and list(line.get_xdata()) == steps
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    assert lines[0].get_linewidth() > lines[1].get_linewidth()


def test_mode_panels_without_data_say_so(tmp_path):
    from hf_trainkit.monitor.load import load_run
    from hf_trainkit.monitor.plots import FigureWriter

    history = [{"step": s, "loss": -1.0, "reward": s / 10, "psr/positive_ratio": s / 10, "psr/avg_reward": 1.0}
               for s in range(1, 10)]
    path = tmp_path / "psr" / "trainer_state.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"global_step": 9, "log_history": history}))
    writer = FigureWriter([load_run(path)], tmp_path / "plots")
    captured = []
    writer._save = lambda fig, name: captured.append(fig)
    writer.mode_metrics_figure()
    texts = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in captured[0].axes}
    assert texts["PSR positive ratio"] == []
    assert texts["NSR negative ratio"] == ["no data: no run logged nsr/negative_ratio"]
    assert texts["W-REINFORCE positives per negative"] == ["no data: no run logged w_reinforce/pos_neg_ratio"]


def test_runtime_of_a_resumed_run_counts_every_segment(tmp_path):
    from hf_trainkit.monitor.load import load_run
    from hf_trainkit.monitor.summary import format_summary, summarize

    history = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5},
               {"step": 2, "train_runtime": 10.0, "train_loss": 0.7, "total_train_runtime": 25.0,
                "train_segments": 3}]
    path = tmp_path / "run" / "trainer_state.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"global_step": 2, "log_history": history}))
    summary = summarize(load_run(path))
    assert summary["runtime_seconds"] == 25.0 and summary["segments"] == 3
    assert "runtime: 25 s (3 segments)" in format_summary(summary)


def test_rl_ranking_uses_the_final_level_not_the_last_batch_and_no_loss_reduction(tmp_path):
    """A steady 0.6 run whose last batch was lucky (1.0) against a steady 0.8 run whose last was unlucky (0.4): the
    last value would rank them the wrong way round."""
    def history(level, last):
        rewards = [level] * 39 + [last]
        return [{"step": s + 1, "loss": 0.01 * (s % 3), "reward": r} for s, r in enumerate(rewards)]

    for name, level, last in (("lucky", 0.6, 1.0), ("steady", 0.8, 0.4)):
        write_state(tmp_path / name / "trainer_state.json", history(level, last))
    out = tmp_path / "cmp"
    assert monitor_main([str(tmp_path / "lucky"), str(tmp_path / "steady"), "--output-dir", str(out),
                         "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in summary["ranking"]] == ["steady", "lucky"]
    assert summary["ranking"][0]["final"] == pytest.approx((0.8 * 4 + 0.4) / 5)  # the last 10% (at least 5 logs)
    assert summary["ranking"][1]["final"] == pytest.approx((0.6 * 4 + 1.0) / 5)
    assert all("loss_reduction_percent" not in run for run in summary["runs"])
    assert "reduction" not in (out / "summary.txt").read_text()


def test_compare_is_accepted_as_an_alias_that_changes_nothing(tmp_path):
    """`scripts/monitor_training.py --compare` works, so the same flag on `hf-trainkit monitor` must too."""
    for name, start in (("psr", 2.0), ("nsr", 1.0)):
        write_state(tmp_path / name / "trainer_state.json", loss_history(30, start=start))
    outputs = {}
    for flags in ([], ["--compare"]):
        out = tmp_path / ("with" if flags else "without")
        result = subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "monitor", str(tmp_path / "psr"),
                                 str(tmp_path / "nsr"), *flags, "--output-dir", str(out), "--no-progress"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        summary = json.loads((out / "summary.json").read_text())
        outputs[bool(flags)] = (sorted(p.name for p in out.iterdir()), [r["label"] for r in summary["ranking"]])
    assert outputs[True] == outputs[False] and outputs[True][1] == ["nsr", "psr"]


def test_figures_and_report_do_not_mislead(tmp_path, monkeypatch):
    """An RL run's training_loss.png says its loss is no measure of quality; report.html names the last logged value
    and the ranking's final level (the mean of the last 10 % of logs) apart."""
    from hf_trainkit.monitor.plots import FigureWriter

    def history(level, last):
        rewards = [level] * 39 + [last]
        return [{"step": s + 1, "loss": -1.0, "reward": r, "psr/avg_reward": 1.0} for s, r in enumerate(rewards)]

    for name, level, last in (("lucky", 0.6, 1.0), ("steady", 0.8, 0.4)):
        write_state(tmp_path / name / "trainer_state.json", history(level, last))
    write_state(tmp_path / "sft" / "trainer_state.json", loss_history(30))
    titles = {}
    save = FigureWriter._save

    def capture(writer, fig, name):
        titles[(tuple(r.label for r in writer.runs), name)] = [ax.get_title() for ax in fig.axes]
        return save(writer, fig, name)

    monkeypatch.setattr(FigureWriter, "_save", capture)
    out = tmp_path / "cmp"
    assert monitor_main([str(tmp_path / "lucky"), str(tmp_path / "steady"), "--output-dir", str(out),
                         "--no-progress"]) == 0
    assert titles[(("lucky", "steady"), "training_loss.png")] == [
        "Training loss (RL: not a measure of quality; see rewards.png)"]
    assert monitor_main([str(tmp_path / "sft"), "--output-dir", str(tmp_path / "one"), "--no-progress"]) == 0
    assert titles[(("sft",), "training_loss.png")] == ["Training loss"]
    report = (out / "report.html").read_text()
    run_table, ranking = report.split("<h2>Ranking</h2>")
    assert "<th>last logged (reward for RL, else loss)</th>" in run_table and "<th>final</th>" not in report
    assert "<th>final level (mean of last 10 % of logs)</th>" in ranking
    assert "<td>lucky</td>" in run_table and "<td>1</td>" in run_table  # lucky's last logged reward
    assert f"<td>{(0.6 * 4 + 1.0) / 5:.4g}</td>" in ranking  # ... and its final level


@pytest.mark.parametrize("runs", [1, 2])
def test_mode_panel_series_of_one_run_are_told_apart(tmp_path, runs):
    """A run resumed with another --mode logs avg_reward under several prefixes: each series gets its own colour
    (one run) or line style (several runs, the run keeping its colour); before, all were one solid colour."""
    from hf_trainkit.monitor.load import load_run
    from hf_trainkit.monitor.plots import FigureWriter

    loaded = []
    for index in range(runs):
        history = [{"step": s, "loss": 0.0, "reward": 0.5, f"{prefix}/avg_reward": 0.5 + 0.01 * s}
                   for s in range(1, 31) for prefix in ("psr", "nsr", "w_reinforce")]
        loaded.append(load_run(write_state(tmp_path / f"run{index}" / "trainer_state.json", history)))
    writer = FigureWriter(loaded, tmp_path / "plots", smooth=0.0)
    captured = []
    writer._save = lambda fig, name: captured.append(fig)
    writer.mode_metrics_figure()
    ax = captured[0].axes[3]
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == 3 * runs
    looks = {(tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color(),
              line.get_linestyle()) for line in lines}
    assert len(looks) == len(lines)


def test_an_abbreviated_flag_is_refused(tmp_path, capsys):
    write_state(tmp_path / "run" / "trainer_state.json", loss_history(10))
    with pytest.raises(SystemExit) as exit_:
        monitor_main([str(tmp_path / "run"), "--no-prog", "--output-dir", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --no-prog (did you mean --no-progress?)" in capsys.readouterr().err
