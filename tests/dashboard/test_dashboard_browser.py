"""The dashboard in a real browser (headless Chromium driven by Selenium and Debian's chromium-driver) against a
real running training: the curves grow, Save with a name makes a pinned checkpoint, Stop ends the training after
saving, a wrong token gets the login error, the console stays clean. Screenshots are kept in the test's tmp dir.

Skipped only where no Chromium is installed (`apt-get install -y chromium chromium-driver`; CI installs them).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_trainkit.checkpointing import list_checkpoints


ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "scripts" / "train_grpo.py"
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)

pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="no chromium/chromedriver (apt-get install -y chromium chromium-driver)")


def wait_for(what, condition, timeout=90.0, every=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except Exception as error:  # the page is still building
            last = error
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture()
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1400", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture()
def training(tmp_path):
    out = tmp_path / "live"
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(out), "--max-steps", "5000",
               "--save-steps", "1000", "--quiet", "--no-loss-curve", "--no-diagnostics"]
    with open(tmp_path / "training.log", "w") as log:  # a file, not a pipe: a full pipe would block the training
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=ENV)
        yield out, process
        if process.poll() is None:
            process.kill()
        process.wait()


def text(driver, element_id):
    return driver.find_element("id", element_id).text


def test_watch_save_and_stop_a_running_training_in_the_browser(browser, training, tmp_path):
    from hf_trainkit.dashboard.server import DashboardServer

    out, process = training
    wait_for("the training's first logs", lambda: process.poll() is None and (out / "control" / "status.json").is_file()
             and (out / "logs" / "log_history.jsonl").is_file() and (out / "logs" / "log_history.jsonl").stat().st_size,
             timeout=180)
    server = DashboardServer([(str(out), "psr")], port=0).start()
    try:
        # --- a wrong token: the login error, nothing else -----------------------------------------------------------
        browser.get(server.base_url + "/?token=wrong")
        wait_for("the login error", lambda: "Login failed" in text(browser, "login-error"))
        assert not browser.find_element("id", "main").is_displayed()
        browser.save_screenshot(str(tmp_path / "dashboard-login.png"))
        browser.get_log("browser")  # the 401 it got is expected: start the console check afresh

        # --- the live page: curves grow without a reload -----------------------------------------------------------
        browser.execute_script("sessionStorage.clear()")
        browser.get(server.url)
        assert "token=" not in browser.current_url  # taken off the address bar
        wait_for("a running state", lambda: "running" in browser.find_element("css selector", ".run .state").text)
        first = wait_for("reward points", lambda: browser.execute_script("return hfDashboard.points()[0].reward"))
        grown = wait_for("more reward points",
                         lambda: (browser.execute_script("return hfDashboard.points()[0].reward") or 0) > first + 1)
        assert grown
        assert len(browser.find_elements("css selector", ".chart canvas")) >= 3  # reward, lr, grad norm, modes ...
        assert "Reward:" in browser.find_element("css selector", ".run .line").text
        assert "Best reward" in browser.find_element("css selector", ".run .line").text
        wait_for("progress and ETA", lambda: "ETA" in browser.find_element("css selector", ".run .progress").text)
        wait_for("the diagnosis", lambda: text(browser, "diagnosis") not in ("", "no data yet"))

        # --- Save with a name: through live control, pinned, listed and on disk -------------------------------------
        assert browser.find_element("id", "save-btn").is_enabled()
        browser.find_element("id", "save-name").send_keys("from-browser")
        browser.find_element("id", "save-btn").click()
        result = wait_for("the save", lambda: "Saved checkpoint-" in text(browser, "action-result")
                          and text(browser, "action-result"))
        assert "from-browser" in result
        named = [c for c in list_checkpoints(out) if c.marker.get("name") == "from-browser"]
        assert len(named) == 1 and named[0].valid and named[0].marker["pinned"]
        assert f"checkpoint-{named[0].step}" in result
        wait_for("the checkpoint in the list", lambda: browser.find_elements(
            "css selector", f'#checkpoints tr[data-checkpoint="checkpoint-{named[0].step}"]'), timeout=20)
        row = browser.find_element("css selector", f'#checkpoints tr[data-checkpoint="checkpoint-{named[0].step}"]')
        assert "from-browser" in row.text and "manual" in row.text and "yes" in row.text
        # The diagnostics log: new bests by the live rule, and what the training printed (logs/train.log).
        wait_for("the diagnostics log", lambda: "NEW BEST" in text(browser, "findings")
                 and "Control request" in text(browser, "findings"), timeout=20)
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(tmp_path / "dashboard-running.png"))

        # --- Stop, confirmed: the training saves and exits ----------------------------------------------------------
        browser.find_element("id", "stop-btn").click()
        alert = wait_for("the confirmation", lambda: browser.switch_to.alert, timeout=10)
        assert "Stop the training" in alert.text
        alert.accept()
        stopped = wait_for("the stop", lambda: "Stopped at step" in text(browser, "action-result")
                           and text(browser, "action-result"))
        assert process.wait(timeout=60) == 0, (tmp_path / "training.log").read_text()[-3000:]
        last = list_checkpoints(out)[-1]
        assert last.valid and last.marker.get("stopped_by") == "control request" and f"step {last.step}" in stopped
        wait_for("the stopped state", lambda: "stopped" in browser.find_element("css selector", ".run .state").text)
        wait_for("disabled buttons", lambda: not browser.find_element("id", "stop-btn").is_enabled()
                 and "stopped" in text(browser, "action-why"))
        browser.save_screenshot(str(tmp_path / "dashboard-stopped.png"))
        errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert not errors, json.dumps(errors, indent=1)
        for name in ("dashboard-login.png", "dashboard-running.png", "dashboard-stopped.png"):
            assert (tmp_path / name).stat().st_size > 1000
    finally:
        server.stop()


def test_several_runs_overlaid_read_only_with_axes_and_report(browser, tmp_path):
    import math
    import random

    from hf_trainkit.dashboard.server import DashboardServer

    runs = []
    for index, name in enumerate(("nsr-seed1", "psr-seed1")):
        run = tmp_path / name
        (run / "logs").mkdir(parents=True)
        rng = random.Random(index)
        with open(run / "logs" / "log_history.jsonl", "w") as handle:
            for step in range(1, 3001):
                reward = 0.3 + 0.5 * (1 - math.exp(-step / 600)) + rng.gauss(0, 0.05) + (0.6 if step == 1234 else 0)
                handle.write(json.dumps({"_time": 1e9 + 2 * step, "step": step, "epoch": step / 1000, "loss": 0.0,
                                         "reward": reward, "learning_rate": 1e-6, "grad_norm": abs(rng.gauss(1, .1)),
                                         f"{name[:3]}/kept_ratio": 0.5}) + "\n")
        runs.append(run)
    (runs[0] / "plots").mkdir()
    (runs[0] / "plots" / "report.html").write_text("<html><body><h1>the monitor's report</h1></body></html>")
    server = DashboardServer([(str(r), r.name[:3].upper()) for r in runs], port=0, read_only=True).start()
    try:
        browser.get(server.url)
        wait_for("both runs", lambda: len(browser.find_elements("css selector", ".run")) == 2
                 and browser.execute_script("return hfDashboard.points().length") == 2
                 and all(p.get("reward") for p in browser.execute_script("return hfDashboard.points()")))
        legend = browser.find_element("css selector", '.chart[data-group="main"]').text
        assert "NSR reward" in legend and "PSR reward" in legend
        # 3,000 logs arrive thinned to about the screen's width, and the spike at step 1234 survives.
        points = browser.execute_script("return hfDashboard.points()[0].reward")
        assert points < 3000
        assert browser.execute_script(
            "return hfDashboard.runs[0].series.reward.x.includes(1234)")
        assert "read-only" in text(browser, "action-why") and not browser.find_element("id", "save-btn").is_enabled()
        # Zoom: a drag on the plot refetches the window in full detail (the overview is thinned); double-click resets.
        from selenium.webdriver.common.action_chains import ActionChains

        over = browser.find_element("css selector", '.chart[data-group="main"] .u-over')
        width = over.size["width"]
        ActionChains(browser).move_to_element_with_offset(over, int(-width * 0.1), 0).click_and_hold() \
            .move_by_offset(int(width * 0.05), 0).release().perform()
        def detail():
            xs = browser.execute_script("return hfDashboard.drawn('main')[0]")
            low, high = browser.execute_script("const r = hfDashboard.charts.main.range; return r")
            inside = [x for x in xs if low <= x <= high]
            return len(inside) >= int(high) - int(low) - 1 and inside
        inside = wait_for("the zoomed detail", detail, timeout=20)
        assert inside == list(range(int(inside[0]), int(inside[-1]) + 1))  # every step of the window
        browser.execute_script("return hfDashboard.zoom('main', 1200, 1260)")
        wait_for("a zoom on the spike", lambda: set(range(1200, 1261)) <= set(
            browser.execute_script("return hfDashboard.drawn('main')[0]")))
        ActionChains(browser).double_click(over).perform()
        wait_for("the overview again", lambda: not browser.execute_script("return hfDashboard.charts.main.zoomed"))
        for axis in ("epoch", "time", "step"):
            browser.find_element("css selector", f'#x-axis option[value="{dict(step="x", epoch="e", time="t")[axis]}"]').click()
            wait_for(f"the {axis} axis", lambda: browser.find_elements("css selector", ".chart canvas"))
        link = wait_for("the report link", lambda: browser.find_elements("id", "report-link"), timeout=20)[0]
        browser.get(link.get_attribute("href"))
        assert "the monitor's report" in browser.page_source
        browser.back()  # the token is kept for the tab (sessionStorage), not in the address bar
        wait_for("the page again", lambda: len(browser.find_elements("css selector", ".chart canvas")) >= 4
                 and browser.find_elements("css selector", "#findings li"))
        time.sleep(0.5)
        browser.save_screenshot(str(tmp_path / "dashboard-compare.png"))
        errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert not errors, json.dumps(errors, indent=1)
    finally:
        server.stop()
