#!/usr/bin/env python
"""How `hf-trainkit dashboard` scales with long runs, against a bare `json.load` of the same histories.

For R runs of N log entries each (TRL-GRPO-like entries, 12 keys, as benchmarks/monitor_scale.py), written as the
live log (`logs/log_history.jsonl`) and as a `trainer_state.json` of the same entries, prints:
- start: until the server listens (when it prints its URL; target: under 1 s), and the page's first poll then
  (answered within about a second, the runs still being read said "loading");
- read: until every run has been read in the background (from the start) vs `json.load` of the same files;
- first response: `GET /api/data` of a new page once the runs are read (every series thinned to the screen's
  width), its time and size (target: under 2 s for 8 runs x 100k);
- update: one new log per run, then `GET /api/data` with the page's cursors: time and size (only what is new);
- idle update: nothing new;
- details of one run (checkpoints, the diagnosis over the whole curve).

    python benchmarks/dashboard_scale.py [--runs 8] [--entries 100000] [--points 1500]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def entry(step: int, entries: int, rng: random.Random, now: float) -> dict:
    return {"_time": now + step * 0.5, "loss": 1e-3 * rng.gauss(0, 1), "grad_norm": abs(rng.gauss(1, 0.2)),
            "learning_rate": 1e-6 * (1 - step / entries),
            "reward": 0.2 + 0.6 * (1 - math.exp(-step / (entries / 5))) + rng.gauss(0, 0.05),
            "reward_std": abs(rng.gauss(0.3, 0.05)), "entropy": abs(rng.gauss(1, 0.1)),
            "completions/mean_length": 100 + rng.random(), "kl": abs(rng.gauss(0, 0.01)),
            "frac_reward_zero_std": rng.random(), "num_tokens": float(step * 1000), "step": step,
            "epoch": step / entries}


def write_run(path: Path, entries: int, seed: int):
    rng = random.Random(seed)
    now = time.time() - entries
    history = [entry(step, entries, rng, now) for step in range(1, entries + 1)]
    (path / "logs").mkdir(parents=True, exist_ok=True)
    with open(path / "logs" / "log_history.jsonl", "w") as handle:
        handle.writelines(json.dumps(e) + "\n" for e in history)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": entries, "log_history": history}))


def get(server, path: str) -> tuple[float, int, dict]:
    host, port = server.server_address[:2]
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=120)
    connection.request("GET", path, headers={"Host": f"{host}:{port}", "Authorization": f"Bearer {server.token}"})
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    body = json.loads(raw)  # what the browser's JSON.parse does
    return time.perf_counter() - started, len(raw), body


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=1500, help="points per series the page asks for")
    args = parser.parse_args(argv)

    from hf_trainkit.dashboard.server import DashboardServer

    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(tmp) / f"run{i}" for i in range(args.runs)]
        started = time.perf_counter()
        for i, run in enumerate(runs):
            write_run(run, args.entries, seed=i)
        print(f"{args.runs} runs x {args.entries:,} entries written in {time.perf_counter() - started:.1f} s "
              f"({sum((r / 'logs' / 'log_history.jsonl').stat().st_size for r in runs) / 1e6:.0f} MB of live log)")

        started = time.perf_counter()
        for run in runs:
            with open(run / "trainer_state.json") as handle:
                json.load(handle)
        baseline = time.perf_counter() - started

        started = time.perf_counter()
        server = DashboardServer([(str(r), r.name) for r in runs], port=0).start()
        start = time.perf_counter() - started
        try:
            early, _, body = get(server, f"/api/data?points={args.points}")
            early_loading = sum(r["loading"] for r in body["runs"])
            server.wait_loaded()
            read = time.perf_counter() - started
            first, first_size, body = get(server, f"/api/data?points={args.points}")
            assert not any(r["loading"] for r in body["runs"])
            cursors = ",".join(f"{r['generation']}:{r['cursor']}" for r in body["runs"])
            points = sum(len(s["y"]) for r in body["runs"] for s in r["series"].values())
            rng = random.Random(0)
            for run in runs:
                with open(run / "logs" / "log_history.jsonl", "a") as handle:
                    handle.write(json.dumps(entry(args.entries + 1, args.entries, rng, time.time())) + "\n")
            update, update_size, body = get(server, f"/api/data?points={args.points}&c={cursors}")
            assert all(not r["reset"] and r["series"]["reward"]["x"] == [args.entries + 1] for r in body["runs"])
            cursors = ",".join(f"{r['generation']}:{r['cursor']}" for r in body["runs"])
            idle, idle_size, _ = get(server, f"/api/data?points={args.points}&c={cursors}")
            details, details_size, _ = get(server, "/api/details?run=0")
            details_again, _, _ = get(server, "/api/details?run=0")
        finally:
            server.stop()

    print(f"\n{'':<44}{'seconds':>9}{'bytes':>12}")
    print(f"{'json.load of the trainer_state.json files':<44}{baseline:>9.2f}{'':>12}")
    print(f"{'start: the server listens (URL printed)':<44}{start:>9.3f}{'':>12}")
    print(f"{'first poll then':<44}{early:>9.3f}{'':>12}   ({early_loading} of {args.runs} runs still loading)")
    print(f"{'read: every live log read, from the start':<44}{read:>9.2f}{'':>12}   ({read / baseline:.2f}x json.load)")
    print(f"{'first response once read (new page, thinned)':<44}{first:>9.3f}{first_size:>12,}   "
          f"({points:,} points)")
    print(f"{'update (one new log per run)':<44}{update:>9.4f}{update_size:>12,}")
    print(f"{'idle update (nothing new)':<44}{idle:>9.4f}{idle_size:>12,}")
    print(f"{'details of one run (diagnosis, checkpoints)':<44}{details:>9.3f}{details_size:>12,}")
    print(f"{'details again (cached)':<44}{details_again:>9.4f}")
    print(f"\nURL under 1 s: {'met' if start < 1.0 else 'NOT met'}; first response under 2 s after the last run is "
          f"read: {'met' if first < 2.0 else 'NOT met'}; the update sends {update_size / first_size:.2%} of the first "
          "response")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
