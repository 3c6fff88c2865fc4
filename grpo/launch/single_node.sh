#!/usr/bin/env bash
# GRPO on one machine with torchrun: one process per GPU (NPROC, default: all visible GPUs, else 1). With the
# config's vllm_mode: colocate, each process also runs its vLLM rollouts on its own GPU.
#
#   bash grpo/launch/single_node.sh grpo/configs/qwen2.5-vl-3b.yaml --model runs/qwen2.5-vl-3b-sft
#   NPROC=1 bash grpo/launch/single_node.sh grpo/configs/tiny.yaml --model runs/tiny
set -euo pipefail
CONFIG=${1:?usage: single_node.sh CONFIG.yaml [--FIELD VALUE ...]}
shift
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
exec "$PYTHON" -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node "$NPROC" \
    -m rexomni.grpo.cli --config "$CONFIG" "$@"
