"""The dashboard tests' shared fixture: a server over one run of 30 logs."""

import pytest

from hf_trainkit.dashboard.server import DashboardServer

from .test_dashboard_server import _write_log


@pytest.fixture()
def served(tmp_path):
    run = tmp_path / "run"
    _write_log(run, 30)
    server = DashboardServer([(str(run), "run")], port=0).start()
    yield server, run
    server.stop()
