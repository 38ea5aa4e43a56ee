"""The training script on a real tiny vision-language model (Qwen2.5-VL's architecture, built locally) and the
built-in chart task: what works for text works for the VLM. Real runs of scripts/train_grpo.py."""

import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from hf_trainkit.checkpointing import find_resume_checkpoint, list_checkpoints
from tests.testing_utils import ROOT, SUBPROCESS_ENV, TRAIN, log_history, run_script


CHART = ["--task", "chart", "--no-loss-curve", "--no-diagnostics"]


def train(output_dir, *extra, mode="psr", timeout=300):
    return run_script(TRAIN, "--mode", mode, "--output-dir", output_dir, "--seed", 5, *CHART, *extra, timeout=timeout)


def curves(output_dir):
    return [(h["step"], h["reward"], h["grad_norm"], h["entropy"]) for h in log_history(output_dir) if "reward" in h]


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    """A finished 6-step PSR run on the chart task: checkpoints every 2 steps, pass@k every 3."""
    out = tmp_path_factory.mktemp("vlm") / "psr"
    result = train(out, "--max-steps", 6, "--save-steps", 2, "--eval-every", 3, "--eval-n", 4, "--eval-k", 1, 4)
    assert result.returncode == 0, result.stderr[-3000:]
    result.output_dir = out
    return result


@pytest.mark.parametrize("mode", ["psr", "nsr", pytest.param("grpo", marks=pytest.mark.slow),
                                  pytest.param("w-reinforce", marks=pytest.mark.slow)])
def test_each_mode_trains_the_tiny_vlm(tmp_path, mode):
    out = tmp_path / mode
    result = train(out, "--max-steps", 3, "--no-save-checkpoints", "--eval-every", 0, mode=mode)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = load_file(out / "model.safetensors")
    base = load_file(out / "base_model" / "model.safetensors")
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    if mode == "psr" and all(h["psr/positive_samples"] == 0 for h in log_history(out) if "reward" in h):
        assert not changed  # nothing positive to train on: PSR must leave the weights alone
    else:
        assert any(name.startswith("model.layers.") for name in changed)  # the language model (saved names)
    prefix = mode.replace("-", "_")
    logs = [h for h in log_history(out) if "reward" in h]
    assert len(logs) == 3
    for entry in logs:  # rewards are 0/1 against the threshold 0.5: shares follow from the mean reward
        assert entry[f"{prefix}/positive_samples"] + entry[f"{prefix}/negative_samples"] == 16
        assert entry[f"{prefix}/positive_ratio"] == pytest.approx(entry["reward"])
        # grpo keeps the rows of groups whose rewards differ (a flat group teaches nothing: TRL's zero-std share)
        kept = {"psr": entry[f"{prefix}/positive_samples"], "nsr": entry[f"{prefix}/negative_samples"],
                "grpo": 16 * (1 - entry["frac_reward_zero_std"])}.get(mode, 16)
        assert entry[f"{prefix}/kept_ratio"] == pytest.approx(kept / 16)
    assert f"{mode.upper()} [Step 2]:" in result.stdout


def test_a_finished_vlm_run_has_valid_checkpoints_pass_at_k_and_plots(vlm_run, tmp_path):
    out = vlm_run.output_dir
    assert [c.step for c in list_checkpoints(out) if c.valid] == [2, 4, 6]
    evals = [h for h in log_history(out) if "eval/pass@1" in h]
    assert [h["step"] for h in evals] == [0, 3, 6] and all(h["eval/num_prompts"] == 12 for h in evals)
    monitor = subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "monitor", str(out), "--output-dir",
                              str(tmp_path / "monitor")], capture_output=True, text=True, env=SUBPROCESS_ENV)
    assert monitor.returncode == 0, monitor.stderr[-2000:]
    for name in ("rewards.png", "mode_metrics.png", "report.html", "pass_at_k.png"):
        assert (tmp_path / "monitor" / name).stat().st_size > 0, name


def test_eval_command_samples_the_vlm_on_the_chart_images(vlm_run, tmp_path):
    out = vlm_run.output_dir
    result = subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "eval", str(out), "--base", "--n", "4", "--k",
                             "1", "4", "--output-dir", str(tmp_path)], capture_output=True, text=True,
                            env=SUBPROCESS_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert [r["label"] for r in results["results"]] == ["base", out.name]
    assert results["prompts"] == "chart task, heldout prompts"
    for model in results["results"]:
        assert len(model["per_prompt"]) == 12
        # the prompts were encoded with their images: 4 image tokens (a 56 px chart, 14 px patches merged 2x2)
        assert all(record["prompt"].count("<|image_pad|>") == 1 for record in model["per_prompt"])


@pytest.mark.slow
def test_kill_9_of_a_vlm_run_then_rerun_is_bit_exact(tmp_path):
    from tests.checkpointing.test_checkpointing import kill_at_random_moments

    steps = 12
    reference = tmp_path / "reference"
    assert train(reference, "--max-steps", steps, "--save-steps", 1, "--eval-every", 0).returncode == 0
    out = tmp_path / "killed"
    command = [sys.executable, str(TRAIN), "--mode", "psr", "--output-dir", str(out), "--seed", "5", *CHART,
               "--max-steps", str(steps), "--save-steps", "1", "--eval-every", "0"]
    kills = kill_at_random_moments(command, out, random.Random(11), SUBPROCESS_ENV, max_delay=0.4, rounds=2)
    final = subprocess.run(command, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert kills >= 1
    assert curves(out) == curves(reference)
    for name, value in load_file(reference / "model.safetensors").items():
        assert torch.equal(value, load_file(out / "model.safetensors")[name]), name


def test_checkpoint_policy_and_live_control_on_a_vlm(tmp_path):
    """Best-1 by reward plus the newest, and a named save requested through `hf-trainkit control` mid-run."""
    out = tmp_path / "live"
    command = [sys.executable, str(TRAIN), "--mode", "nsr", "--output-dir", str(out), "--seed", "5", *CHART,
               "--max-steps", "400", "--save-steps", "3", "--checkpoint-metric", "reward", "--save-top-k", "1",
               "--checkpoint-smoothing", "0", "--eval-every", "0", "--quiet"]
    with open(tmp_path / "training.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=SUBPROCESS_ENV)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and process.poll() is None:
                try:
                    if json.loads((out / "control" / "status.json").read_text())["step"] >= 4:
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.1)
            saved = subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "control", "save", str(out), "--name",
                                    "chart-look"], capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120)
            assert saved.returncode == 0, saved.stderr
            stop = subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "control", "stop", str(out)],
                                  capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120)
            assert stop.returncode == 0, stop.stderr
            assert process.wait(timeout=120) == 0
        finally:
            if process.poll() is None:
                process.kill()
    checkpoints = list_checkpoints(out)
    named = [c for c in checkpoints if c.marker.get("name") == "chart-look"]
    assert len(named) == 1 and named[0].valid and named[0].marker["pinned"]
    rewards = {h["step"]: h["reward"] for h in log_history(out) if "reward" in h}
    last = max(rewards)
    # Every save competes for best-1, the named one too (it may land on an interval step): the best, the newest and
    # the pinned named one stay.
    saved_steps = sorted(set(range(3, last + 1, 3)) | {last, named[0].step})
    best = max(saved_steps, key=lambda s: (rewards[s], -s))
    assert {c.step for c in checkpoints} == {best, max(saved_steps), named[0].step}
    assert find_resume_checkpoint(out) is not None


@pytest.mark.parametrize("case", ["missing", "text-model", *(pytest.param(case, marks=pytest.mark.slow)
                                                              for case in ("unreadable", "no-processor", "bad-column"))])
def test_bad_vlm_input_is_one_line_and_exit_2(tmp_path, case):
    from PIL import Image

    (tmp_path / "charts").mkdir()
    Image.new("RGB", (56, 56), "white").save(tmp_path / "charts" / "ok.png")
    (tmp_path / "charts" / "broken.png").write_bytes(b"not a png at all")
    rows = [{"prompt": "which bar is highest ?", "image": "charts/ok.png", "answer": "A"}] * 3
    if case == "missing":
        rows = rows + [{"prompt": "x", "image": "charts/gone.png", "answer": "A"}]
    if case == "unreadable":
        rows = rows + [{"prompt": "x", "image": "charts/broken.png", "answer": "A"}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = tmp_path / "model"
    if case == "text-model":
        from hf_trainkit.tasks.digit import build_tiny_model, build_toy_tokenizer

        tokenizer = build_toy_tokenizer()
        build_tiny_model(tokenizer).save_pretrained(model)
        tokenizer.save_pretrained(model)
    else:
        from hf_trainkit.tasks.vision import build_tiny_vlm, build_tiny_vlm_processor, save_processor

        processor = build_tiny_vlm_processor()
        build_tiny_vlm(processor).save_pretrained(model)
        if case != "no-processor":
            save_processor(processor, model)
    extra = ["--image-column", "picture"] if case == "bad-column" else []
    result = run_script(TRAIN, "--model", model, "--dataset", data, "--reward-func", "exact_answer", "--output-dir",
                        tmp_path / "out", "--max-steps", 1, *extra)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    message = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(message) == 1 and "Traceback" not in result.stderr, result.stderr
    expected = {"missing": ["row 3", "charts/gone.png", "does not exist"],
                "unreadable": ["row 3", "charts/broken.png", "cannot be read"],
                "text-model": ["text-only", str(model)],
                "no-processor": ["cannot load its processor", str(model)],
                "bad-column": ["--image-column picture", "no such column"]}[case]
    for text in expected:
        assert text in message[0], message[0]


def test_images_as_paths_relative_to_the_file_and_bytes_reach_the_model(tmp_path):
    from datasets import Dataset

    from hf_trainkit.tasks.chart import build_chart_dataset
    from hf_trainkit.training.images import resolve_image_column

    charts = build_chart_dataset(num_prompts=4, seed=1)
    (tmp_path / "img").mkdir()
    rows = []
    for i, row in enumerate(charts):
        row["image"].save(tmp_path / "img" / f"{i}.png")
        rows.append({"prompt": row["prompt"], "answer": row["answer"], "image": f"img/{i}.png"})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    from hf_trainkit.training.inputs import load_prompt_dataset

    os.chdir(ROOT)  # the paths are relative to the data file, not to where the command runs
    from_paths = resolve_image_column("--dataset", str(data), load_prompt_dataset("--dataset", str(data), None,
                                                                                   "train", "prompt"), None)
    import io

    def png_bytes(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    from_bytes = resolve_image_column("--dataset", "memory", Dataset.from_dict(
        {"prompt": [r["prompt"] for r in rows], "pictures": [[png_bytes(r["image"])] for r in charts]}), "pictures")
    assert "images" in from_bytes.column_names  # a list per prompt: TRL's multi-image column
    for i, row in enumerate(charts):
        expected = list(row["image"].convert("RGB").getdata())
        assert list(from_paths[i]["image"].convert("RGB").getdata()) == expected
        assert list(from_bytes[i]["images"][0].convert("RGB").getdata()) == expected


def test_a_vlm_trains_from_a_user_data_file_with_plain_prompts(tmp_path):
    """A user's own model folder and a .jsonl of plain-text prompts, image paths relative to the file, answers."""
    from hf_trainkit.tasks.chart import build_chart_dataset
    from hf_trainkit.tasks.vision import build_tiny_vlm, build_tiny_vlm_processor, save_processor

    model = tmp_path / "my-vlm"
    processor = build_tiny_vlm_processor()
    build_tiny_vlm(processor).save_pretrained(model)
    save_processor(processor, model)
    (tmp_path / "data" / "img").mkdir(parents=True)
    rows = []
    for i, row in enumerate(build_chart_dataset(num_prompts=8, seed=2)):
        row["image"].save(tmp_path / "data" / "img" / f"{i}.png")
        rows.append({"question": row["prompt"][0]["content"][1]["text"], "image": f"img/{i}.png",
                     "answer": row["answer"]})
    data = tmp_path / "data" / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    result = run_script(TRAIN, "--model", model, "--dataset", data, "--prompt-column", "question", "--reward-func",
                        "chart_answer", "--mode", "nsr", "--output-dir", out, "--max-steps", 2,
                        "--per-device-train-batch-size", 8, "--num-generations", 4, "--max-completion-length", 2,
                        "--no-save-checkpoints", "--no-loss-curve")
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [h for h in log_history(out) if "reward" in h]
    assert len(logs) == 2 and all(h["nsr/positive_samples"] + h["nsr/negative_samples"] == 8 for h in logs)
    from transformers import AutoModelForImageTextToText

    assert AutoModelForImageTextToText.from_pretrained(out).config.model_type == "qwen2_5_vl"


def test_lora_adapts_the_language_model_not_the_vision_tower():
    from peft import get_peft_model

    from hf_trainkit.commands.train_grpo import train_grpo_options
    from hf_trainkit.tasks.vision import build_tiny_vlm
    from hf_trainkit.training.inputs import build_peft_config

    def adapted(**flags):
        options = train_grpo_options(lora=True, **flags)
        model = get_peft_model(build_tiny_vlm(), build_peft_config(options, vision=True))
        return {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A" in name}

    language_only = adapted()
    assert language_only and not any(".visual." in name for name in language_only)
    assert any(".language_model." in name and name.endswith("q_proj") for name in language_only)
    with_vision = adapted(lora_vision=True)
    assert any(".visual." in name for name in with_vision) and language_only < with_vision


@pytest.mark.slow
def test_async_saves_of_a_vlm_run_equal_synchronous_ones(vlm_run, tmp_path):
    """`--async-save` on the VLM (`vlm_run` is the same command saved synchronously): the same curves and pass@k,
    every checkpoint complete (checksums verified) with the processor's files, and its weights, optimizer and
    scheduler byte for byte those of the synchronous run."""
    from hf_trainkit.checkpointing.validate import inspect_checkpoint
    from tests.testing_utils import assert_same_rng_state

    reference, out = vlm_run.output_dir, tmp_path / "async"
    result = train(out, "--max-steps", 6, "--save-steps", 2, "--eval-every", 3, "--eval-n", 4, "--eval-k", 1, 4,
                   "--async-save")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Waiting for the background write of checkpoint-6 to finish (the end of training)" in result.stdout
    assert curves(out) == curves(reference)
    evals = [[(h["step"], h["eval/pass@1"], h["eval/pass@4"]) for h in log_history(run) if "eval/pass@1" in h]
             for run in (out, reference)]
    assert evals[0] == evals[1] and len(evals[0]) == 3
    infos = list_checkpoints(out)
    assert [c.name for c in infos] == [c.name for c in list_checkpoints(reference)] == [f"checkpoint-{s}" for s in
                                                                                       (2, 4, 6)]
    for info in infos:
        assert inspect_checkpoint(info.path, verify=True).valid and "checksums" in info.marker
        assert {"processor_config.json", "chat_template.jinja", "config.json"} <= set(info.marker["files"])
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "processor_config.json"):
            assert (info.path / name).read_bytes() == (reference / info.name / name).read_bytes(), (info.name, name)
        assert_same_rng_state(info.path / "rng_state.pth", reference / info.name / "rng_state.pth")
    assert find_resume_checkpoint(out, warn=False) == str(out / "checkpoint-6")
