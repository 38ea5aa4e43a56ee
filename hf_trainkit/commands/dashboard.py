"""`hf-trainkit dashboard RUN [RUN ...] [--labels ...] [--port N]` (and the process `--dashboard` starts beside a
training: dashboard/background.py)."""

from __future__ import annotations

import argparse
import glob
import os
import socket
import time
from pathlib import Path

from ..argparsing import OneLineArgumentParser, UsageError, run_command
from ..dashboard.background import TOKEN_ENV


PROG = "hf-trainkit dashboard"
DEFAULT_PORT = 6150


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
    from ..dashboard.runs import is_run_dir
    from ..dashboard.server import DashboardServer

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
