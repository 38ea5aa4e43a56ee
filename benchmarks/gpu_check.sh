#!/usr/bin/env bash
# The GPU check of vLLM generation, ready to run on a GPU machine with no internet (not run on this project's CPU
# machines): a model of Qwen2.5-0.5B's shape built locally from a config, DeepSpeed ZeRO-3 + vLLM colocate, bf16,
# every mode against TRL's GRPOTrainer. Prints each trainer's seconds per step, its ratio to TRL's, the peak GPU memory
# and vLLM's log-prob gap (TRL's sampling/sampling_logp_difference/mean: small when the weight sync works).
#
#   pip install -e ".[vllm,deepspeed]"           # once, where the packages are reachable
#   benchmarks/gpu_check.sh [NUM_GPUS] [STEPS]    # default: every visible GPU, 12 steps (2 of warm-up)
#
# Environment: HIDDEN (896), LAYERS (24), COMPLETION_LENGTH (256), OUT_DIR (runs/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS="${1:-$(python -c 'import torch; print(torch.cuda.device_count())')}"
STEPS="${2:-12}"
OUT_DIR="${OUT_DIR:-runs/gpu_check}"
HIDDEN="${HIDDEN:-896}" LAYERS="${LAYERS:-24}" COMPLETION_LENGTH="${COMPLETION_LENGTH:-256}"
if [ "$GPUS" -lt 1 ]; then echo "gpu_check.sh: no GPU visible (torch.cuda.device_count() is 0)" >&2; exit 2; fi
python -c 'import vllm, deepspeed' 2>/dev/null || { echo "gpu_check.sh: needs vllm and deepspeed: pip install -e \".[vllm,deepspeed]\"" >&2; exit 2; }
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT_DIR"
MODEL_DIR="$OUT_DIR/model-h$HIDDEN-l$LAYERS"
python -c "import sys; sys.path.insert(0, 'benchmarks'); from gpu_check import build_model_dir; build_model_dir('$MODEL_DIR', $HIDDEN, $LAYERS)"
RESULTS="$OUT_DIR/results.jsonl"
: > "$RESULTS"
for trainer in trl grpo psr nsr w-reinforce; do
    echo "== $trainer ($GPUS GPUs, $STEPS steps)"
    accelerate launch --config_file deepspeed_configs/zero3.yaml --num_processes "$GPUS" --mixed_precision bf16 \
        benchmarks/gpu_check.py --trainer "$trainer" --model-dir "$MODEL_DIR" --out "$RESULTS" --steps "$STEPS" \
        --completion-length "$COMPLETION_LENGTH" > "$OUT_DIR/$trainer.log" 2>&1 \
        || { echo "gpu_check.sh: $trainer failed, see $OUT_DIR/$trainer.log" >&2; tail -20 "$OUT_DIR/$trainer.log" >&2; exit 1; }
done
python - "$RESULTS" <<'PY'
import json, sys
rows = {r["trainer"]: r for r in map(json.loads, open(sys.argv[1]))}
base = rows["trl"]["step_s"]
print(f"{'trainer':<14}{'s/step':>9}{'vs TRL':>9}{'peak GiB':>10}{'logp gap':>10}")
for name, row in rows.items():
    print(f"{name:<14}{row['step_s']:>9.3f}{row['step_s'] / base:>9.2f}{row['peak_gib']:>10.2f}"
          f"{row['logp_difference_max']:>10.4f}")
print("expected: grpo ~1.00 x TRL; psr and nsr below (half of the rows skip the update); logp gap < 0.05")
PY
