"""Final weights, the run record and `hf-trainkit eval` as a user runs them (real subprocesses, real files)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.testing_utils import TRAIN, log_history, run_script


CLI = ["-m", "hf_trainkit.cli"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """4 PSR steps with checkpoints off and pass@k every 2 steps."""
    out = tmp_path_factory.mktemp("eval") / "psr"
    result = run_script(TRAIN, "--mode", "psr", "--output-dir", out, "--max-steps", 4, "--no-save-checkpoints",
                        "--eval-every", 2, "--eval-n", 8, "--eval-k", 1, 4, "--learning-rate", "3e-3", "--seed", 3)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_final_weights_are_saved_without_checkpoints(finished_run):
    from hf_trainkit.tasks.digit import build_toy_base_model, toy_base_recipe

    out, result = finished_run
    assert not list(out.glob("checkpoint-*"))
    final = load_file(out / "model.safetensors")
    base = load_file(out / "base_model" / "model.safetensors")
    # The recorded base is the toy base of this seed, built again here, and training moved away from it.
    record = json.loads((out / "hf_trainkit_run.json").read_text())
    assert record["base_model"]["recipe"] == toy_base_recipe(3)
    rebuilt = build_toy_base_model(seed=3).state_dict()
    assert all(torch.equal(base[name], rebuilt[name]) for name in base)
    assert any(not torch.equal(final[name], base[name]) for name in final)
    evals = [h for h in log_history(out) if "eval/pass@1" in h]
    assert [h["step"] for h in evals] == [0, 2, 4]


def test_eval_command_on_the_run_and_its_base(finished_run, tmp_path):
    out, _ = finished_run
    result = run_script(*CLI, "eval", out, "--base", "--n", 16, "--k", 1, 4, 16, "--output-dir", tmp_path / "e")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "e" / "eval_results.json").read_text())
    assert [r["label"] for r in report["results"]] == ["base", "psr"]
    for entry in report["results"]:
        records = entry["per_prompt"]
        assert len(records) == 6 and all(r["n"] == 16 for r in records)
        # pass@16 with n=16: a prompt counts when any of its 16 samples was right.
        assert entry["metrics"]["pass@16"] == pytest.approx(sum(r["correct"] > 0 for r in records) / 6)
    assert (tmp_path / "e" / "pass_at_k.png").stat().st_size > 0
    assert "pass@16" in result.stdout and "base" in result.stdout


def test_monitor_draws_pass_at_k_when_logged(finished_run, tmp_path):
    out, _ = finished_run
    result = run_script(*CLI, "monitor", out, "--output-dir", tmp_path / "m")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "m" / "pass_at_k.png").exists()


def test_monitor_pass_at_k_curves_take_the_base_and_the_last_evaluation(finished_run):
    from hf_trainkit.monitor.load import load_run
    from hf_trainkit.monitor.pass_at_k import run_curves

    out, _ = finished_run
    history = [h for h in log_history(out) if "eval/pass@1" in h]
    curves = run_curves([load_run(out)])
    assert [label for label, _, _ in curves] == ["base (step 0 of psr)", "psr (step 4)"]
    assert curves[0][1] == {1: history[0]["eval/pass@1"], 4: history[0]["eval/pass@4"]}
    assert curves[1][1] == {1: history[-1]["eval/pass@1"], 4: history[-1]["eval/pass@4"]}


@pytest.mark.parametrize("argv,message", [
    (["/no/such/run"], "/no/such/run: no such file or directory."),
    (["{run}/base_model", "--n", "4", "--k", "8"], "--k 8: each k must be between 1 and --n 4."),
    (["{run}/img"], "no model weights"),
])
def test_eval_mistakes_are_one_line(finished_run, argv, message):
    out, _ = finished_run
    result = run_script(*CLI, "eval", *[a.format(run=out) for a in argv])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert result.stderr.startswith("hf-trainkit eval: error:")


def test_model_flag_keeps_the_toy_task_defaults(tmp_path, toy_tokenizer):
    """--model on the toy task changes the model's defaults (learning rate) but not the task's (answer length)."""
    from hf_trainkit.tasks.digit import build_tiny_model

    model_dir = tmp_path / "tiny"
    build_tiny_model(toy_tokenizer, seed=1).save_pretrained(model_dir)
    toy_tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    result = run_script(TRAIN, "--model", model_dir, "--output-dir", out, "--max-steps", 1, "--no-save-checkpoints",
                        "--eval-every", 0, "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("Defaults:"))
    assert "max_completion_length=4 (for the task toy)" in line and "learning_rate=1e-06" in line
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.max_completion_length == 4 and args.learning_rate == 1e-6
    assert not any("eval/pass@1" in h for h in log_history(out))


def test_a_model_without_run_record_needs_its_prompts_named(finished_run, tmp_path):
    import shutil

    out, _ = finished_run
    shutil.copytree(out / "base_model", tmp_path / "model")  # a model folder from anywhere: no hf_trainkit_run.json
    result = run_script(*CLI, "eval", tmp_path / "model", "--n", 4, "--k", 1)
    assert result.returncode == 2 and "no run record (hf_trainkit_run.json); pass --dataset" in result.stderr
    result = run_script(*CLI, "eval", tmp_path / "model", "--dataset", "toy", "--max-new-tokens", 4, "--n", 4,
                        "--k", 1, "--output-dir", tmp_path / "e")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "e" / "eval_results.json").read_text())["prompts"] == "toy task, heldout prompts"
