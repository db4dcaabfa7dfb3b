#!/usr/bin/env bash
# Train a real transformers model on a GPU. MODEL is a hub id or a local folder; on this project's
# machines nothing can be downloaded, so pass a local folder there. With MODEL=tiny it runs anywhere
# (CI runs it that way on the CPU).
set -euo pipefail
MODEL=${MODEL:-deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B}
STEPS=${STEPS:-200}
thinkgym train --model "$MODEL" --env Delethink-v0 --env-kwargs '{"task": "math_dataset", "task_kwargs": {"path": "../shared/data/math/math500.jsonl"}}' \
  --loss-type delethink --num-generations 8 --prompts-per-step 16 --learning-rate 1e-6 --epsilon-high 0.26 \
  --temperature 0.6 --micro-batch-size 4 --minibatches 2 --steps "$STEPS" --eval-every 20 --output-dir runs/gpu "$@"
