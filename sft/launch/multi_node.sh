#!/usr/bin/env bash
# SFT on several machines with torchrun. Run the same command on every node, each with its own
# NODE_RANK (0 .. NNODES-1); MASTER_ADDR is node 0's address, reachable from all nodes.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash sft/launch/multi_node.sh sft/configs/qwen2.5-vl-3b.yaml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash sft/launch/multi_node.sh sft/configs/qwen2.5-vl-3b.yaml
#
# Environment: NNODES, NODE_RANK, MASTER_ADDR (required); MASTER_PORT (29500); NPROC (processes
# per node, default: visible GPUs, else 1); PYTHON (python).
# ENTRY: the module to run (default rexomni.sft.cli; grpo/launch sets rexomni.grpo.cli).
set -euo pipefail
CONFIG=${1:?usage: multi_node.sh CONFIG.yaml [--FIELD VALUE ...]}
shift
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m "${ENTRY:-rexomni.sft.cli}" --config "$CONFIG" "$@"
