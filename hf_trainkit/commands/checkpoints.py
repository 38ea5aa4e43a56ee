"""`hf-trainkit checkpoints latest|list|inspect`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..argparsing import OneLineArgumentParser, UsageError, run_command


PROG = "hf-trainkit checkpoints"


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return str(num_bytes)


def format_number(value, spec: str = ".4g") -> str:
    """`value` formatted as a float, or '?' for what is none (an integer of thousands of digits, a string)."""
    try:
        return format(float(value), spec)
    except (OverflowError, TypeError, ValueError):
        return "?"


def _metrics_text(metrics: dict, limit: int = 3) -> str:
    keys = [k for k in ("loss", "reward", "eval_loss") if k in metrics] or list(metrics)
    return " ".join(f"{str(k)[:24]}={format_number(metrics[k])}" for k in keys[:limit]
                    if isinstance(metrics[k], (int, float)))


def checkpoints_command_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROG,
                                     description="Find, list and inspect checkpoints (nothing is ever deleted).")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    latest = sub.add_parser("latest", help="print the newest valid checkpoint of DIR (exit 1 if none)")
    latest.add_argument("output_dir", metavar="DIR")
    latest.add_argument("--verify", action="store_true",
                        help="also read every byte: checksums recorded at save time, loadable pickles (what a resume "
                        "does; slower on large checkpoints)")
    listing = sub.add_parser("list", help="table of DIR's checkpoints: step, folder, name (pinned), reason, metrics, "
                                          "size, validity")
    listing.add_argument("output_dir", metavar="DIR")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument("--verify", action="store_true",
                         help="also read every byte of every checkpoint: checksums and loadable pickles")
    inspect = sub.add_parser("inspect", help="print a checkpoint's metadata")
    inspect.add_argument("checkpoint", metavar="CKPT")
    inspect.add_argument("--verify", action="store_true", help="also check checksums and loadable pickles")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, checkpoints_command, checkpoints_command_parser().parse_args(argv))


def checkpoints_command(args) -> int:
    from ..checkpointing.discover import find_resume_checkpoint, list_checkpoints
    from ..checkpointing.validate import inspect_checkpoint

    if args.action == "inspect":
        path = Path(args.checkpoint)
        if not path.is_dir():
            raise UsageError(f"{path}: no such directory.")
        info = inspect_checkpoint(path, compute_size=True, verify=args.verify)
        print(json.dumps({"path": str(info.path), "step": info.step, "valid": info.valid,
                          "why_not": info.reason or None, "size_bytes": info.size_bytes, "metrics": info.metrics,
                          "marker": {k: v for k, v in info.marker.items() if k not in ("files", "checksums")},
                          "files": len(info.marker.get("files", {})) or None}, indent=2, default=str))
        return 0 if info.valid else 1
    if not Path(args.output_dir).is_dir():
        raise UsageError(f"{args.output_dir}: no such directory.")
    if args.action == "latest":
        found = find_resume_checkpoint(args.output_dir, warn=False, verify=args.verify)
        if found is None:
            raise UsageError(f"no valid checkpoint in {args.output_dir}.", exit_code=1)
        print(found)
        return 0
    infos = list_checkpoints(args.output_dir, include_strays=True, compute_size=True, verify=args.verify)
    if args.json:
        print(json.dumps([{"step": i.step, "checkpoint": i.name, "name": i.marker.get("name"),
                           "pinned": bool(i.marker.get("pinned")), "reason": i.marker.get("reason"), "metrics": i.metrics,
                           "size_bytes": i.size_bytes, "valid": i.valid, "why_not": i.reason or None,
                           "node": i.marker.get("node"), "nodes": nodes_record(i.path)}
                          for i in infos], indent=2, default=str))
        return 0
    per_node = any(isinstance(i.marker.get("node"), dict) for i in infos)
    if per_node:
        print(f"{args.output_dir} was written with a disk per node: each row is this node's part; 'nodes' says which "
              "nodes held their part complete right after the save.")
    print(f"{'step':>8}  {'checkpoint':<22} {'name':<16} {'reason':<9} {'metrics':<34} {'size':>9}  "
          f"{'nodes  ' if per_node else ''}valid")
    for info in infos:
        validity = "yes" if info.valid else f"no: {info.reason}"
        if per_node:
            validity = f"{node_text(info):<6} {validity}"
        name = str(info.marker.get("name") or "-")
        print(f"{info.step if info.step is not None else '-':>8}  {info.name[:22]:<22} {name[:16]:<16} "
              f"{str(info.marker.get('reason') or '-'):<9} {_metrics_text(info.metrics)[:34]:<34} "
              f"{_size(info.size_bytes):>9}  {validity}")
    return 0


def nodes_record(checkpoint: Path) -> dict | None:
    """What a node's part of a checkpoint recorded about every node's part (`hf_trainkit_nodes.json`), or None."""
    from ..checkpointing.nodes import NODES_RECORD

    try:
        record = json.loads((Path(checkpoint) / NODES_RECORD).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("nodes"), list) else None


def node_text(info) -> str:
    """'n0 2/2': whose part this folder is (node 0) and how many nodes held theirs complete after the save."""
    node = info.marker.get("node")
    whose = f"n{node.get('rank')}" if isinstance(node, dict) else "-"
    record = nodes_record(info.path)
    if record is None:
        return f"{whose} ?"
    nodes = [n for n in record["nodes"] if isinstance(n, dict)]
    return f"{whose} {sum(bool(n.get('complete')) for n in nodes)}/{len(nodes)}"
