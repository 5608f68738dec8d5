#!/usr/bin/env bash
# bench/gpu_check.sh — verify alignkit's CUDA paths on a lent GPU machine in one short run (< 5 min on an H100/H200).
#
# What it runs and what it measures:
#   1. nvidia-smi: the GPUs, driver and CUDA version (recorded, not judged).
#   2. pytest -m gpu tests/distributed/test_dist_gpu.py: DDP on 2 GPUs (NCCL), FSDP2 on 2 GPUs (adapter gathered
#      and saved once), QLoRA on 1 GPU; each leaves exactly one run with the right world size. With 1 GPU the
#      2-GPU tests are skipped and say so.
#   3. bench/qlora_mfu.py: QLoRA SFT through `alignkit sft` on a 0.6B model (random weights unless
#      QLORA_MODEL=/path/to/local/model): tokens/s, peak GPU memory, MFU against the GPU's dense bf16 peak.
# Results go to $OUT (the device runner's folder) or bench/results/gpu_check/: gpu.txt, pytest.txt, qlora_mfu.json.
# Usage: bash bench/gpu_check.sh            (from the repository root, with .venv set up by `make setup`)
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DEST="${OUT:-bench/results/gpu_check}"
mkdir -p "$DEST"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no nvidia-smi on this machine; nothing to check" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DEST/gpu.txt"

status=0
# 150 s covers three 2-step runs of the 135M model, process start-up included; a hung rendezvous is a failure
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests/distributed/test_dist_gpu.py \
  2>&1 | tee "$DEST/pytest.txt" || status=1

mfu_args=(--out "$DEST/qlora_mfu.json")
if [ -n "${QLORA_MODEL:-}" ]; then
  mfu_args+=(--model "$QLORA_MODEL")
fi
timeout 120 "$PY" bench/qlora_mfu.py "${mfu_args[@]}" 2>&1 | tail -n 20 || status=1

echo "gpu_check: results in $DEST (exit $status)"
exit "$status"
