"""`hf-trainkit dashboard`: one live page for one run or several: curves, the current-metrics line, diagnostics,
checkpoints, and Save / Stop through live control.

    server.py    routes, token, Host/Origin checks (on the control endpoint's server: limits, timeouts, JSON errors)
    data.py      pure functions: series since a cursor, min/max thinning, the metrics line, the ETA
    runs.py      the run folders, read incrementally
    background.py  `start_dashboard_in_background`, for a training's `--dashboard`
    static/      the page and the vendored uPlot (MIT): nothing is loaded from the internet
"""

from .background import start_dashboard_in_background


__all__ = ["start_dashboard_in_background"]
