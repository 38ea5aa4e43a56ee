"""The dashboard beside a training (`--dashboard`): started in a process of its own, on a port that is listening
before the URL is printed, with its token in a file only the user can read and its log without the token."""

from __future__ import annotations

import atexit
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..control.server import LISTEN_BACKLOG
from ..control.token import read_token


TOKEN_ENV = "HF_TRAINKIT_DASHBOARD_TOKEN"
LOG_NAME = os.path.join("logs", "dashboard.log")
_BACKGROUND: list[subprocess.Popen] = []  # the dashboards this process started (tests end them)


def _listen(host: str, wanted: int) -> socket.socket:
    """A socket bound to `host:wanted` (or, taken, to a free port) and listening: connections wait in its queue
    until the dashboard process takes them, so a URL printed now never answers "connection refused"."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, wanted))
        except OSError:
            if wanted == 0:
                raise
            listener.bind((host, 0))  # taken: any free one (the URL says which)
        listener.listen(LISTEN_BACKLOG)
    except BaseException:
        listener.close()
        raise
    return listener


def _open_private_log(path: Path) -> int:
    """`path` for appending, readable by the user only (0600, also if it existed: an older one may be 0644)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    os.fchmod(descriptor, 0o600)
    return descriptor


def start_dashboard_in_background(output_dir: str | os.PathLike, port: int | None = 0,
                                  linger: float = 600.0) -> str | None:
    """Serve the dashboard of the training writing `output_dir`, in a separate process, and return its URL (token
    included) at once, or None (with a warning) if it cannot start. It never blocks, slows or crashes the training:
    the dashboard only reads the run's files and acts through live-control request files; killing or restarting it
    leaves the training untouched. The port is listening when this returns (the process takes the connections
    once it has started). It keeps serving `linger` seconds after the training's process ends (for review; the
    page keeps its last state after that) and says so on the console when this process exits; its output goes to
    `OUTPUT_DIR/logs/dashboard.log` (mode 0600, no token in it). The token is the one in
    `OUTPUT_DIR/dashboard_token` if a dashboard of the run already wrote one (so its page keeps working), else new.

    Call it on the main process only. `port` 0 or None picks a free port; a port in use is replaced by a free one.
    """
    try:
        from .server import TOKEN_FILE

        output_dir = Path(output_dir)
        (output_dir / "logs").mkdir(parents=True, exist_ok=True)
        token = read_token(output_dir, TOKEN_FILE) or secrets.token_urlsafe(32)
        listener = _listen("127.0.0.1", port or 0)
        try:
            log = _open_private_log(output_dir / LOG_NAME)
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "hf_trainkit.dashboard", str(output_dir), "--port", "0",
                     "--parent-pid", str(os.getpid()), "--linger", str(linger), "--listen-fd", str(listener.fileno())],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
                    pass_fds=(listener.fileno(),), env={**os.environ, TOKEN_ENV: token})
            finally:
                os.close(log)
            port = listener.getsockname()[1]
        finally:
            listener.close()  # the dashboard process holds it now
        _BACKGROUND.append(process)
        atexit.register(_say_it_lingers, process, f"http://127.0.0.1:{port}/", linger, output_dir)
        return f"http://127.0.0.1:{port}/?token={token}"
    except Exception as error:  # the training goes on without a dashboard
        import warnings

        warnings.warn(f"Could not start the dashboard ({type(error).__name__}: {error}); training goes on. Start "
                      f"it yourself with: hf-trainkit dashboard {output_dir}", RuntimeWarning, stacklevel=2)
        return None


def _say_it_lingers(process: subprocess.Popen, url: str, linger: float, output_dir: Path):
    if process.poll() is None and linger > 0:
        until = time.strftime("%H:%M", time.localtime(time.time() + linger))
        print(f"Dashboard: still serving {url} for {linger / 60:g} min after the training (until {until}) for a "
              f"last look; `kill {process.pid}` ends it now (token in {output_dir / 'dashboard_token'}).", flush=True)
