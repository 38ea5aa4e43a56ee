"""`hf-trainkit dashboard RUN [RUN ...] [--labels ...] [--port N]`, and the background dashboard of a training."""

from __future__ import annotations

import argparse
import atexit
import glob
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..argparsing import OneLineArgumentParser, UsageError, run_command


PROG = "hf-trainkit dashboard"
DEFAULT_PORT = 6150
TOKEN_ENV = "HF_TRAINKIT_DASHBOARD_TOKEN"
LOG_NAME = os.path.join("logs", "dashboard.log")
_BACKGROUND: list[subprocess.Popen] = []  # the dashboards this process started (tests end them)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not in 0-65535 (0 picks a free port)")
    return port


def dashboard_command_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG, description="A live page for one training or several: curves, the current-metrics line, "
        "diagnostics, checkpoints, and Save / Stop through live control. Bound to 127.0.0.1; open the printed URL "
        "(it holds the token), over SSH with `ssh -L PORT:127.0.0.1:PORT host`.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="output dirs of trainings (quoted globs expanded)")
    parser.add_argument("--labels", nargs="+", metavar="LABEL", default=None,
                        help="one label per run (default: the folder names)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, metavar="N",
                        help="port on 127.0.0.1; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", metavar="HOST",
                        help="interface to listen on; anything but 127.0.0.1 exposes the page (token-protected) to "
                        "the network (default: %(default)s)")
    parser.add_argument("--read-only", action="store_true", help="no Save or Stop buttons")
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--linger", type=float, default=600.0, help=argparse.SUPPRESS)
    parser.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, dashboard_command, dashboard_command_parser().parse_args(argv))


def _expand(patterns: list[str]) -> list[str]:
    runs = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise UsageError(f"{pattern}: no folder matches.")
        runs += matches
    return runs


def dashboard_command(args) -> int:
    from ..monitor.load import default_label
    from .runs import is_run_dir
    from .server import DashboardServer

    runs = _expand(args.runs)
    for run in runs:
        if not Path(run).is_dir():
            raise UsageError(f"{run}: no such directory (pass a training's --output-dir).")
        # Beside a training (--parent-pid) the folder may not hold anything yet; a folder named by hand must.
        if args.parent_pid is None and not is_run_dir(Path(run)):
            raise UsageError(f"{run} is not a training run: no logs/log_history.jsonl, trainer_state.json, "
                             "checkpoint-* or control/status.json in it; pass a training's --output-dir.")
    if args.labels is not None and len(args.labels) != len(runs):
        raise UsageError(f"--labels: {len(args.labels)} label(s) for {len(runs)} run(s); give one per run.")
    labels = args.labels or [default_label(Path(run)) for run in runs]
    listening = socket.socket(fileno=args.listen_fd) if args.listen_fd is not None else None
    try:
        server = DashboardServer(list(zip(runs, labels)), token=os.environ.pop(TOKEN_ENV, None) or None,
                                 host=args.host, port=args.port, read_only=args.read_only,
                                 listening_socket=listening)
    except OSError as error:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error}); pick another "
                         "--port, or 0 for a free one.", exit_code=1) from None
    server.start()
    port = server.server_address[1]
    if args.parent_pid is None:  # a terminal: the ready URL, as Jupyter prints it
        print(f"Dashboard of {', '.join(labels)}:\n    {server.url}\n(token in {server.token_file}; from another "
              f"machine: ssh -L {port}:127.0.0.1:{port} THIS_HOST, then open the URL there)", flush=True)
    else:  # logs/dashboard.log: no token in a log (the training printed the URL; the token file has it)
        print(f"Dashboard of {', '.join(labels)}: {server.base_url}/ (token in {server.token_file}), beside the "
              f"training (pid {args.parent_pid})", flush=True)
    try:
        gone_since = None
        while True:
            time.sleep(1.0)
            if args.parent_pid is not None:
                alive = _alive(args.parent_pid)
                if not alive and gone_since is None:
                    until = time.strftime("%H:%M:%S", time.localtime(time.time() + args.linger))
                    print(f"The training (pid {args.parent_pid}) has ended; serving the final state for review "
                          f"{args.linger:g} s more, until {until}.", flush=True)
                gone_since = None if alive else (gone_since or time.monotonic())
                if gone_since is not None and time.monotonic() - gone_since >= args.linger:
                    print("Dashboard ended (the review time after the training is over).", flush=True)
                    break
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _listen(host: str, wanted: int) -> socket.socket:
    """A socket bound to `host:wanted` (or, taken, to a free port) and listening: connections wait in its queue
    until the dashboard process takes them, so a URL printed now never answers "connection refused"."""
    from ..checkpointing.control_server import LISTEN_BACKLOG

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
        from ..checkpointing.control import read_token
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
