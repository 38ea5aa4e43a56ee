#!/usr/bin/env python
"""How often the trajectory model's verdict is right, on labelled synthetic curves with the noise of real logs.

Each curve has a known shape and so a known right verdict:

    shape            metric  right verdict     what it is
    improving        reward  still improving   success rate rising steadily to the end
    flat noise       reward  plateau           success rate constant: nothing learnt
    converged        reward  converged         rises over the first third, then stays
    collapse         reward  collapsed         rises, then falls back below where it started, and stays
    transient dip    reward  converged         converged, with a fall mid-run that recovers
    converged loss   loss    converged         exponential decay to a floor; its eval loss falls too
    overfitting      loss    overfitting       train loss falls; eval loss falls, then rises
    divergence       loss    diverged          decays, then blows up in the last fifth

A logged reward is what TRL logs: the mean of `samples` right/wrong (0/1) completions drawn with the curve's success
rate (4, 8 or 16 samples: one batch of a small GRPO run); a logged loss is the curve times (1 + SGD noise) with a
relative noise of 5, 10 or 20 %. Eval losses (ten evaluations) carry 1 % noise. Curves of 50, 100, 200 and 500 logs.

Prints the confusion matrix (rows: shape, columns: verdict), the share right per shape and in all, the false-alarm
rate per shape (collapsed / diverged / overfitting on a curve that has none of them), and the contradictions (a
finding that says the opposite of its verdict, or advice to raise and to lower the learning rate at once); then the
verdict on every real `trainer_state.json` of ../shared/corpus (no labels: what a user would read, and whether any
contradicts itself). Targets: >= 90 % right, false alarms <= 5 % on every shape, no contradiction.

    python benchmarks/diagnosis_accuracy.py [--seeds 20] [--lengths 50 100 200 500]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path


ALARMS = {"collapsed", "diverged", "overfitting"}
RIGHT = {"improving": "still improving", "flat noise": "plateau", "converged": "converged", "collapse": "collapsed",
         "transient dip": "converged", "converged loss": "converged", "overfitting": "overfitting",
         "divergence": "diverged"}
REWARD_SHAPES = {
    "improving": lambda t: 0.15 + 0.6 * t,
    "flat noise": lambda t: 0.35,
    "converged": lambda t: 0.15 + 0.55 * (1 - math.exp(-t / 0.1)),
    "collapse": lambda t: 0.15 + 0.55 * min(t / 0.45, 1) - (0.6 * min((t - 0.45) / 0.25, 1) if t > 0.45 else 0),
    "transient dip": lambda t: 0.15 + 0.55 * (1 - math.exp(-t / 0.1)) - (0.35 if 0.45 <= t < 0.6 else 0),
}


def reward_curve(shape: str, points: int, samples: int, rng: random.Random) -> list[float]:
    rate = REWARD_SHAPES[shape]
    return [sum(rng.random() < rate(i / (points - 1)) for _ in range(samples)) / samples for i in range(points)]


def loss_curves(shape: str, points: int, relative: float, rng: random.Random):
    """(train losses, eval steps, eval losses)."""
    def level(t):
        base = 2.0 * math.exp(-t / 0.12) + 0.4
        if shape == "divergence" and t > 0.8:
            base *= math.exp(12 * (t - 0.8))  # about 10x by the end
        return base

    train = [level(i / (points - 1)) * (1 + relative * rng.gauss(0, 1)) for i in range(points)]
    eval_steps = [round(points * k / 10) for k in range(1, 11)]
    if shape == "overfitting":
        eval_level = [0.9 + 3.0 * (s / points - 0.4) ** 2 for s in eval_steps]
    else:
        eval_level = [0.6 + 2.0 * math.exp(-(s / points) / 0.12) for s in eval_steps]
    evals = [v * (1 + 0.01 * rng.gauss(0, 1)) for v in eval_level]
    return train, eval_steps, evals


def contradictions(diagnosis) -> list[str]:
    """What a reader would call contradictory, checked on the printed words alone."""
    problems = []
    texts = [diagnosis.advice] + [f.advice for f in diagnosis.findings]
    if any("raise the learning rate" in t for t in texts) and any("lower the learning rate" in t for t in texts):
        problems.append("advice to raise and to lower the learning rate")
    for finding in diagnosis.findings:
        if (finding.kind == "collapse" and diagnosis.verdict not in ("collapsed", "diverged")
                and "partly back" not in finding.message):
            problems.append(f"a collapse finding beside {diagnosis.verdict!r}: {finding.message}")
    if diagnosis.verdict == "collapsed" and not any(f.kind == "collapse" for f in diagnosis.findings):
        problems.append("collapsed without a collapse finding")
    if "%" in diagnosis.reason:
        problems.append(f"a percentage in the reason: {diagnosis.reason}")
    return problems


def synthetic(seeds: int, lengths: list[int]):
    from hf_trainkit.diagnostics import diagnose

    rows = []  # (shape, noise label, points, verdict, contradictions)
    for shape in RIGHT:
        for points in lengths:
            for level in (0, 1, 2):
                for seed in range(seeds):
                    rng = random.Random(f"{shape}/{points}/{level}/{seed}")
                    if shape in REWARD_SHAPES:
                        samples = (4, 8, 16)[level]
                        values = reward_curve(shape, points, samples, rng)
                        result = diagnose(range(1, points + 1), values, mode="max", name="reward")
                        noise = f"{samples} samples"
                    else:
                        relative = (0.05, 0.1, 0.2)[level]
                        train, eval_steps, evals = loss_curves(shape, points, relative, rng)
                        result = diagnose(range(1, points + 1), train, mode="min", name="loss",
                                          eval_steps=eval_steps, eval_values=evals)
                        noise = f"{relative:.0%} SGD"
                    rows.append((shape, noise, points, result.verdict, contradictions(result)))
    return rows


def corpus(folder: Path):
    from hf_trainkit.monitor.load import load_run
    from hf_trainkit.monitor.summary import summarize

    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            summary = summarize(load_run(path))
        except Exception as error:  # a Git LFS pointer, an empty history: what the monitor itself refuses
            out.append((path.name, "-", f"not read: {type(error).__name__}", []))
            continue
        diagnosis = summary["diagnosis"]
        out.append((path.name, (summary.get("monitored") or {}).get("key", "-"), diagnosis["verdict"],
                    diagnosis["reason"]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200, 500])
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    options = parser.parse_args(argv)

    rows = synthetic(options.seeds, options.lengths)
    verdicts = ["still improving", "plateau", "converged", "collapsed", "overfitting", "diverged", "unstable",
                "too short"]
    matrix = defaultdict(Counter)
    for shape, _, _, verdict, _ in rows:
        matrix[shape][verdict] += 1
    width = 16
    print(f"{len(rows)} curves: {options.seeds} seeds x {len(options.lengths)} lengths {options.lengths} x 3 noise "
          "levels per shape\n")
    print(f"{'shape':<{width}}" + "".join(f"{v[:11]:>12}" for v in verdicts) + f"{'right':>8}{'false alarm':>13}")
    total_right = total = 0
    worst_alarm = 0.0
    for shape, right in RIGHT.items():
        counts = matrix[shape]
        n = sum(counts.values())
        correct = counts[right]
        alarms = sum(c for v, c in counts.items() if v in ALARMS and v != right)
        alarm_rate = alarms / n if right not in ALARMS else None
        if alarm_rate is not None:
            worst_alarm = max(worst_alarm, alarm_rate)
        total_right += correct
        total += n
        print(f"{shape:<{width}}" + "".join(f"{counts[v]:>12}" for v in verdicts)
              + f"{correct / n:>8.0%}" + (f"{alarm_rate:>13.1%}" if alarm_rate is not None else f"{'-':>13}"))
    print(f"\nright: {total_right / total:.1%} of {total} (target >= 90 %); worst false-alarm rate "
          f"{worst_alarm:.1%} (target <= 5 %)")
    by_noise = defaultdict(lambda: [0, 0])
    for shape, noise, points, verdict, _ in rows:
        cell = by_noise[(noise, points)]
        cell[0] += verdict == RIGHT[shape]
        cell[1] += 1
    print("\nright by noise and length:")
    for (noise, points), (good, n) in sorted(by_noise.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        print(f"  {noise:<12} {points:>5} logs  {good / n:>6.1%}")
    contradicted = [(shape, problem) for shape, _, _, _, problems in rows for problem in problems]
    print(f"\ncontradictions: {len(contradicted)} (target 0)")
    for shape, problem in contradicted[:10]:
        print(f"  {shape}: {problem}")

    if options.corpus.is_dir():
        print(f"\nreal runs ({options.corpus}):")
        for name, key, verdict, reason in corpus(options.corpus):
            print(f"  {name[:60]:<60} {key[:18]:<18} {verdict:<16} {reason}"[:260])
    return 0


if __name__ == "__main__":
    sys.exit(main())
