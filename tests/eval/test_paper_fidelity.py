"""benchmarks/paper_fidelity.py: a 2-seed smoke run prints the table, the steps table and every claim with a verdict
and writes its plots and JSON; bad flags are one-line errors with exit 2."""

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("paper_fidelity", ROOT / "benchmarks" / "paper_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLAIMS = [
    "PSR raises pass@1 above the base",
    "PSR lowers pass@256 below the base",
    "NSR keeps pass@k at or above the base at every k = 1 ... 256",
    "NSR keeps the entropy at or above the base",
    "W-REINFORCE keeps pass@k at or above the base at every k = 1 ... 256",
    "W-REINFORCE is at or above the best other model at every k = 1 ... 256",
    "PSR falls below the base from some k on (the crossover k)",
]


def test_smoke_run_prints_every_claim_and_writes_plots(tmp_path, capsys):
    benchmark = load_benchmark()
    out = tmp_path / "fidelity"
    code = benchmark.main(["--seeds", "0", "1", "--max-steps", "2", "--eval-every", "1", "--distill-steps", "5",
                           "--resamples", "200", "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("base", "GRPO", "PSR", "NSR", "W-REINFORCE"):
        assert re.search(rf"^{re.escape(name)}\s+\d\.\d{{3}} \[", printed, re.M), name
    for claim in CLAIMS:
        line = next(line for line in printed.splitlines() if claim in line)
        assert re.match(r"\s+\[(HOLDS|DOES NOT HOLD|UNDECIDED)\] ", line), line
    assert "Over training" in printed and re.search(r"^PSR\s+2 ", printed, re.M)
    assert {"pass_at_k.png", "pass_at_k_over_steps.png", "paper_fidelity.json"} <= set(os.listdir(out))
    saved = json.loads((out / "paper_fidelity.json").read_text())
    assert [c["claim"] for c in saved["claims"]] == CLAIMS
    assert len(saved["curve"]["PSR"]) == 256
    # The table's base pass@256 is the mean of the per-seed, per-prompt values it was computed from.
    base = saved["per_seed"]["base"]
    values = [p[255] for seed in base for p in seed["pass"]]
    assert saved["value"]["base"]["pass@256"]["mean"] == pytest.approx(sum(values) / len(values))
    low, high = saved["value"]["base"]["pass@256"]["low"], saved["value"]["base"]["pass@256"]["high"]
    assert min(values) <= low <= high <= max(values)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0", "0"], "--seeds: each seed once"),
        (["--seeds", "-1"], "must be >= 0"),
        (["--max-steps", "0"], "must be >= 1"),
        (["--learning-rate", "zero"], "invalid _positive_float value"),
        (["--sweep", "beta"], "invalid choice: 'beta'"),
        (["--positive-weight", "-0.1"], "--positive-weight must be >= 0"),
    ],
)
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    benchmark = load_benchmark()
    with pytest.raises(SystemExit) as raised:
        benchmark.main(argv)
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("paper_fidelity.py: error:") and message in error


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    benchmark = load_benchmark()
    target = tmp_path / "taken"
    target.write_text("")
    with pytest.raises(SystemExit) as raised:
        benchmark.main(["--output-dir", str(target)])
    assert raised.value.code == 2
    assert "is a file; pass a folder" in capsys.readouterr().err
