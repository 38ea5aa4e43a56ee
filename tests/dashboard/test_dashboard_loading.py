"""The dashboard answers as soon as it listens and reads its runs in the background (issue 35): a run still being
read is answered "loading" (the page says so, with no error and no blank page), the runs are read newest first, a
long log in parts, and once read each poll reads only what was appended."""

import json
import os
import threading
import time

import pytest

from hf_trainkit.dashboard import runs as runs_module
from hf_trainkit.dashboard import server as server_module
from hf_trainkit.dashboard.data import series_from_entries
from hf_trainkit.dashboard.runs import RunData
from hf_trainkit.dashboard.server import DashboardServer
from hf_trainkit.monitor.load import LIVE_LOG_FILE

from .test_dashboard_browser import CHROMIUM, DRIVER, wait_for
from .test_dashboard_server import call


def _entries(steps, start=1):
    return [{"_time": 100.0 + s, "loss": 1.0 / s, "reward": s / 1000, "step": s, "epoch": s / 100}
            for s in range(start, start + steps)]


def _write(run, entries):
    path = run / LIVE_LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.writelines(json.dumps(e) + "\n" for e in entries)


@pytest.fixture()
def held(monkeypatch):
    """RunData.load held until the test releases it: what a long log looks like to the page."""
    release, started = threading.Event(), []
    load = RunData.load

    def held_load(self, cancelled=None):
        started.append(self.label)
        release.wait(60)
        load(self, cancelled)

    monkeypatch.setattr(RunData, "load", held_load)
    yield release, started
    release.set()


def test_the_server_answers_while_a_run_is_still_being_read(tmp_path, held, monkeypatch):
    release, _ = held
    monkeypatch.setattr(server_module, "LOADING_WAIT_SECONDS", 0.2)
    run = tmp_path / "run"
    _write(run, _entries(300))
    server = DashboardServer([(str(run), "run")], port=0).start()
    try:
        assert call(server, "GET", "/")[0] == 200
        status, body, _ = call(server, "GET", "/api/data?points=100", token=server.token)
        first = body["runs"][0]
        assert status == 200 and first["loading"] is True and first["series"] == {} and first["cursor"] is None
        assert first["state"]["state"] == "no live status" and first["loaded_fraction"] == 0
        status, details, _ = call(server, "GET", "/api/details?run=0", token=server.token)
        assert status == 200 and details["loading"] is True and details["diagnosis"] is None
        window = call(server, "GET", "/api/window?run=0&keys=loss&from=0&to=10", token=server.token)[1]
        assert window["loading"] is True and window["series"] == {}
        release.set()
        assert server.wait_loaded(30)
        body = call(server, "GET", "/api/data?points=1000", token=server.token)[1]["runs"][0]
        assert body["loading"] is False and body["series"]["loss"]["x"] == list(range(1, 301))
        assert call(server, "GET", "/api/details?run=0", token=server.token)[1]["diagnosis"]["metric"] == "reward"
    finally:
        server.stop()


def test_a_short_run_is_answered_in_full_at_once(tmp_path):
    # The first poll waits (at most LOADING_WAIT_SECONDS) for a run being read: a short run comes in full.
    run = tmp_path / "run"
    _write(run, _entries(30))
    server = DashboardServer([(str(run), "run")], port=0).start()
    try:
        first = call(server, "GET", "/api/data", token=server.token)[1]["runs"][0]
        assert first["loading"] is False and len(first["series"]["reward"]["y"]) == 30
    finally:
        server.stop()


def test_runs_are_read_newest_first(tmp_path, held):
    release, started = held
    folders = []
    for age, name in ((300, "old"), (0, "new"), (100, "middle")):
        folders.append(tmp_path / name)
        _write(folders[-1], _entries(5))
        moment = time.time() - age
        os.utime(folders[-1] / LIVE_LOG_FILE, (moment, moment))
    server = DashboardServer([(str(f), f.name) for f in folders], port=0).start()
    try:
        release.set()
        assert server.wait_loaded(30)
        assert started == ["new", "middle", "old"]
    finally:
        server.stop()


def test_a_long_log_is_read_in_parts_then_only_what_is_appended(tmp_path, monkeypatch):
    entries = _entries(500)
    run = tmp_path / "run"
    _write(run, entries)
    reads = []
    read = runs_module.read_live_log

    def recorded(path, offset=0, limit=None):
        result = read(path, offset, limit)
        reads.append((offset, limit, len(result[0])))
        return result

    monkeypatch.setattr(runs_module, "read_live_log", recorded)
    monkeypatch.setattr(runs_module, "LOAD_CHUNK_BYTES", 4096)
    data = RunData(run, "run")
    data.load()
    size = (run / LIVE_LOG_FILE).stat().st_size
    assert data.loaded.is_set() and data.loaded_fraction == 1.0 and data.total == 500
    assert len(reads) >= size // 4096 and all(limit == 4096 for _, limit, _ in reads)
    assert sum(count for *_, count in reads) == 500  # every line once, none torn at a part's end
    expected = series_from_entries(entries)
    assert list(data.columns.series) == list(expected.series)
    for key, (rows, values) in expected.series.items():
        assert data.columns.series[key][0] == rows and data.columns.series[key][1] == values
    assert data.columns.x == expected.x and data.columns.t == expected.t
    # Then a poll reads only the new line, from where the first reading ended.
    reads.clear()
    _write(run, _entries(1, start=501))
    data.refresh()
    assert reads == [(size, None, 1)] and data.total == 501


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="no chromium/chromedriver")
def test_the_page_says_loading_then_draws_the_run(tmp_path, held):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    release, _ = held
    run = tmp_path / "run"
    _write(run, _entries(500))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    server = DashboardServer([(str(run), "slow")], port=0).start()
    try:
        driver.get(server.url)
        state = wait_for("the run shown as loading", lambda: driver.find_element(
            "css selector", '[data-run="0"] .state').text == "loading", timeout=60)
        assert state and not driver.find_element("id", "main").get_attribute("hidden")
        assert "reading its log" in driver.find_element("css selector", '[data-run="0"] .line').text
        assert "reading 1 of 1 run" in driver.find_element("id", "connection").text
        release.set()
        wait_for("the run's curves", lambda: driver.execute_script(
            "return window.hfDashboard.points()[0].reward") == 500, timeout=60)
        assert driver.find_element("css selector", '[data-run="0"] .state').text != "loading"
        assert "Step 500" in driver.find_element("css selector", '[data-run="0"] .line').text
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        server.stop()
        driver.quit()
