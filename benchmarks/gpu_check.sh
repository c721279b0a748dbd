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
# 1. policy.backend=vllm inside atlasva's own trainer: images through vLLM, weights followed after each update
#    (a tiny policy vLLM can run: chunked M-RoPE, head_dim 64)
timeout 150 "$PY" -m atlasva.cli train sokoban-base policy.backend=vllm policy.vllm.gpu_memory_utilization=0.3 \
  policy.model.tiny.mrope_layout=chunked policy.model.tiny.num_attention_heads=2 policy.model.tiny.vision_num_heads=1 \
  trainer.steps=2 trainer.levels_per_step=8 sft.enable=false eval.episodes=16 "eval.stages=[rl]" \
  run.root="$OUT/runs" run.resume=false
# 2. verl PPO with vLLM rollouts, Qwen2.5-VL-3B geometry
timeout "${TIMEOUT:-420}" "$PY" benchmarks/verl_gpu_check.py --out "$OUT" --steps "${STEPS:-3}" \
  --estimator "${ESTIMATOR:-turn_grpo}"
cat "$OUT/gpu_check.json"
