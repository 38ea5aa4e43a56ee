"""scripts/train_grpo.py, scripts/demo.py and `hf-trainkit` as a user runs them: real subprocesses, real files."""

import json
import re

import pytest

from tests.testing_utils import ROOT, SUBPROCESS_ENV, TRAIN, log_history, run_script


def test_train_script_nsr_writes_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "nsr"
    result = run_script(TRAIN, "--mode", "nsr", "--output-dir", out, "--max-steps", "4", "--save-steps", "2",
                        "--save-total-limit", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NSR [Step 0]:" in result.stdout and "negative samples" in result.stdout
    history = log_history(out)
    steps = [h for h in history if "nsr/negative_samples" in h]
    assert len(steps) == 4
    assert all(h["nsr/kept_ratio"] == pytest.approx(h["nsr/negative_ratio"]) for h in steps)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]


def test_snake_case_aliases_and_no_checkpoints(tmp_path):
    out = tmp_path / "wr"
    result = run_script(TRAIN, "--mode", "w_reinforce", "--output_dir", out, "--max_steps", "2",
                        "--positive_weight", "0.3", "--no-save-checkpoints", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "W-REINFORCE [Step" not in result.stdout
    assert not list(out.glob("checkpoint-*"))
    assert any("w_reinforce/pos_neg_ratio" in h for h in log_history(out))
    # Checkpoints off: the end-of-training curve and stats are still written.
    assert (out / "img" / "loss_curve.png").exists() and (out / "img" / "reward_curve.png").exists()
    assert json.loads((out / "training_stats.json").read_text())["total_steps"] == 2


def test_saved_model_directory_and_dataset_file(tmp_path, toy_tokenizer):
    """A model given by path and a dataset given as a .jsonl file take the same path as a hub model would."""
    from hf_trainkit.tasks.digit import build_tiny_model

    model_dir = tmp_path / "tiny-model"
    build_tiny_model(toy_tokenizer, seed=1).save_pretrained(model_dir)
    toy_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"{r} =", "rule": r}) + "\n" for r in ["even", "odd"] * 8))
    out = tmp_path / "run"
    result = run_script(TRAIN, "--mode", "psr", "--model", model_dir, "--dataset", data, "--prompt-column",
                        "question", "--reward-func", "digit_rule", "--output-dir", out, "--max-steps", "2",
                        "--max-completion-length", "4", "--learning-rate", "1e-3", "--no-save-checkpoints")
    assert result.returncode == 0, result.stderr[-3000:]
    assert any("psr/positive_samples" in h for h in log_history(out))


def test_lora_flag(tmp_path):
    out = tmp_path / "lora"
    result = run_script(TRAIN, "--mode", "psr", "--lora", "--lora-r", "4", "--output-dir", out, "--max-steps", "2",
                        "--save-steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "checkpoint-2" / "adapter_config.json").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--mode", "nsrr"], "mode='nsrr' is not supported; use one of 'grpo', 'psr', 'nsr', 'w-reinforce'"),
        (["--mode", "psr", "--positive-weight", "-1"], "argument --positive-weight/--positive_weight: must be >= 0"),
        (["--mode", "psr", "--reward-func", "nope"], "--reward-func 'nope' is neither a built-in"),
        (["--mode", "psr", "--per-device-train-batch-size", "6"], "must be a multiple of --num-generations 8"),
        (["--mode", "psr", "--max-steps", "0"], "--max-steps 0: use a positive number of steps"),
        (["--mode", "psr", "--max-steps", "2", "--early-stopping-metric", "rewrd"],
         "'rewrd' was never logged (logged: "),
        (["--save-top-k", "2"], "--save-top-k and --save-on-improvement need a --checkpoint-metric"),
        (["--checkpoint-mirror", "s3://bucket/run"], "--checkpoint-mirror s3://bucket/run: Install s3fs to access S3"),
        (["--eval-every", "10", "--eval-n", "4", "--eval-k", "8"], "--eval-k 8 is larger than --eval-n 4"),
        (["--model", "gpt2", "--toy-warmup-steps", "5"], "--toy-warmup-steps applies to the built-in model only"),
        (["--checkpoint-metric", "reward", "--save-top-k", "2", "--save-total-limit", "3"],
         "give --save-top-k or --save-total-limit, not both"),
        (["--no-save-checkpoints", "--checkpoint-metric", "reward", "--save-top-k", "2"],
         "--no-save-checkpoints writes no checkpoint: drop --save-top-k"),
        (["--checkpoint-metric", "reward", "--save-on-improvement", "--save-min-delta=-3%"],
         "argument --save-min-delta/--save_min_delta: must be >= 0"),
        (["--control-port", "70000"], "--control-port 70000: use 0-65535"),
        (["--max-steps", "2", "--checkpoint-metric", "rewrd", "--save-top-k", "1"], "'rewrd' was never logged"),
        (["--resume-from-checkpoint", "no-such-name"], "--resume-from-checkpoint no-such-name: no such directory"),
        (["--dataset", "missing.jsonl"], "--dataset missing.jsonl: no such file or directory."),
        (["--dataset", "./data/missing"], "--dataset ./data/missing: no such file or directory."),
        (["--model", "/nonexistent"], "--model /nonexistent: no such file or directory."),
        (["--learnig-rate", "1e-3"], "unrecognized arguments: --learnig-rate 1e-3 (did you mean --learning-rate?)"),
        (["--set", "nosuch=1"], "--set nosuch=1: FilteredGRPOConfig has no field 'nosuch'"),
        (["--set", "learning_rat=1"], "(did you mean learning_rate?)"),
        (["--set", "learning_rate=1"], "--set learning_rate=1: learning_rate has a flag of its own, --learning-rate."),
        (["--set", "beta"], "--set beta: use FIELD=VALUE"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, argv, message, capsys, monkeypatch):
    argv = [*argv, "--output-dir", str(tmp_path / "bad")]
    if "rewrd" in message:  # found once training runs: a real subprocess
        result = run_script(TRAIN, *argv, cwd=tmp_path)
        code, stderr = result.returncode, result.stderr
    else:  # found before anything is built: the script's main() in this process (the same code, no start-up cost)
        from hf_trainkit.commands.train_grpo import main

        monkeypatch.chdir(tmp_path)
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        stderr = capsys.readouterr().err
        assert len(stderr.strip().splitlines()) == 1, stderr  # one line: no usage block, no traceback
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "bad" / "trainer_state.json").exists()


def test_trainer_settings_without_a_flag_of_their_own_reach_the_config(tmp_path):
    from hf_trainkit.commands.train_grpo import parse_options
    from hf_trainkit.training.options import build_config, resolve_defaults

    args = parse_options(["--mode", "nsr", "--output-dir", str(tmp_path / "o"), "--max-grad-norm", "0.5",
                                      "--lr-scheduler-type", "cosine", "--warmup-steps", "0.1",
                                      "--set", "gradient_checkpointing=True", "--set", "optim=adamw_torch"])
    config = build_config(resolve_defaults(args))
    assert (config.max_grad_norm, config.warmup_steps, config.gradient_checkpointing) == (0.5, 0.1, True)
    assert str(config.lr_scheduler_type.value) == "cosine" and str(config.optim.value) == "adamw_torch"


def test_dataset_without_prompt_column(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "even =", "answer": "2"}) + "\n")
    result = run_script(TRAIN, "--mode", "psr", "--dataset", data, "--output-dir", tmp_path / "o")
    assert result.returncode == 2
    assert f"--dataset {data}: no column 'prompt' (columns: text, answer); pass --prompt-column." in result.stderr


def test_unreachable_threshold_warns_with_advice(tmp_path):
    result = run_script(TRAIN, "--mode", "psr", "--reward-threshold", "2.0", "--output-dir", tmp_path / "o",
                        "--max-steps", "6", "--no-save-checkpoints", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PSR: 0/16 positive samples (reward > reward_threshold=2.0) for 5 generation batches in a row" in (
        result.stderr
    )
    assert "Lower --reward-threshold" in result.stderr
    assert result.stderr.count("generation batches in a row") == 1  # once per episode, not every step


def test_demo_and_cli(tmp_path):
    result = run_script(ROOT / "scripts" / "demo.py", "--output-dir", tmp_path / "demo", "--max-steps", "3",
                        "--vlm-steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    for mode in ("grpo", "psr", "nsr", "w-reinforce"):
        assert (tmp_path / "demo" / mode / "trainer_state.json").exists()
        assert f"\n{mode} " in result.stdout
    vlm_part = result.stdout.split("Vision-language model")[1]
    for mode in ("psr", "nsr"):  # the short VLM runs on the chart task
        assert (tmp_path / "demo" / f"chart-{mode}" / "trainer_state.json").exists()
        assert f"\n{mode} " in vlm_part and f"chart-{mode}" in vlm_part
    again = run_script(ROOT / "scripts" / "demo.py", "--output-dir", tmp_path / "demo", "--max-steps", "3",
                       "--vlm-steps", "0")
    assert again.returncode == 0, again.stderr[-3000:]  # the README's first command, run a second time
    assert "\ngrpo " in again.stdout
    compare = tmp_path / "demo" / "compare"
    assert (compare / "mode_metrics.png").exists() and (compare / "report.html").exists()
    ranked = json.loads((compare / "summary.json").read_text())["ranking"]
    assert sorted(row["label"] for row in ranked) == ["grpo", "nsr", "psr", "w-reinforce"]
    cli = run_script("-m", "hf_trainkit.cli")
    assert cli.returncode == 1 and "train-grpo" in cli.stderr
    help_text = run_script("-m", "hf_trainkit.cli", "train-grpo", "--help")
    assert help_text.returncode == 0 and "--reward-threshold" in help_text.stdout


def test_run_log_keeps_the_console_lines(tmp_path):
    out = tmp_path / "logged"
    result = run_script(TRAIN, "--mode", "nsr", "--output-dir", out, "--max-steps", "3", "--no-save-checkpoints",
                        "--no-loss-curve")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "logs" / "train.log").read_text()
    step_lines = [line for line in log.splitlines() if line.startswith("NSR [Step")]
    assert step_lines == [line for line in result.stdout.splitlines() if line.startswith("NSR [Step")]
    assert len(step_lines) == 3 and "\r" not in log
    again = run_script(TRAIN, "--mode", "nsr", "--output-dir", out, "--max-steps", "3", "--no-save-checkpoints",
                       "--no-loss-curve", "--no-resume")
    assert again.returncode == 0, again.stderr[-3000:]
    log = (out / "logs" / "train.log").read_text()  # appended, one header per run
    assert log.count("===== ") == 2 and sum(line.startswith("NSR [Step") for line in log.splitlines()) == 6


def test_console_is_the_mode_line_per_step_and_a_short_metrics_line_per_log(tmp_path):
    out = tmp_path / "console"
    result = run_script(TRAIN, "--mode", "w-reinforce", "--output-dir", out, "--max-steps", "20", "--logging-steps",
                        "5", "--no-save-checkpoints", "--no-loss-curve")
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    mode_lines = re.findall(r"^W-REINFORCE \[Step (\d+)\]: (\d+) pos \(λ=0\.1\) \+ (\d+) neg \(λ=1\.0\) \| "
                            r"Avg reward: -?\d+\.\d{3}$", console, flags=re.M)
    assert [int(step) for step, _, _ in mode_lines] == list(range(20))
    assert all(int(p) + int(n) == 16 for _, p, n in mode_lines)
    metric_lines = [line for line in console.splitlines() if re.match(r"\[Step \d+\] loss ", line)]
    assert [line.split("]")[0] for line in metric_lines] == ["[Step 5", "[Step 10", "[Step 15", "[Step 20"]
    assert all("| reward " in line and "grad_norm" in line for line in metric_lines)
    assert "'completions/mean_length'" not in console and "{'loss'" not in console
    assert len(console.encode()) < 12_000, len(console.encode())


@pytest.mark.parametrize("reward,needs", [("digit_rule", "rule"), ("exact_answer", "answer"),
                                          ("chart_answer", "answer")])
def test_a_builtin_reward_needing_a_column_the_data_set_lacks_is_refused_at_start(tmp_path, reward, needs):
    """Before: training started and died at the first step with TRL's `TypeError: digit_rule_reward() missing 1
    required positional argument: 'rule'` traceback."""
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"question": f"{r} =", "label": "2"}) + "\n" for r in ["even", "odd"] * 4))
    out = tmp_path / "o"
    result = run_script(TRAIN, "--mode", "psr", "--dataset", data, "--prompt-column", "question", "--reward-func",
                        reward, "--max-completion-length", "4", "--output-dir", out)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == (
        f"train_grpo.py: error: --reward-func {reward} needs the column '{needs}', which --dataset {data} lacks "
        "(columns: question, label); add it, or pick a --reward-func that reads the columns it has.")
    assert not (out / "trainer_state.json").exists() and not (out / "base_model").exists()


def test_a_users_reward_needing_a_missing_column_is_warned_about_from_its_signature(tmp_path):
    (tmp_path / "my_rewards.py").write_text(
        "def needs_solution(completions, solution, scale=1.0, **kwargs):\n"
        "    return [scale * float(c.strip() == s) for c, s in zip(completions, solution)]\n"
        "def reads_rule(completions, rule, trainer_state, **kwargs):\n"
        "    return [0.0 for _ in completions]\n")
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{r} =", "rule": r}) + "\n" for r in ["even", "odd"] * 4))
    env = {**SUBPROCESS_ENV, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    common = ["--mode", "psr", "--dataset", data, "--max-completion-length", "4", "--max-steps", "1",
              "--no-save-checkpoints", "--quiet", "--no-loss-curve"]
    fine = run_script(TRAIN, *common, "--reward-func", "my_rewards:reads_rule", "--output-dir", tmp_path / "a",
                      env=env)
    assert fine.returncode == 0, fine.stderr[-3000:]
    assert "needs the column" not in fine.stderr
    wrong = run_script(TRAIN, *common, "--reward-func", "my_rewards:needs_solution", "--output-dir", tmp_path / "b",
                       env=env)
    warning = (f"Warning: --reward-func my_rewards:needs_solution needs the column 'solution', which --dataset {data} "
               "lacks (columns: prompt, rule); add it, or pick a --reward-func that reads the columns it has. (read "
               "from its signature; TRL raises a TypeError at the first step if it is right)")
    assert warning in wrong.stderr.splitlines(), wrong.stderr[-3000:]
    # ... and it is right: the call fails as it said (a warning, since a decorator could supply the argument).
    assert wrong.returncode != 0 and "missing 1 required positional argument: 'solution'" in wrong.stderr


def test_help_states_the_defaults_runs_use_once_per_flag():
    import re

    from hf_trainkit.commands.train_grpo import parse_options, train_grpo_command_parser
    from hf_trainkit.training.options import resolve_defaults

    text = train_grpo_command_parser().format_help()
    # flag -> its help text: after the flag names (two spaces or more, or the next line), up to the next flag
    entries = {m.group(1): " ".join(m.group(3).split())
               for m in re.finditer(r"^  (--[\w-]+)([^\n]*?(?:  |\n))((?:.*\n?)*?)(?=^  \S|^\S|\Z)", text,
                                    flags=re.M)}
    doubled = [flag for flag, help_ in entries.items() if help_.count("(default") > 1]
    assert not doubled and "(default: None)" not in text, doubled
    toy = resolve_defaults(parse_options(["--output-dir", "o"]))  # what a toy run gets
    chart = resolve_defaults(parse_options(["--task", "chart", "--output-dir", "o"]))
    assert toy.learning_rate == 3e-4 and chart.learning_rate == 1e-3  # the README's figures
    assert "(default: 3e-4 for the built-in model, 1e-3 for the chart task's built-in VLM, else 1e-6" in (
        entries["--learning-rate"])
    assert f"(default: {toy.max_steps} for the toy task, {chart.max_steps} for the chart task, else -1" in (
        entries["--max-steps"])
    assert entries["--seed"].endswith("(default: 42)")


@pytest.mark.parametrize("argv,meant", [(["--num-generation", "4"], "--num-generations"),
                                        (["--learning-r", "1e-3"], "--learning-rate")])
def test_an_abbreviated_flag_is_refused_with_the_flag_meant(argv, meant, capsys):
    """argparse's prefix matching took `--num-generation 4` for `--num-generations 4` silently."""
    from hf_trainkit.commands.train_grpo import parse_options

    with pytest.raises(SystemExit) as exit_:
        parse_options(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (f"train_grpo.py: error: unrecognized arguments: {' '.join(argv)} "
                                               f"(did you mean {meant}?) (see --help)")


def test_the_console_has_no_warning_a_user_cannot_act_on(tmp_path):
    """DeepSpeed's CPU notice on a machine without an accelerator, the Trainer's missing `lm_head.weight` on every
    resume of a model with tied embeddings, and a `nan` average when no sample enters the loss."""
    out = tmp_path / "run"
    common = ["--mode", "psr", "--reward-threshold", "2.0", "--output-dir", out, "--save-steps", "2", "--eval-every",
              "0", "--no-loss-curve"]
    first = run_script(TRAIN, *common, "--max-steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_script(TRAIN, *common, "--max-steps", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {out / 'checkpoint-2'}" in resumed.stdout
    console = first.stdout + first.stderr + resumed.stdout + resumed.stderr + (out / "logs" / "train.log").read_text()
    assert "Setting accelerator to CPU" not in console
    assert "There were missing keys" not in console
    mode_lines = re.findall(r"PSR \[Step \d+\]: .*", console)
    assert len(mode_lines) >= 4 and all(": 0/16 positive samples | Avg reward: — (none kept) | Batch reward: " in line
                                        for line in mode_lines), mode_lines
    assert not any("nan" in line for line in mode_lines)


def test_the_missing_keys_filter_drops_only_tied_weights_that_were_loaded(toy_tokenizer):
    import logging

    from hf_trainkit.library_noise import expect_tied_weights, filter_library_noise
    from hf_trainkit.tasks.digit import build_tiny_model

    filter_library_noise()
    model = build_tiny_model(toy_tokenizer, seed=0)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # the toy model ties its embeddings
    expect_tied_weights(model)
    embeddings = next(name for name, p in model.named_parameters() if p is model.lm_head.weight)
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger, deepspeed = logging.getLogger("transformers.trainer"), logging.getLogger("DeepSpeed")
    logger.addHandler(handler)
    deepspeed.addHandler(handler)  # DeepSpeed's logger does not propagate
    try:
        for missing in (["lm_head.weight"], ["model.norm.weight"], ["lm_head.weight", embeddings]):
            logger.warning(f"There were missing keys in the checkpoint model loaded: {missing}.")
        deepspeed.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to "
                          "detect it.")  # this machine has no accelerator (the tests run on the CPU)
        deepspeed.warning("Setting accelerator to CPU.")
        logger.warning("There were unexpected keys in the checkpoint model loaded: ['extra.weight'].")
    finally:
        logger.removeHandler(handler)
        deepspeed.removeHandler(handler)
    assert said == ["There were missing keys in the checkpoint model loaded: ['model.norm.weight'].",
                    f"There were missing keys in the checkpoint model loaded: ['lm_head.weight', '{embeddings}'].",
                    "Setting accelerator to CPU.",
                    "There were unexpected keys in the checkpoint model loaded: ['extra.weight']."]


def test_a_console_that_is_not_a_terminal_gets_whole_lines(tmp_path):
    """A log file or a pipe: before, tqdm's redraws put a bar fragment in front of every metrics and mode line."""
    out = tmp_path / "piped"
    result = run_script(TRAIN, "--mode", "nsr", "--output-dir", out, "--max-steps", "20", "--logging-steps", "5",
                        "--no-save-checkpoints", "--no-loss-curve", "--eval-every", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    for text in (result.stdout, result.stderr, (out / "logs" / "train.log").read_text()):
        assert "\r" not in text and "it/s]" not in text and "s/it]" not in text
    lines = result.stdout.splitlines()
    assert [line.split("]")[0] for line in lines if re.match(r"\[Step \d+\] loss ", line)] == [
        "[Step 5", "[Step 10", "[Step 15", "[Step 20"]
    assert sum(line.startswith("NSR [Step ") for line in lines) == 20
    progress = [line for line in lines if line.startswith("[Progress]")]
    # every tenth of the run (2 steps), the last one left to the "done" line
    assert [int(re.match(r"\[Progress\] step (\d+)/20 ", line).group(1)) for line in progress] == list(range(2, 20, 2))
    assert all(re.fullmatch(r"\[Progress\] step \d+/20 \(\d+%\) \| [\d.e+-]+ s/step \| \d+m\d\ds left", line)
               for line in progress), progress


def test_a_terminal_still_gets_the_progress_bar(tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 0 columns: tqdm draws nothing
    process = subprocess.Popen([sys.executable, str(TRAIN), "--output-dir", str(tmp_path / "tty"), "--max-steps", "3",
                                "--no-save-checkpoints", "--no-loss-curve", "--eval-every", "0"],
                               stdout=secondary, stderr=secondary, env=SUBPROCESS_ENV)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert process.wait(timeout=300) == 0, seen[-3000:]
    text = seen.decode(errors="replace")
    assert "3/3 [" in text and "\r" in text and "[Progress]" not in text
    # The mode line printed during a step starts a line of its own (the bar cleared, then drawn again under it),
    # never appended to the bar's "... 4.37s/it]".
    before = re.findall(r"(.)GRPO \[Step \d+\]:", text, flags=re.S)
    assert len(before) == 3 and set(before) <= {"\r", "\n"}, before


def test_the_demo_says_what_the_benchmark_measures_and_when_a_pass_at_k_fell():
    import importlib.util

    from hf_trainkit.commands import demo

    spec = importlib.util.spec_from_file_location("paper_fidelity", ROOT / "benchmarks" / "paper_fidelity.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    defaults = benchmark.build_parser().parse_args([])
    assert (len(defaults.seeds), defaults.k_max) == (demo.BENCHMARK_SEEDS, demo.BENCHMARK_K_MAX)  # what the demo says
    rows = [{"mode": "psr", "base_pass@16": 7 / 12, "pass@16": 4 / 12, "base_entropy": 1.9, "entropy": 1.2},
            {"mode": "nsr", "base_pass@16": 7 / 12, "pass@16": 8 / 12, "base_entropy": 1.9, "entropy": 2.0}]
    assert demo.fallen_pass_at_k(rows, 40) == (
        "pass@16 fell for psr (0.58 -> 0.33; held-out entropy 1.90 -> 1.20). One of the 12 held-out charts is 0.083 "
        "of it, on one seed, after 40 steps of a random tiny VLM: this part shows training on images running, not "
        "what each mode does to pass@k (benchmarks/paper_fidelity.py measures that).")
    assert demo.fallen_pass_at_k(rows[1:], 40) == ""
