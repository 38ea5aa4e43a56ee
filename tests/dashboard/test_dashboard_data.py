"""The dashboard's pure functions: min/max thinning keeps every spike, a cursor returns only what is new."""

import math
import random

import pytest

from hf_trainkit.dashboard.data import (append_entries, metrics_line, primary_metric, progress, series_from_entries,
                                        since_cursor, thin_indices)


def _plain_bucket_extremes(values, points):
    """The same buckets computed the plain way: for each bucket of equal size, its min and max."""
    buckets = max(1, points // 2)
    size = -(-len(values) // buckets)
    out = []
    for start in range(0, len(values), size):
        chunk = [v for v in values[start:start + size] if math.isfinite(v)]
        if chunk:
            out.append((min(chunk), max(chunk)))
    return out


@pytest.mark.parametrize("n, points", [(10, 100), (1000, 100), (100_001, 1000), (12_345, 77)])
def test_thinning_keeps_each_buckets_min_and_max_and_the_ends(n, points):
    rng = random.Random(n)
    values = [rng.gauss(0, 1) for _ in range(n)]
    for i in rng.sample(range(n), min(5, n)):  # spikes both ways
        values[i] = rng.choice([-1, 1]) * 1e3
    kept = thin_indices(values, points)
    assert kept == sorted(set(kept)) and kept[0] == 0 and kept[-1] == n - 1
    assert len(kept) <= max(points, 2) + 2
    shown = [values[i] for i in kept]
    assert max(shown) == max(values) and min(shown) == min(values)  # no spike lost
    if n > points:
        kept_set = set(shown)
        for low, high in _plain_bucket_extremes(values, points):
            assert low in kept_set and high in kept_set
    else:
        assert kept == list(range(n))


def test_thinning_shows_non_finite_values_and_all_nan_buckets():
    values = [float(i % 7) for i in range(10_000)]
    values[5000] = float("nan")
    values[7000] = float("inf")
    values[100:400] = [float("nan")] * 300
    kept = thin_indices(values, 100)
    assert 5000 in kept and 7000 in kept
    assert any(100 <= i < 400 for i in kept)


def _entries(n, start=1):
    return [{"loss": 1.0 / s, "reward": s / 100, "grad_norm": 0.5, "learning_rate": 1e-3, "step": s, "epoch": s / 10,
             "_time": 1000.0 + s} for s in range(start, start + n)]


def test_cursor_returns_only_new_entries_and_a_new_client_gets_everything_thinned():
    entries = _entries(50)
    columns = series_from_entries(entries)
    first = since_cursor(columns, None, generation=1, client_generation=None, points=1000)
    assert first["reset"] and first["cursor"] == 50 and first["series"]["reward"]["x"] == list(range(1, 51))
    assert set(first["series"]) == {"loss", "reward", "grad_norm", "learning_rate"}
    append_entries(columns, _entries(3, start=51))
    update = since_cursor(columns, 50, generation=1, client_generation=1, points=1000)
    assert not update["reset"] and update["cursor"] == 53
    assert update["series"]["reward"]["x"] == [51, 52, 53] and update["series"]["reward"]["t"] == [1051.0, 1052.0, 1053.0]
    nothing = since_cursor(columns, 53, generation=1, client_generation=1, points=1000)
    assert nothing["series"] == {} and not nothing["reset"]
    # Another generation (the log was set aside on a resume), a cursor past the end, or a long-hidden tab: reset.
    assert since_cursor(columns, 50, generation=2, client_generation=1, points=1000)["reset"]
    assert since_cursor(columns, 60, generation=1, client_generation=1, points=1000)["reset"]
    assert since_cursor(columns, 0, generation=1, client_generation=1, points=20)["reset"]


def test_series_skip_summaries_and_non_numbers_and_json_has_no_nan():
    entries = [{"loss": float("nan"), "step": 1}, {"loss": "x", "flag": True, "step": 2, "eval_loss": 0.3},
               {"train_runtime": 12.0, "train_loss": 0.4, "step": 2}]
    columns = series_from_entries(entries)
    assert set(columns.keys()) == {"loss", "eval_loss"} and columns.column("loss")["x"] == [1]
    out = since_cursor(columns, None, 0, None)
    assert out["cursor"] == 3  # the summary entry counts
    assert out["series"]["loss"]["y"] == [None]


def test_metrics_line_and_progress():
    columns = series_from_entries(_entries(20) + [{"eval_loss": 0.2, "step": 20, "epoch": 2.0}])
    assert primary_metric(columns) == ("reward", "max")
    line = metrics_line(columns, max_steps=100)
    assert line["step"] == 20 and line["is_best"] and line["value"] == 0.2 and line["best"] == 0.2
    assert line["text"].startswith("Step 20/100 | Epoch 2.00 | Reward: 0.2 | Loss: 0.05 | Eval loss: 0.2 | Gap: +0.15")
    assert line["text"].endswith("Best reward: 0.2 ✓")
    assert primary_metric({"loss"}) == ("loss", "min") and primary_metric({"grad_norm"}) is None
    steps, times = list(range(1, 21)), [1000.0 + 2 * s for s in range(1, 21)]
    done = progress(steps, times, max_steps=100)
    assert done["fraction"] == 0.2 and done["seconds_per_step"] == 2.0 and done["eta_seconds"] == 160.0
    assert progress([], [], None)["eta_seconds"] is None


def test_the_dashboard_judges_a_run_as_monitor_does(tmp_path):
    """One model: the dashboard's headline and findings are monitor's verdict and findings on the same curve."""
    import json
    import random

    from hf_trainkit.dashboard.runs import RunData
    from hf_trainkit.monitor.load import load_run
    from hf_trainkit.monitor.summary import summarize

    rng = random.Random(0)
    rate = [0.15 + 0.55 * min(s / 90, 1) - (0.5 * min((s - 90) / 50, 1) if s > 90 else 0) for s in range(200)]
    history = [{"step": s + 1, "loss": 0.0, "reward": sum(rng.random() < p for _ in range(16)) / 16}
               for s, p in enumerate(rate)]
    history += [{"step": s, "eval/mean_reward": 0.5} for s in (50, 100, 150, 200)]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 200, "log_history": history}))
    run = RunData(tmp_path, "run")
    run.refresh()
    page = run.diagnosis()
    summary = summarize(load_run(tmp_path))
    assert page["verdict"] == summary["diagnosis"]["verdict"] == "collapsed"
    assert page["reason"] == summary["diagnosis"]["reason"]
    assert page["eval_metric"] == summary["diagnosis"]["eval_metric"] == "eval/mean_reward"
    assert [f["message"] for f in page["findings"]] == summary["diagnosis"]["findings"]


def test_window_returns_the_zoomed_range_in_detail():
    from hf_trainkit.dashboard.data import window

    columns = series_from_entries(_entries(10_000))
    full = since_cursor(columns, None, 0, None, points=100)["series"]["reward"]
    assert len(full["x"]) < 120  # thinned
    zoomed = window(columns, "reward", "x", 5000, 5050, points=100)
    assert zoomed["x"] == list(range(4999, 5052))  # every point inside, one beyond each end
    assert window(columns, "reward", "e", 500.0, 505.0, points=100)["x"][1:-1] == list(range(5000, 5051))
    assert len(window(columns, "reward", "x", 0, 1e9, points=100)["x"]) < 120
    assert window(columns, "nope", "x", 0, 1)["x"] == [] and window(columns, "reward", "q", 0, 1)["x"] == []
