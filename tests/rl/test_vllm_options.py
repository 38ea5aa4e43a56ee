"""`--use-vllm` and its flags: TRL's config fields they become, and the one-line errors (exit 2) before any model loads.

The errors that need vLLM installed (a server that does not answer, a combination TRL's config rejects) run the
script under `.venv-vllm` (scripts/make_vllm_venv.sh) and skip without it; none of them starts an engine.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hf_trainkit.argparsing import UsageError
from hf_trainkit.commands.train_grpo import main, train_grpo_options
from hf_trainkit.training.options import build_config, check_vllm_options, resolve_defaults, vllm_installed


ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("HF_TRAINKIT_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
needs_vllm_venv = pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="vLLM's CPU build is not installed: build "
                                     ".venv-vllm with scripts/make_vllm_venv.sh")


def error_line(capsys, argv):
    code = main(argv + ["--max-steps", "1"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


@pytest.mark.parametrize("argv,words", [
    (["--vllm-server-url", "http://host:8000"], "--vllm-server-url applies to --use-vllm server: pass --use-vllm server"),
    (["--vllm-max-model-length", "64"], "--vllm-max-model-length applies to --use-vllm colocate"),
    (["--use-vllm", "server", "--vllm-gpu-memory-utilization", "0.5"], "trl vllm-serve --gpu-memory-utilization"),
    (["--use-vllm", "--vllm-server-timeout", "5"], "--vllm-server-timeout applies to --use-vllm server: drop it"),
    (["--use-vllm", "--vllm-gpu-memory-utilization", "1.5"], "use a fraction in (0, 1]"),
    (["--use-vllm", "--vllm-gpu-memory-utilization", "0"], "use a fraction in (0, 1]"),
])
def test_vllm_flags_with_the_wrong_mode_are_one_line(capsys, tmp_path, argv, words):
    code, lines = error_line(capsys, argv + ["--output-dir", str(tmp_path / "run")])
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("train_grpo.py: error: ") and words in lines[0], lines
    assert not (tmp_path / "run").exists()  # nothing built, nothing written


def test_unknown_vllm_mode_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--use-vllm", "remote"])
    assert stopped.value.code == 2
    assert "invalid choice: 'remote'" in capsys.readouterr().err


@pytest.mark.skipif(vllm_installed(), reason="vLLM is installed in this venv")
def test_use_vllm_without_vllm_installed_is_one_line(capsys, tmp_path):
    code, lines = error_line(capsys, ["--use-vllm", "--output-dir", str(tmp_path / "run")])
    assert code == 2
    assert lines == ["train_grpo.py: error: --use-vllm colocate: vLLM is not installed in this environment (GPU "
                     "machines: pip install 'hf_trainkit[vllm]'; vLLM's CPU build, for the tests: "
                     "scripts/make_vllm_venv.sh)."]


def test_vllm_flags_become_trl_fields(monkeypatch, tmp_path):
    import hf_trainkit.training.options as options_module

    monkeypatch.setattr(options_module, "vllm_installed", lambda: True)
    monkeypatch.setattr(options_module, "vllm_server_answers", lambda url, timeout: (url, timeout) == (
        "http://gpu7:8123", 9.0))
    colocate = build_config(resolve_defaults(train_grpo_options(
        use_vllm="colocate", vllm_gpu_memory_utilization=0.6, vllm_max_model_length=512,
        output_dir=str(tmp_path / "a"))))
    assert (colocate.use_vllm, colocate.vllm_mode, colocate.vllm_gpu_memory_utilization,
            colocate.vllm_max_model_length) == (True, "colocate", 0.6, 512)
    server = build_config(resolve_defaults(train_grpo_options(
        use_vllm="server", vllm_server_url="http://gpu7:8123/", vllm_server_timeout=9.0,
        output_dir=str(tmp_path / "b"))))
    assert (server.use_vllm, server.vllm_mode, server.vllm_server_base_url, server.vllm_server_timeout) == (
        True, "server", "http://gpu7:8123/", 9.0)
    plain = build_config(resolve_defaults(train_grpo_options(output_dir=str(tmp_path / "c"))))
    assert plain.use_vllm is False


def test_set_use_vllm_points_at_the_flag(capsys, tmp_path):
    code, lines = error_line(capsys, ["--set", "use_vllm=true", "--output-dir", str(tmp_path / "run")])
    assert code == 2 and "use_vllm has a flag of its own, --use-vllm" in lines[0]


def test_server_probe_waits_for_health(tmp_path):
    """What the server check asks: `/health` answering 200, as vLLM's server (`trl vllm-serve`) serves it."""
    import http.server
    import threading

    from hf_trainkit.training.options import vllm_server_answers

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert vllm_server_answers(f"http://127.0.0.1:{server.server_port}", 5.0)
    finally:
        server.shutdown()
    assert not vllm_server_answers(f"http://127.0.0.1:{free_port()}", 1.0)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_in_vllm_venv(argv, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([str(VLLM_PYTHON), str(ROOT / "scripts" / "train_grpo.py"), *argv, "--max-steps", "1",
                           "--output-dir", str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@needs_vllm_venv
def test_server_that_does_not_answer_is_one_line_naming_url_and_command(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = run_in_vllm_venv(["--use-vllm", "server", "--vllm-server-url", url, "--vllm-server-timeout", "2"],
                            tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"train_grpo.py: error: --use-vllm server: no vLLM server answered at {url} within 2 s; start one "
                    "first (`trl vllm-serve --model MODEL --port PORT`, on GPUs the training does not use), or pass "
                    "its address with --vllm-server-url / more time with --vllm-server-timeout.")


@needs_vllm_venv
def test_a_combination_trl_rejects_is_one_line(tmp_path):
    done = run_in_vllm_venv(["--use-vllm", "--set", "vllm_importance_sampling_mode=token_truncate", "--set",
                             "vllm_importance_sampling_clip_max=null"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("train_grpo.py: error: At least one of `vllm_importance_sampling_clip_min` or "
                           "`vllm_importance_sampling_clip_max` must be set"), last
