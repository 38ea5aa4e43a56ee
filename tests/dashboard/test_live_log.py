"""The live log (LiveLogCallback): every Trainer.log entry as a JSON line, read by the monitor, right after a resume."""

import json

from hf_trainkit.callbacks import LiveLogCallback, reconcile_live_log
from hf_trainkit.monitor.load import LIVE_LOG_FILE, TIME_KEY, load_run, read_live_log


def _entries(out):
    entries, _ = read_live_log(out / LIVE_LOG_FILE)
    return [{k: v for k, v in e.items() if k != TIME_KEY} for e in entries]


def test_every_log_is_recorded_and_a_resume_from_an_older_checkpoint_sets_the_rest_aside(make_trainer, tmp_path):
    trainer = make_trainer("psr", callbacks=[LiveLogCallback()], save_strategy="steps", save_steps=2, max_steps=4)
    trainer.train()
    out = tmp_path / "run-psr"
    entries = _entries(out)
    assert json.dumps(entries) == json.dumps(trainer.state.log_history)  # the same dicts, the summary included
    assert [e["step"] for e in entries if "reward" in e] == [1, 2, 3, 4]
    assert all(TIME_KEY in e for e in read_live_log(out / LIVE_LOG_FILE)[0])

    # Resume from the older checkpoint-2: steps 3-4 are trained again, never recorded twice.
    resumed = make_trainer("psr", callbacks=[LiveLogCallback()], save_strategy="steps", save_steps=2, max_steps=4)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    entries = _entries(out)
    assert [e["step"] for e in entries if "reward" in e] == [1, 2, 3, 4]
    assert json.dumps(entries) == json.dumps(resumed.state.log_history)
    aside = list((out / "logs" / "superseded").glob("*log_history.jsonl"))
    assert len(aside) == 1 and len(read_live_log(aside[0])[0]) == 5  # the first timeline, whole


def test_reconcile_keeps_a_matching_file_and_sets_aside_another_timeline(tmp_path):
    history = [{"loss": 0.5, "step": s} for s in (1, 2, 3)]
    path = tmp_path / LIVE_LOG_FILE
    path.parent.mkdir()
    path.write_text("".join(json.dumps({TIME_KEY: 1.0, **e}) + "\n" for e in history[:3]) + '{"loss": 0.1, "st')
    assert reconcile_live_log(tmp_path, history) is None  # same entries (a torn last line is no entry)
    longer = history + [{"loss": 0.4, "step": 4}, {"loss": float("nan"), "step": 5}]
    path.write_text("".join(json.dumps(e) + "\n" for e in longer))
    moved = reconcile_live_log(tmp_path, history[:2])
    assert moved is not None and moved.parent == path.parent / "superseded"
    assert [e["step"] for e in read_live_log(path)[0]] == [1, 2]
    assert reconcile_live_log(tmp_path, []) is not None and path.read_text() == ""  # a fresh start


def test_read_live_log_from_an_offset_leaves_a_partial_line_for_later(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 1.0}\nnot json\n[1, 2]\n{"step": 2, "loss": NaN}\n{"step": 3')
    entries, offset = read_live_log(path)
    assert [e["step"] for e in entries] == [1, 2]
    with open(path, "ab") as handle:
        handle.write(b', "loss": 0.5}\n')
    more, end = read_live_log(path, offset)
    assert more == [{"step": 3, "loss": 0.5}] and end == path.stat().st_size
    assert read_live_log(path, end) == ([], end)


def test_monitor_reads_a_run_that_died_before_its_first_save(tmp_path):
    path = tmp_path / LIVE_LOG_FILE
    path.parent.mkdir()
    path.write_text("".join(json.dumps({TIME_KEY: 100.0 + s, "step": s, "epoch": s / 10, "reward": s / 10,
                                        "loss": 0.0}) + "\n" for s in range(1, 8)))
    run = load_run(tmp_path)
    assert run.global_step == 7 and run.train["reward"].steps == [1, 2, 3, 4, 5, 6, 7]
    assert TIME_KEY not in run.train
    # A trainer_state.json that is further along wins; one at the same step too (it is written at the end).
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 7, "log_history": [
        {"step": 7, "reward": 0.7, "loss": 0.0}]}))
    assert load_run(tmp_path).source.name == "trainer_state.json"
