#!/usr/bin/env python
"""Decide the paper's claims on a task with headroom at large k (Zhu et al. 2025, "The Surprising Effectiveness of
Negative Reinforcement in LLM Reasoning", Table 1 and Figure 2: PSR raises pass@1 but lowers pass@k at large k
below the base; NSR keeps pass@k at every k and the entropy; W-REINFORCE gets both).

For each seed: builds the base model of `hf_trainkit.tasks.headroom` (a tiny Llama distilled to a prior in which
the right answers of the hard prompts are rare), trains GRPO, PSR, NSR and W-REINFORCE from it with
`FilteredGRPOTrainer` on the training prompts, and measures every model on the held-out prompts: pass@k for
k = 1 ... 256, first-token entropy and coverage, per prompt, at the end and every `--eval-every` steps.

    python benchmarks/paper_fidelity.py                      # 10 seeds, the table, the claims (minutes on 2 cores)
    python benchmarks/paper_fidelity.py --output-dir fidelity # also pass_at_k.png, pass_at_k_over_steps.png, JSON
    python benchmarks/paper_fidelity.py --sweep lambda        # W-REINFORCE's positive weight; also: lr, steps

Measurement: pass@k = 1 - (1 - p)^k with p the model's probability of a correct answer (the answer is the first
completion token, sampled at temperature 1 as in training), i.e. the exact value that sampling n completions and
the unbiased estimator estimate, without the sampling noise (`hf_trainkit.tasks.headroom.exact_metrics`).

Statistics (`hf_trainkit.eval.intervals`): every figure is a mean over seeds and prompts with a 95 % interval from
a two-level bootstrap (seeds with replacement, then prompts with replacement within each seed drawn); a claim
about a mode against the base is computed on the paired per-(seed, prompt) differences and printed as holds, does
not hold or undecided by whether its interval excludes zero (`intervals.verdict`), never by a tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time


MODES = ("grpo", "psr", "nsr", "w-reinforce")
LABELS = {"base": "base", "grpo": "GRPO", "psr": "PSR", "nsr": "NSR", "w-reinforce": "W-REINFORCE"}
TABLE_KS = (1, 4, 16, 64, 256)
SWEEPS = ("lambda", "lr", "steps")
# W-REINFORCE's positive weight: the paper's 0.1 and neighbours (0 is NSR; 1 is REINFORCE with rewards +1/-1).
LAMBDA_SWEEP = (0.0, 0.03, 0.1, 0.3, 1.0)
LR_SWEEP_FACTORS = (0.3, 1.0, 3.0)
STEPS_SWEEP_FACTOR = 3  # the steps sweep trains this many times longer and reads every evaluation on the way


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paper_fidelity.py", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_nonnegative_int, nargs="+", default=list(range(10)), metavar="SEED",
                        help="one base model and one training per mode for each (default: %(default)s)")
    parser.add_argument("--max-steps", "--max_steps", type=_positive_int, default=150, metavar="N",
                        help="training steps per run (default: %(default)s)")
    parser.add_argument("--learning-rate", "--learning_rate", type=_positive_float, default=1e-3, metavar="LR",
                        help="(default: %(default)s)")
    parser.add_argument("--positive-weight", "--positive_weight", type=float, default=0.1, metavar="LAMBDA",
                        help="W-REINFORCE's weight on positive samples (default: %(default)s, the paper's)")
    parser.add_argument("--eval-every", "--eval_every", type=_positive_int, default=25, metavar="N",
                        help="measure the held-out prompts every N training steps (default: %(default)s)")
    parser.add_argument("--k-max", "--k_max", type=_positive_int, default=256, metavar="K",
                        help="pass@k for k = 1 ... K (default: %(default)s, the paper's)")
    parser.add_argument("--distill-steps", "--distill_steps", type=_positive_int, default=None, metavar="N",
                        help="steps that build each base model (default: the task's)")
    parser.add_argument("--resamples", type=_positive_int, default=2000, metavar="B",
                        help="bootstrap replicates (default: %(default)s)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), metavar="MODE",
                        help=f"modes to train, of {', '.join(MODES)} (default: all)")
    parser.add_argument("--sweep", choices=SWEEPS, default=None,
                        help="instead of the four modes: W-REINFORCE over its positive weight (lambda: "
                             f"{', '.join(map(str, LAMBDA_SWEEP))}), PSR/NSR/W-REINFORCE over the learning rate "
                             f"(lr: x{', x'.join(map(str, LR_SWEEP_FACTORS))}) or over training steps (steps: "
                             f"{STEPS_SWEEP_FACTOR}x --max-steps, read every --eval-every steps)")
    parser.add_argument("--output-dir", "--output_dir", default=None, metavar="DIR",
                        help="write pass_at_k.png, pass_at_k_over_steps.png and paper_fidelity.json here")
    return parser


def parse_options(argv=None):
    parser = build_parser()
    options = parser.parse_args(argv)
    if len(set(options.seeds)) != len(options.seeds):
        parser.error(f"--seeds: each seed once, got {options.seeds}")
    if options.positive_weight < 0:
        parser.error(f"--positive-weight must be >= 0, got {options.positive_weight}")
    if options.k_max < max(TABLE_KS[:1]):
        parser.error(f"--k-max must be >= 1, got {options.k_max}")
    if options.output_dir is not None:
        if os.path.exists(options.output_dir) and not os.path.isdir(options.output_dir):
            parser.error(f"--output-dir {options.output_dir!r} is a file; pass a folder")
        try:
            os.makedirs(options.output_dir, exist_ok=True)
        except OSError as error:
            parser.error(f"--output-dir {options.output_dir!r} cannot be created: {error.strerror}")
        if not os.access(options.output_dir, os.W_OK):
            parser.error(f"--output-dir {options.output_dir!r} is not writable")
    options.table_ks = [k for k in TABLE_KS if k <= options.k_max] or [options.k_max]
    if options.table_ks[-1] != options.k_max:
        options.table_ks.append(options.k_max)
    return options


# ----------------------------------------------------------------------------------------------------------------
# Training and measuring


def measure(model, tokenizer, rows, options):
    """Per held-out prompt: pass@k for k = 1 ... k_max (a list), entropy, coverage (exact, see the module doc)."""
    from hf_trainkit.tasks.headroom import exact_metrics

    ks = range(1, options.k_max + 1)
    records = exact_metrics(model, tokenizer, rows, ks, n=options.k_max)
    return {"pass": [[r[f"pass@{k}"] for k in ks] for r in records],
            "entropy": [r["entropy"] for r in records], "coverage": [r["coverage"] for r in records]}


def train(run: dict, seed: int, options, rows, output_dir: str, base) -> tuple[dict, list[tuple[int, dict]]]:
    """Train one run (``mode`` and overrides) from a copy of the seed's base model; returns the final measurement
    and the measurements every `eval_every` steps."""
    import copy

    from transformers import TrainerCallback

    from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer
    from hf_trainkit.tasks.headroom import build_headroom_dataset, build_headroom_tokenizer, headroom_reward

    tokenizer = build_headroom_tokenizer()
    max_steps = run.get("max_steps", options.max_steps)
    history: list[tuple[int, dict]] = []

    class Measure(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % options.eval_every == 0 or state.global_step == max_steps:
                history.append((state.global_step, measure(model, tokenizer, rows, options)))

    args = FilteredGRPOConfig(
        output_dir=output_dir, mode=run["mode"], seed=seed, max_steps=max_steps,
        learning_rate=run.get("learning_rate", options.learning_rate),
        positive_weight=run.get("positive_weight", options.positive_weight),
        per_device_train_batch_size=16, num_generations=8, max_completion_length=2,
        logging_steps=max_steps, report_to=[], save_strategy="no", disable_tqdm=True, log_mode_summary=False)
    trainer = FilteredGRPOTrainer(model=copy.deepcopy(base), reward_funcs=headroom_reward, args=args,
                                  train_dataset=build_headroom_dataset(4096, seed=seed), processing_class=tokenizer,
                                  callbacks=[Measure()])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.train()
    trainer.model.eval()
    return measure(trainer.model, tokenizer, rows, options), history


def _distill(options) -> dict:
    return {} if options.distill_steps is None else {"distill_steps": options.distill_steps}


def runs_of(options) -> list[dict]:
    """What to train for each seed: a name, a mode and the settings that differ from the options."""
    if options.sweep == "lambda":
        # lambda = 0 is NSR, which the config asks to be named so.
        return [{"name": f"W-REINFORCE lambda={w:g}", "mode": "w-reinforce", "positive_weight": w} if w > 0
                else {"name": "NSR (lambda=0)", "mode": "nsr"} for w in LAMBDA_SWEEP]
    if options.sweep == "lr":
        return [{"name": f"{LABELS[mode]} lr={options.learning_rate * f:.2g}", "mode": mode,
                 "learning_rate": options.learning_rate * f}
                for mode in ("psr", "nsr", "w-reinforce") for f in LR_SWEEP_FACTORS]
    if options.sweep == "steps":
        return [{"name": LABELS[mode], "mode": mode, "max_steps": options.max_steps * STEPS_SWEEP_FACTOR}
                for mode in options.modes]
    return [{"name": LABELS[mode], "mode": mode} for mode in options.modes]


def collect(options, log=print) -> dict:
    """Every measurement of every seed: ``{"base": [per seed], run name: [per seed], "history": {run name: [per
    seed: [(step, measurement)]]}}``."""
    from hf_trainkit.tasks.headroom import build_headroom_base_model, build_headroom_tokenizer, headroom_rows

    rows = headroom_rows("heldout")
    runs = runs_of(options)
    data = {"base": [], "history": {run["name"]: [] for run in runs}, "runs": runs,
            **{run["name"]: [] for run in runs}}
    with tempfile.TemporaryDirectory() as root:
        for seed in options.seeds:
            t0 = time.perf_counter()
            tokenizer = build_headroom_tokenizer()
            base = build_headroom_base_model(tokenizer, seed=seed, **_distill(options))
            data["base"].append(measure(base, tokenizer, rows, options))
            log(f"seed {seed} base {'':<22} built and measured in {time.perf_counter() - t0:5.1f} s")
            for run in runs:
                t0 = time.perf_counter()
                final, history = train(run, seed, options, rows, f"{root}/{run['mode']}-{seed}", base)
                data[run["name"]].append(final)
                data["history"][run["name"]].append([(0, data["base"][-1]), *history])
                log(f"seed {seed} {run['name']:<27} trained and measured in {time.perf_counter() - t0:5.1f} s")
    return data


# ----------------------------------------------------------------------------------------------------------------
# Statistics


def arrays(data: dict, name: str):
    """(pass (S, P, K), entropy (S, P), coverage (S, P)) of a model over seeds."""
    import numpy as np

    runs = data[name]
    return (np.array([r["pass"] for r in runs]), np.array([r["entropy"] for r in runs]),
            np.array([r["coverage"] for r in runs]))


def figures(data: dict, options, names: list[str]) -> dict:
    """Every figure with its interval: per model (``value``) and per trained model against the base, paired
    (``difference``)."""
    from hf_trainkit.eval import intervals

    base_pass, base_entropy, base_coverage = arrays(data, "base")
    resamples = intervals.draw_resamples(base_pass.shape[0], base_pass.shape[1], options.resamples, seed=0)
    out = {"resamples": resamples, "value": {}, "difference": {}, "curve": {}, "curve_difference": {}}
    for name in ["base", *names]:
        passes, entropy, coverage = arrays(data, name)
        out["value"][name] = {**{f"pass@{k}": intervals.estimate(passes[:, :, k - 1], resamples)
                                 for k in options.table_ks},
                              "entropy": intervals.estimate(entropy, resamples),
                              "coverage": intervals.estimate(coverage, resamples)}
        out["curve"][name] = intervals.estimate_curve(passes, resamples)
        if name == "base":
            continue
        diff = passes - base_pass
        out["difference"][name] = {
            **{f"pass@{k}": intervals.estimate(diff[:, :, k - 1], resamples) for k in options.table_ks},
            "entropy": intervals.estimate(entropy - base_entropy, resamples),
            "coverage": intervals.estimate(coverage - base_coverage, resamples)}
        out["curve_difference"][name] = diff
    return out


def claims(data: dict, stats: dict, options) -> list[dict]:
    """The paper's claims, each decided by its own interval (see `hf_trainkit.eval.intervals.verdict`)."""
    import numpy as np

    from hf_trainkit.eval import intervals

    resamples, ks = stats["resamples"], list(range(1, options.k_max + 1))
    k_large = options.k_max
    out = []

    def add(text, estimate, want, detail=""):
        out.append({"claim": text, "verdict": intervals.verdict(estimate, want), "estimate": estimate,
                    "detail": detail})

    def diff(name, key):
        return stats["difference"][name][key]

    if "PSR" in stats["difference"]:
        add("PSR raises pass@1 above the base", diff("PSR", "pass@1"), "above", "PSR - base, pass@1")
        add(f"PSR lowers pass@{k_large} below the base", diff("PSR", f"pass@{k_large}"), "below",
            f"PSR - base, pass@{k_large}")
    if "NSR" in stats["difference"]:
        lowest, where = intervals.estimate_min(stats["curve_difference"]["NSR"], resamples)
        add(f"NSR keeps pass@k at or above the base at every k = 1 ... {k_large}", lowest, "at_or_above",
            f"min over k of NSR - base (smallest at k={ks[where]})")
        add("NSR keeps the entropy at or above the base", diff("NSR", "entropy"), "at_or_above",
            "NSR - base, entropy")
    if "W-REINFORCE" in stats["difference"]:
        lowest, where = intervals.estimate_min(stats["curve_difference"]["W-REINFORCE"], resamples)
        add(f"W-REINFORCE keeps pass@k at or above the base at every k = 1 ... {k_large}", lowest, "at_or_above",
            f"min over k of W-REINFORCE - base (smallest at k={ks[where]})")
        others = [name for name in stats["curve"] if name != "W-REINFORCE"]
        w_pass = arrays(data, "W-REINFORCE")[0]
        # W-REINFORCE minus the best other model at each k, per (seed, prompt) pairing with the same seed: the
        # best other model is chosen per k by its mean over everything, then paired.
        best = np.stack([arrays(data, name)[0] for name in others])  # (M, S, P, K)
        best_index = best.mean(axis=(1, 2)).argmax(axis=0)  # (K,)
        gap = w_pass - best[best_index, :, :, np.arange(len(ks))].transpose(1, 2, 0)
        lowest, where = intervals.estimate_min(gap, resamples)
        add(f"W-REINFORCE is at or above the best other model at every k = 1 ... {k_large}", lowest, "at_or_above",
            f"min over k of W-REINFORCE - best other (smallest at k={ks[where]}, vs {others[best_index[where]]})")
    if "PSR" in stats["difference"]:
        point, low, high, without = intervals.estimate_crossover(stats["curve_difference"]["PSR"], resamples, ks)
        text = "none" if point is None else str(point)
        bounds = f"[{_k(low)}, {_k(high)}]"
        # Holds when every resample but the 2.5 % tail has a crossover (the interval's upper end is a k), does not
        # hold when at most that tail has one (the interval lies beyond the largest k).
        verdict = (intervals.HOLDS if high != float("inf") else intervals.DOES_NOT_HOLD if low == float("inf")
                   else intervals.UNDECIDED)
        out.append({"claim": "PSR falls below the base from some k on (the crossover k)", "verdict": verdict,
                    "estimate": None,
                    "detail": f"crossover k = {text}, 95% interval {bounds}; {100 * without:.0f}% of resamples "
                              f"have none (PSR at or above the base at k={k_large})",
                    "crossover": {"k": point, "low": low, "high": high, "share_without": without}})
    return out


def _k(value: float) -> str:
    return f">{value:g}" if value == float("inf") else f"{value:g}"


# ----------------------------------------------------------------------------------------------------------------
# Printing and plotting


def print_report(data: dict, stats: dict, claim_list: list[dict], options, elapsed: float) -> None:
    names = [run["name"] for run in data["runs"]]
    keys = [f"pass@{k}" for k in options.table_ks] + ["entropy", "coverage"]
    width = max(len(n) for n in ["base", *names]) + 1
    steps = options.max_steps * (STEPS_SWEEP_FACTOR if options.sweep == "steps" else 1)
    print(f"\nHeld-out prompts: {len(data['base'][0]['entropy'])} (hf_trainkit.tasks.headroom); seeds "
          f"{options.seeds}; {steps} steps per run at lr {options.learning_rate:g}; exact pass@k; "
          f"means over seeds and prompts, 95% bootstrap interval in brackets ({options.resamples} resamples)\n")
    print(f"{'model':<{width}} " + " ".join(f"{key:>21}" for key in keys))
    for name in ["base", *names]:
        print(f"{name:<{width}} " + " ".join(f"{stats['value'][name][key].format():>21}" for key in keys))
    print("\nDifference from the base (paired by seed and prompt):")
    print(f"{'model':<{width}} " + " ".join(f"{key:>24}" for key in keys))
    for name in names:
        print(f"{name:<{width}} " + " ".join(f"{stats['difference'][name][key].format(signed=True):>24}"
                                             for key in keys))
    print_steps(data, options, names)
    if claim_list:
        print("\nThe paper's claims on this task (decided by the 95% interval, never by a tolerance):")
        for claim in claim_list:
            figure = "" if claim["estimate"] is None else f" {claim['estimate'].format(signed=True)}"
            print(f"  [{claim['verdict'].upper()}] {claim['claim']}:{figure} ({claim['detail']})")
        counts = {v: sum(c["verdict"] == v for c in claim_list) for v in ("holds", "does not hold", "undecided")}
        print(f"\n{counts['holds']}/{len(claim_list)} claims hold, {counts['does not hold']} do not hold, "
              f"{counts['undecided']} undecided")
    print(f"{elapsed:.0f} s in all ({len(options.seeds)} seeds)")


def step_table(data: dict, options, names: list[str]):
    """{name: [(step, {key: Estimate of the difference from the base at that step})]} over the steps every seed
    measured."""
    import numpy as np

    from hf_trainkit.eval import intervals

    base_pass = np.array([r["pass"] for r in data["base"]])
    resamples = intervals.draw_resamples(base_pass.shape[0], base_pass.shape[1], options.resamples, seed=1)
    out = {}
    for name in names:
        histories = data["history"][name]
        steps = sorted(set.intersection(*(set(step for step, _ in h) for h in histories)))
        rows = []
        for step in steps:
            at = [dict(h)[step] for h in histories]
            passes = np.array([m["pass"] for m in at]) - base_pass
            entropy = np.array([m["entropy"] for m in at]) - np.array([r["entropy"] for r in data["base"]])
            row = {f"pass@{k}": intervals.estimate(passes[:, :, k - 1], resamples)
                   for k in (1, options.k_max) if k <= options.k_max}
            row["entropy"] = intervals.estimate(entropy, resamples)
            rows.append((step, row))
        out[name] = rows
    return out


def print_steps(data: dict, options, names: list[str]) -> None:
    table = step_table(data, options, names)
    keys = list(next(iter(table.values()))[0][1]) if table else []
    print(f"\nOver training (difference from the base; does PSR's pass@{options.k_max} fall as training goes on?):")
    width = max([len(name) for name in table] + [5]) + 1
    print(f"{'model':<{width}} {'step':>5} " + " ".join(f"{key:>24}" for key in keys))
    for name, rows in table.items():
        for step, row in rows:
            if step == 0:
                continue
            print(f"{name:<{width}} {step:>5} " + " ".join(f"{row[key].format(signed=True):>24}" for key in keys))


def plot(data: dict, stats: dict, options) -> list[str]:
    """pass_at_k.png (pass@k against k with bands, the paper's figure) and pass_at_k_over_steps.png; private Agg
    figures, no pyplot state."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hf_trainkit.eval import intervals

    written = []
    ks = np.arange(1, options.k_max + 1)
    names = list(stats["curve"])
    figure = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 2, 1)
    for name, curve in stats["curve"].items():
        color = _color(name, names)
        axes.plot(ks, [e.mean for e in curve], label=name, linestyle="--" if name == "base" else "-", color=color)
        axes.fill_between(ks, [e.low for e in curve], [e.high for e in curve], color=color, alpha=0.2)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("k")
    axes.set_ylabel("pass@k")
    axes.set_title(f"Held-out prompts, {len(options.seeds)} seeds, 95% bands")
    axes.legend()
    # The paired differences decide the claims: their bands are the ones to read.
    axes = figure.add_subplot(1, 2, 2)
    axes.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
    for name, diff in stats["curve_difference"].items():
        color = _color(name, names)
        curve = intervals.estimate_curve(diff, stats["resamples"])
        axes.plot(ks, [e.mean for e in curve], label=name, color=color)
        axes.fill_between(ks, [e.low for e in curve], [e.high for e in curve], color=color, alpha=0.2)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("k")
    axes.set_ylabel("pass@k - base (paired)")
    axes.set_title("Difference from the base, 95% bands")
    axes.legend()
    path = os.path.join(options.output_dir, "pass_at_k.png")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    written.append(path)

    table = step_table(data, options, [run["name"] for run in data["runs"]])
    keys = ["pass@1", f"pass@{options.k_max}"]
    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    for index, key in enumerate(keys):
        axes = figure.add_subplot(1, len(keys), index + 1)
        axes.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
        for name, rows in table.items():
            steps = [step for step, _ in rows]
            color = _color(name, list(stats["curve"]))
            axes.plot(steps, [row[key].mean for _, row in rows], marker="o", label=name, color=color)
            axes.fill_between(steps, [row[key].low for _, row in rows], [row[key].high for _, row in rows],
                              color=color, alpha=0.2)
        axes.set_xlabel("training step")
        axes.set_ylabel(f"{key} - base")
        axes.set_title(f"{key} over training, 95% bands")
        axes.legend(fontsize=8)
    path = os.path.join(options.output_dir, "pass_at_k_over_steps.png")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    written.append(path)
    return written


def _color(name: str, names: list[str]) -> str:
    """The same colour for a model in every plot: base black, the others in the default cycle's order."""
    if name == "base":
        return "black"
    cycle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
             "#17becf"]
    return cycle[[n for n in names if n != "base"].index(name) % len(cycle)]


def to_json(data: dict, stats: dict, claim_list: list[dict], options, elapsed: float) -> dict:
    def est(e):
        return {"mean": e.mean, "low": e.low, "high": e.high}

    return {
        "options": {k: v for k, v in vars(options).items()}, "seconds": elapsed,
        "value": {n: {k: est(e) for k, e in v.items()} for n, v in stats["value"].items()},
        "difference": {n: {k: est(e) for k, e in v.items()} for n, v in stats["difference"].items()},
        "curve": {n: [est(e) for e in c] for n, c in stats["curve"].items()},
        "claims": [{**{k: v for k, v in c.items() if k != "estimate"},
                    "estimate": None if c["estimate"] is None else est(c["estimate"])} for c in claim_list],
        "per_seed": {n: data[n] for n in ["base", *(run["name"] for run in data["runs"])]},
        "history": data["history"],
    }


def main(argv=None) -> int:
    options = parse_options(argv)
    import torch

    # One thread: the model is tiny, and on a shared 2-core machine more threads only add contention.
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = collect(options, log=lambda line: print(line, file=sys.stderr, flush=True))
    names = [run["name"] for run in data["runs"]]
    stats = figures(data, options, names)
    claim_list = claims(data, stats, options) if options.sweep in (None, "steps") else []
    elapsed = time.perf_counter() - started
    print_report(data, stats, claim_list, options, elapsed)
    if options.output_dir:
        written = plot(data, stats, options)
        path = os.path.join(options.output_dir, "paper_fidelity.json")
        with open(path, "w") as handle:
            json.dump(to_json(data, stats, claim_list, options, elapsed), handle)
        print("wrote " + ", ".join([*written, path]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
