#!/usr/bin/env python
"""Does the toy task reproduce the paper's pass@k result? (Zhu et al. 2025, "The Surprising Effectiveness of
Negative Reinforcement in LLM Reasoning".)

Trains GRPO, PSR, NSR and W-REINFORCE from the same warmed-up base model (`hf_trainkit.toy.build_toy_base_model`)
on the toy task's training prompts, for each seed, on the CPU; then samples `--n` completions per held-out prompt
from the base and from each trained model and prints pass@k, first-answer-token entropy and coverage (means over
seeds, with the spread across seeds), followed by each of the paper's claims and whether it holds here.

    python benchmarks/paper_fidelity.py [--seeds 0 1] [--max-steps 200] [--n 256]

The claims are checked as written below (`CLAIMS`), against the base measured in the same run; a claim that does
not hold is printed as such. Settings default to the toy task's defaults of `scripts/train_grpo.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time


MODES = ("grpo", "psr", "nsr", "w-reinforce")


def train(mode: str, seed: int, options, output_dir: str):
    from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer
    from hf_trainkit.training.options import TOY_MODEL_DEFAULTS, TOY_TASK_DEFAULTS
    from hf_trainkit.toy import build_toy_base_model, build_toy_dataset, build_toy_tokenizer, digit_rule_reward

    tokenizer = build_toy_tokenizer()
    args = FilteredGRPOConfig(
        output_dir=output_dir, mode=mode, seed=seed, max_steps=options.max_steps,
        learning_rate=options.learning_rate or TOY_MODEL_DEFAULTS["learning_rate"],
        per_device_train_batch_size=TOY_MODEL_DEFAULTS["per_device_train_batch_size"],
        num_generations=TOY_MODEL_DEFAULTS["num_generations"],
        max_completion_length=TOY_TASK_DEFAULTS["max_completion_length"],
        logging_steps=max(1, options.max_steps // 10), report_to=[], save_strategy="no", disable_tqdm=True,
        log_mode_summary=False)
    trainer = FilteredGRPOTrainer(model=build_toy_base_model(tokenizer, seed=seed, warmup_steps=options.warmup_steps), reward_funcs=digit_rule_reward,
                                  args=args, train_dataset=build_toy_dataset(4096, seed=seed),
                                  processing_class=tokenizer)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    return trainer.model, tokenizer, trainer.generation_config


def measure(model, tokenizer, generation_config, options, seed: int) -> dict[str, float]:
    from hf_trainkit.eval import evaluate, summarize
    from hf_trainkit.toy import build_toy_dataset, digit_rule_reward

    rows = [dict(row) for row in build_toy_dataset(split="heldout")]
    records = evaluate(model, tokenizer, rows, [digit_rule_reward], n=options.n, generation_config=generation_config,
                       seed=10_000 + seed)
    return summarize(records, options.n, options.k)


def base_generation_config(tokenizer, options):
    from hf_trainkit.eval.sampling import sampling_config
    from hf_trainkit.training.options import TOY_TASK_DEFAULTS

    return sampling_config(tokenizer, TOY_TASK_DEFAULTS["max_completion_length"])


def claims(table: dict[str, dict[str, float]], spread: dict[str, dict[str, float]], k_small: int, k_large: int,
           tolerance: float):
    """(claim, holds, figures, robust) for each of the paper's claims at pass@`k_large`. `robust` is False when the
    difference it rests on is smaller than the spread of the two models across seeds."""
    small, large = f"pass@{k_small}", f"pass@{k_large}"

    def compare(text, model, other, key, want, slack=0.0):
        """`want`: "higher" (than `other`), "at least" (as high, less `slack`) or "lower" (by more than `slack`)."""
        difference = table[model][key] - table[other][key]
        holds = {"higher": difference > 0, "at least": difference >= -slack, "lower": difference < -slack}[want]
        noise = max(spread[model][key], spread[other][key])
        figures = f"{key} {table[model][key]:.3f} vs {other} {table[other][key]:.3f}"
        return text, holds, figures, abs(difference) > noise

    return [
        compare(f"PSR raises {small} above the base", "psr", "base", small, "higher"),
        compare(f"PSR lowers {large} below the base", "psr", "base", large, "lower", tolerance),
        compare("PSR lowers entropy below the base", "psr", "base", "entropy", "lower"),
        compare("PSR lowers coverage below the base", "psr", "base", "coverage", "lower", tolerance),
        compare(f"NSR keeps {large} at or above the base", "nsr", "base", large, "at least", tolerance),
        compare("NSR keeps entropy at or above the base", "nsr", "base", "entropy", "at least"),
        compare(f"NSR raises {small} above the base", "nsr", "base", small, "higher"),
        compare(f"W-REINFORCE raises {small} above the base", "w-reinforce", "base", small, "higher"),
        compare(f"W-REINFORCE keeps {large} at or above the base", "w-reinforce", "base", large, "at least",
                tolerance),
        compare(f"NSR {large} at or above PSR's", "nsr", "psr", large, "at least"),
        compare(f"W-REINFORCE {large} at or above PSR's", "w-reinforce", "psr", large, "at least"),
    ]


def discriminating_k(base: dict[str, float], ks: list[int], tolerance: float) -> int:
    """The largest k at which the base is not already at pass@k = 1 (where no model can do better), else the
    smallest k: the large-k claims are checked there as well as at the largest k."""
    open_ks = [k for k in ks if base[f"pass@{k}"] < 1 - tolerance]
    return open_ks[-1] if open_ks else ks[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the toy task's")
    parser.add_argument("--warmup-steps", type=int, default=None, help="toy base warm-up (default: the toy's)")
    parser.add_argument("--n", type=int, default=256, help="samples per held-out prompt")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="slack for 'at or above' / 'below' on pass@k and coverage")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures here")
    options = parser.parse_args(argv)
    options.k = sorted(k for k in options.k if k <= options.n)
    if options.warmup_steps is None:
        from hf_trainkit.toy import WARMUP_STEPS

        options.warmup_steps = WARMUP_STEPS

    import torch

    from hf_trainkit.toy import build_toy_base_model, build_toy_tokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    per_seed: dict[str, list[dict]] = {name: [] for name in ("base", *MODES)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        for seed in options.seeds:
            tokenizer = build_toy_tokenizer()
            base = build_toy_base_model(tokenizer, seed=seed, warmup_steps=options.warmup_steps)
            per_seed["base"].append(measure(base, tokenizer, base_generation_config(tokenizer, options), options, seed))
            for mode in MODES:
                t0 = time.perf_counter()
                model, tokenizer, generation_config = train(mode, seed, options, f"{root}/{mode}-{seed}")
                per_seed[mode].append(measure(model, tokenizer, generation_config, options, seed))
                print(f"seed {seed} {mode:<12} trained and measured in {time.perf_counter() - t0:5.1f} s",
                      file=sys.stderr, flush=True)
    keys = [f"pass@{k}" for k in options.k] + ["entropy", "coverage", "mean_reward"]
    table = {name: {key: statistics.fmean(r[key] for r in runs) for key in keys} for name, runs in per_seed.items()}
    spread = {name: {key: (max(r[key] for r in runs) - min(r[key] for r in runs)) for key in keys}
              for name, runs in per_seed.items()}

    print(f"\nHeld-out prompts: 6 two-rule prompts, n={options.n} samples each; seeds {options.seeds}; "
          f"{options.max_steps} steps per run; means over seeds (spread max-min in brackets)\n")
    print(f"{'model':<12} " + " ".join(f"{key:>17}" for key in keys))
    for name in table:
        print(f"{name:<12} " + " ".join(f"{table[name][key]:>8.3f} [{spread[name][key]:>5.3f}]" for key in keys))
    k_small = options.k[0]
    results = []
    for k_large in dict.fromkeys([discriminating_k(table["base"], options.k, options.tolerance), options.k[-1]]):
        print(f"\nThe paper's claims on this task, large k = {k_large} (tolerance {options.tolerance}):")
        for text, holds, figures, robust in claims(table, spread, k_small, k_large, options.tolerance):
            if any(text == seen for seen, *_ in results):
                continue
            results.append((text, holds, figures, robust))
            caveat = "" if robust or len(options.seeds) < 2 else " (the difference is within the spread across seeds)"
            print(f"  [{'holds' if holds else 'DOES NOT HOLD'}] {text}: {figures}{caveat}")
    held = sum(h for _, h, *_ in results)
    robust = f" ({sum(h and r for _, h, _, r in results)} by more than the spread across seeds)" \
        if len(options.seeds) > 1 else " (one seed: no spread to compare with)"
    print(f"\n{held}/{len(results)} claims hold{robust}; {time.perf_counter() - started:.0f} s in all")
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"table": table, "spread": spread, "per_seed": per_seed, "options": vars(options),
                       "claims": [{"claim": t, "holds": h, "figures": f, "beyond_seed_spread": r}
                                  for t, h, f, r in results]}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
