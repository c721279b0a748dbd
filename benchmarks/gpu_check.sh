#!/usr/bin/env bash
# GPU check of the vLLM backend and the verl engine (one H100/H200-class GPU, <= 8 minutes, no downloads):
# a random-init model with Qwen2.5-VL-3B's geometry, a few verl PPO steps with vLLM rollouts on Sokoban
# from images (the multimodal path vLLM's CPU build cannot run), then steps/s and tokens/s.
# Needs: pip install -e '.[train,verl]' and verl's vLLM (vllm 0.24 for verl 0.9.1) with a CUDA torch.
#   bash benchmarks/gpu_check.sh            # OUT=/tmp/atlasva-gpu-check STEPS=3 ESTIMATOR=turn_grpo
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-/tmp/atlasva-gpu-check}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh needs a CUDA GPU')"
timeout "${TIMEOUT:-480}" "$PY" benchmarks/verl_gpu_check.py --out "$OUT" --steps "${STEPS:-3}" \
  --estimator "${ESTIMATOR:-turn_grpo}"
cat "$OUT/gpu_check.json"
