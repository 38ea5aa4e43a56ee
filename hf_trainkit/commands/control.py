"""`hf-trainkit control save|stop|status RUN_DIR`: act on a running training through its request files."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..argparsing import report_error
from .checkpoints import format_number
from ..checkpointing.discover import checkpoint_table
from ..control import (ControlError, is_running, process_gone, read_response, read_status, settle_queue,
                      submit_request)


def control_command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-trainkit control",
        description="Act on a running training (started by scripts/train_grpo.py or with LiveControlCallback). "
        "Requests are files in RUN_DIR/control/, applied at the next step boundary on every rank.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    save = sub.add_parser("save", help="save a checkpoint now (training goes on); --name pins it")
    save.add_argument("run_dir", metavar="RUN_DIR")
    save.add_argument("--name", default=None, help="name of the checkpoint (letters, digits, _ . -; at most 64)")
    stop = sub.add_parser("stop", help="save a checkpoint and end training after the current step")
    stop.add_argument("run_dir", metavar="RUN_DIR")
    for command in (save, stop):
        command.add_argument("--no-wait", action="store_true", help="queue the request and return at once")
        command.add_argument("--timeout", type=float, default=600.0, metavar="S",
                             help="seconds to wait for the checkpoint (the request stays queued after that)")
    status = sub.add_parser("status", help="step, epoch, last metrics and checkpoints of the run")
    status.add_argument("run_dir", metavar="RUN_DIR")
    status.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _fail(message: str, code: int) -> int:
    report_error("hf-trainkit control", message)
    return code


def headline_metrics(metrics: dict, limit: int = 6) -> list[str]:
    """The keys worth a status line, most telling first: the reward (RL runs), the losses, the mode metrics, then
    the optimiser's; not the ~30 bookkeeping keys TRL logs (token counts, clip ratios, completion lengths)."""
    first = ["reward", "loss", "eval_loss", "grad_norm", "learning_rate"]
    modes = sorted(k for k in metrics if k.endswith(("/avg_reward", "/kept_ratio")))
    keys = [k for k in first[:3] if k in metrics] + modes + [k for k in first[3:] if k in metrics]
    return keys[:limit]


def _print_status(run_dir: Path, status: dict | None, checkpoints: list[dict]):
    if status is None:
        print(f"{run_dir}: no live status (not started with live control, or not started yet).")
    else:
        updated = status.get("updated_at")
        age = time.time() - updated if isinstance(updated, (int, float)) else float("nan")
        last = status.get("last_metrics") if isinstance(status.get("last_metrics"), dict) else {}
        metrics = " ".join(f"{k}={format_number(last[k])}" for k in headline_metrics(last))
        state = status.get("state")
        if state == "running" and process_gone(status):
            state = "gone (its process no longer exists: killed or crashed; last seen"
            where = f") at step {status.get('step')}/{status.get('max_steps')}"
        else:
            where = f" at step {status.get('step')}/{status.get('max_steps')}"
        print(f"{run_dir}: {state}{where}, epoch {format_number(status.get('epoch') or 0, '.3f')}, updated "
              f"{format_number(age, '.0f')} s ago (pid {status.get('pid')} on {status.get('host')}, world size "
              f"{status.get('world_size')})")
        if metrics:
            print(f"  last metrics: {metrics}")
        if status.get("endpoint"):
            print(f"  HTTP endpoint: {status['endpoint']['url']} (token in {status['endpoint']['token_file']})")
    if not checkpoints:
        print("  no checkpoints")
    for c in checkpoints:
        label = f"{c['name']!r} " if c["name"] else ""
        metrics = " ".join(f"{k}={format_number(v)}" for k, v in c["metrics"].items() if k in ("loss", "reward", "eval_loss"))
        validity = "valid" if c["valid"] else f"invalid: {c['why_not']}"
        print(f"  {c['checkpoint']:<20} {label}{c['reason'] or '-'} {metrics} ({validity})")


def main(argv: list[str] | None = None) -> int:
    args = control_command_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        return _fail(f"{run_dir}: no such directory.", 2)
    status = read_status(run_dir)
    if args.action == "status":
        checkpoints = checkpoint_table(run_dir)
        if args.json:
            print(json.dumps({"status": status, "running": is_running(status), "checkpoints": checkpoints},
                             indent=2, default=str))
        else:
            _print_status(run_dir, status, checkpoints)
        # 0: a training is running; 1: none is (never started with live control, finished, stopped or gone).
        return 0 if is_running(status) else 1
    if status is None:
        return _fail(f"{run_dir}: no training with live control here (no control/status.json); start it with "
                     "scripts/train_grpo.py or add LiveControlCallback.", 1)
    if status.get("state") != "running":
        return _fail(f"{run_dir}: the training is {status.get('state')} (step {status.get('step')}); nothing "
                     "would apply the request.", 1)
    if process_gone(status):
        return _fail(f"{run_dir}: the training (pid {status.get('pid')} on this machine) is no longer running; "
                     "nothing would apply the request.", 1)
    try:
        request_id = submit_request(run_dir, args.action, getattr(args, "name", None))
    except ControlError as error:  # a bad or taken name: exit 2; nothing would carry it out now: exit 1
        return _fail(f"{args.action}: {error}.", 1 if error.about_the_run else 2)
    except OSError as error:
        return _fail(f"{run_dir}: cannot write the request ({error}).", 1)
    print(f"Request {request_id} queued: {args.action} at the next step boundary.", flush=True)
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        response = read_response(run_dir, request_id)
        if response is not None and response.get("status") not in ("accepted", "saving"):
            if response.get("status") == "done":
                label = f" as {response['name']!r}" if response.get("name") else ""
                print(f"Saved {response['checkpoint']} at step {response['step']}{label}.")
                return 0
            return _fail(f"request {request_id} {response.get('status')}: {response.get('error')}", 1)
        if response is None:
            settle_queue(run_dir)  # the training ended or died with it queued: answered rejected, with why
        time.sleep(0.2)
    return _fail(f"no answer within {args.timeout:g} s; the request stays queued and will be applied at the next "
                 "step boundary.", 1)
