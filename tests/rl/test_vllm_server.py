"""FilteredGRPOTrainer with vLLM in server mode (`--use-vllm server`): a real `trl vllm-serve` from `.venv-vllm`
(vLLM's CPU build), every mode, the weights pushed after each step (server stand-in: tests/rl/vllm_stand_ins.py).

A server start takes 50-100 s here, on top of the colocate checks of test_vllm.py: it runs where
HF_TRAINKIT_VLLM_SERVER_TESTS=1 is set (CI leaves it out to stay within its time), and skips otherwise.

The model's output layer is untied here: vLLM's reload through the server cannot re-pack a tied output layer on a CPU
(the colocate stand-in re-packs it in process; `repack_tied_lm_head`), so a tied model would keep the base model's
output layer in the server.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.rl.test_vllm import (MODES, ROOT, VLLM_PYTHON, WORKER, expected_advantages, logp_differences,
                                worker_env)


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="vLLM's CPU build is not installed: build .venv-vllm with "
                       "scripts/make_vllm_venv.sh"),
    pytest.mark.skipif(os.environ.get("HF_TRAINKIT_VLLM_SERVER_TESTS") != "1",
                       reason="a vLLM server start (50-100 s): set HF_TRAINKIT_VLLM_SERVER_TESTS=1 to run it"),
]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url, process, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(1)
    return False


@pytest.fixture(scope="module")
def server_runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vllm-server")
    model_dir = workdir / "tiny-llama-128-untied"
    subprocess.run([str(VLLM_PYTHON), str(WORKER), "model", str(model_dir), "--untied"], cwd=ROOT, env=worker_env(),
                   check=True, capture_output=True, timeout=300)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / "server.log", "w")
    server = subprocess.Popen([str(VLLM_PYTHON.with_name("trl")), "vllm-serve", "--model", str(model_dir), "--host",
                               "127.0.0.1", "--port", str(port), "--max-model-len", "64", "--enforce-eager"],
                              cwd=ROOT, env=worker_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for(url, server, 400), (workdir / "server.log").read_text()[-5000:]
        out = workdir / "results.json"
        done = subprocess.run([str(VLLM_PYTHON), str(WORKER), "server", str(out), str(workdir), url], cwd=ROOT,
                              env=worker_env(), capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
        return json.loads(out.read_text())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_with_a_vllm_server(server_runs, mode):
    run = server_runs[mode]
    assert [entry["step"] for entry in run["logs"]] == [1, 2, 3]
    settings = {k: run[k] for k in ("num_generations", "threshold", "positive_weight", "negative_weight")}
    for step in run["steps"]:
        assert step["has_is_ratio"]
        advantages, keep = expected_advantages(step["rewards"], mode, **settings)
        assert step["advantages"] == pytest.approx(advantages.tolist(), abs=1e-5)
        got = [True] * len(keep) if step["keep"] is None else step["keep"]
        assert got == keep.tolist()
        if int(keep.sum()):
            assert step["forward_rows"] == [int(keep.sum())] and step["is_ratio_rows"] == [int(keep.sum())]
        if step["reference_loss"] is not None:
            assert step["loss"] == pytest.approx(step["reference_loss"], rel=1e-5, abs=1e-7)


def test_trained_weights_reach_the_server_after_each_step(server_runs):
    control = logp_differences(server_runs["control-no-sync"])
    for mode in MODES:
        assert server_runs[mode]["stand_in_syncs"] >= 3
        assert max(logp_differences(server_runs[mode])) < 0.02, (mode, logp_differences(server_runs[mode]))
    assert control[-1] > 0.1, control
    assert control[-1] > 10 * max(max(logp_differences(server_runs[mode])) for mode in MODES)
