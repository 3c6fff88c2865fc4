#!/usr/bin/env bash
# SFT on one machine with torchrun: one process per GPU (NPROC, default: all visible GPUs, else 1).
#
#   bash sft/launch/single_node.sh sft/configs/qwen2.5-vl-3b.yaml [--FIELD VALUE ...]
#   NPROC=4 bash sft/launch/single_node.sh sft/configs/rexomni-3b-lora.yaml --output_dir runs/lora
# ENTRY: the module to run (default rexomni.sft.cli; grpo/launch sets rexomni.grpo.cli).
set -euo pipefail
CONFIG=${1:?usage: single_node.sh CONFIG.yaml [--FIELD VALUE ...]}
shift
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
exec "$PYTHON" -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node "$NPROC" \
    -m "${ENTRY:-rexomni.sft.cli}" --config "$CONFIG" "$@"
